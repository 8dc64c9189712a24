"""AOT bundles: a tarball of cache entries, to ship exactly the specializations a workload used.

    flashkit jit clear && <run the workload> && flashkit jit bundle kernels.tar.gz
    flashkit jit unbundle kernels.tar.gz        # on the deployment machine, before serving

Entries carry their manifests, so an imported entry is verified like any other before it loads.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tarfile
import time
import uuid
import zlib
from pathlib import Path

from flashkit._version import __version__

from .cache import MANIFEST, _loaded, list_entries, read_manifest
from .env import cache_root
from .errors import JitCacheError

BUNDLE_INFO = "flashkit-bundle.json"


def loaded_uris() -> list[str]:
    """Uris this process has loaded (what a bundle of this workload should hold)."""
    return sorted(_loaded)


def export_bundle(path: str | Path, uris=None, since: float | None = None) -> list[str]:
    """Write the cache entries named by ``uris`` (default: all), used at or after ``since``
    (a POSIX time), to the gzip tarball ``path``. Returns the uris written."""
    entries = [e for e in list_entries() if not e.get("corrupt")
               and (uris is None or e["uri"] in set(uris))
               and (since is None or e["last_used"] >= since)]
    root = cache_root()
    path = Path(path)
    # Written beside the target and renamed: a failed export never leaves a truncated bundle.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            info = json.dumps({"flashkit": __version__, "created": time.time(),
                               "entries": [e["uri"] for e in entries]}).encode()
            member = tarfile.TarInfo(BUNDLE_INFO)
            member.size = len(info)
            tar.addfile(member, io.BytesIO(info))
            for e in entries:
                tar.add(e["path"], arcname=str(Path(e["path"]).relative_to(root)))
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise OSError(exc.errno, f"cannot write the bundle ({exc.strerror or exc})",
                      str(path)) from None
    return [e["uri"] for e in entries]


# What a file that is not a whole gzip tarball raises while it is read.
_UNREADABLE = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, UnicodeDecodeError)


def import_bundle(path: str | Path) -> list[str]:
    """Unpack a bundle into this version's cache; entries already valid here are kept.
    Returns the uris added. Every entry is checked against its manifest's checksum first."""
    root = cache_root()
    try:
        return _import(path, root)
    except _UNREADABLE as exc:
        raise JitCacheError(f"{path} is not a readable flashkit bundle (a .tar.gz from "
                            f"`flashkit jit bundle`): {exc or type(exc).__name__}") from None


def _bundle_info(tar: tarfile.TarFile, path) -> dict:
    try:
        info = json.loads(tar.extractfile(BUNDLE_INFO).read())
    except (KeyError, AttributeError, ValueError):
        raise JitCacheError(f"{path} is a tarball but not a flashkit bundle (no valid "
                            f"{BUNDLE_INFO})") from None
    if not isinstance(info, dict):
        raise JitCacheError(f"{path}: {BUNDLE_INFO} is not a JSON object")
    return info


def _import(path, root: Path) -> list[str]:
    with tarfile.open(path, "r:gz") as tar:
        info = _bundle_info(tar, path)
        if info.get("flashkit") != __version__:
            raise JitCacheError(f"{path} was made by flashkit {info.get('flashkit')}; this is "
                                f"{__version__}, whose uris differ: rebuild the bundle")
        for member in tar.getmembers():  # never write outside the staging folder
            if member.name.startswith(("/", "..")) or ".." in Path(member.name).parts \
                    or not (member.isfile() or member.isdir()):
                raise JitCacheError(f"{path}: refusing member {member.name!r}")
        staging = root / f".bundle-{uuid.uuid4().hex[:8]}"
        try:
            staging.mkdir(parents=True)
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(staging, **safe)
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(exc, OSError) and not isinstance(exc, _UNREADABLE):
                raise JitCacheError(f"cannot unpack {path} into {root}: {exc}") from None
            raise
    added = []
    try:
        for manifest_path in sorted(staging.glob(f"*/*/{MANIFEST}")):
            entry = manifest_path.parent
            target = root / entry.relative_to(staging)
            if read_manifest(entry) is None:
                raise JitCacheError(f"{path}: entry {entry.name} fails its checksum")
            if read_manifest(target) is not None:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                shutil.rmtree(target)
            entry.rename(target)
            added.append(entry.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return added


def bundle_summary(path: str | Path, uris: list[str], archs: list[str]) -> str:
    """One line: the bundle's size and entries beside every shipped specialization for ``archs``
    (how many there are, and the bytes of those already built in this cache)."""
    from .registry import shipped_specs

    shipped = {s.uri for s in shipped_specs(archs)}
    cached = [e for e in list_entries() if e["uri"] in shipped]
    return (f"bundle {Path(path).stat().st_size / 1024:.1f} KiB, {len(uris)} entries; shipped "
            f"for {','.join(archs)}: {len(shipped)} specializations, {len(cached)} built here "
            f"({sum(e['disk_bytes'] for e in cached) / 1024:.1f} KiB in the cache)")
