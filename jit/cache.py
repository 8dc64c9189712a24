"""The on-disk cache: build once, under a file lock, and load verified artifacts.

Layout: ``<cache_root>/<target>/<uri>/`` holding the rendered source, the artifact, build.log and
manifest.json (with the artifact's sha256). A build renders into a private temp folder next to
the entry and renames it into place, so a reader sees a whole entry or none. A manifest that does
not parse, or an artifact whose checksum differs, is a miss: the entry is rebuilt.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from .backends import get_backend
from .env import cache_root, jit_disabled, lock_timeout
from .errors import JitCacheError, JitCompileError, JitDisabledError
from .spec import KernelSpec

log = logging.getLogger("flashkit.jit")

MANIFEST = "manifest.json"


@dataclasses.dataclass(frozen=True)
class BuildResult:
    uri: str
    path: Path
    compiled: bool  # False: it was already in the cache
    seconds: float  # build time (from the manifest on a hit)


# Keyed by uri, not by the spec's fields: an edited template gives equal fields but a new uri.
# Launchers keep their specs (lru_cache) so the uri, a render plus a hash, is computed once.
_loaded: dict[str, Any] = {}
_load_lock = threading.Lock()


def entry_dir(spec: KernelSpec) -> Path:
    return cache_root() / get_backend(spec.backend).target_dir(spec) / spec.uri


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest(entry: Path) -> dict | None:
    """The entry's manifest if the entry is whole and its artifact matches its checksum."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
        artifact = entry / manifest["artifact"]
        if _sha256(artifact) != manifest["sha256"]:
            log.warning("checksum mismatch in %s; rebuilding", entry)
            return None
        return manifest
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("unreadable cache entry %s; rebuilding", entry)
        return None


def _touch(entry: Path):
    try:
        os.utime(entry)  # the entry folder's mtime is its "last used" time
    except OSError:
        pass  # a read-only cache still serves hits


def build(spec: KernelSpec, force: bool = False) -> BuildResult:
    """Make sure ``spec`` is in the cache; compile it only if no valid entry exists."""
    entry = entry_dir(spec)
    manifest = None if force else read_manifest(entry)
    if manifest is not None:
        return BuildResult(spec.uri, entry, False, manifest["build_seconds"])
    if jit_disabled():
        raise JitDisabledError(
            f"FLASHKIT_DISABLE_JIT=1 and {spec.uri} is not in the cache ({entry}); "
            f"prebuild it with `flashkit jit build {spec.name}` or unset FLASHKIT_DISABLE_JIT")
    parent = entry.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".probe-{uuid.uuid4().hex}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise JitCacheError(
            f"cannot write the flashkit cache at {parent} ({exc.strerror or exc}); set "
            f"FLASHKIT_CACHE_DIR to a writable folder, or prebuild there and set "
            f"FLASHKIT_DISABLE_JIT=1 to only read") from None
    try:
        with FileLock(str(parent / f"{spec.uri}.lock"), timeout=lock_timeout()):
            manifest = None if force else read_manifest(entry)
            if manifest is not None:  # another process built it while we waited
                return BuildResult(spec.uri, entry, False, manifest["build_seconds"])
            return _build_locked(spec, entry)
    except Timeout:
        raise JitCacheError(f"timed out after {lock_timeout():.0f} s waiting for the build lock of "
                            f"{spec.uri} in {parent} (FLASHKIT_LOCK_TIMEOUT)") from None


def _build_locked(spec: KernelSpec, entry: Path) -> BuildResult:
    backend = get_backend(spec.backend)
    tmp = entry.parent / f".{spec.uri}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        source_path = tmp / f"source{backend.source_suffix}"
        source_path.write_text(spec.source)
        t0 = time.perf_counter()
        try:
            artifact = backend.compile(spec, source_path, tmp)
        except JitCompileError as exc:  # keep the source and log where the message says they are
            failed = entry.parent / f"{spec.uri}.failed"
            shutil.rmtree(failed, ignore_errors=True)
            os.rename(tmp, failed)
            raise JitCompileError(spec.uri, failed / source_path.name, failed / "build.log",
                                  exc.log_text) from None
        seconds = time.perf_counter() - t0
        manifest = {
            "uri": spec.uri, "name": spec.name, "backend": spec.backend, "target": spec.target,
            "template": spec.template, "params": {k: repr(v) for k, v in spec.params},
            "flags": list(spec.flags), "toolchain": backend.toolchain(),
            "artifact": artifact.name, "sha256": _sha256(artifact),
            "size": artifact.stat().st_size, "build_seconds": round(seconds, 4),
            "created": time.time(),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if entry.exists():  # a corrupt entry: move it aside, then swap in the new one
            trash = entry.parent / f".{spec.uri}.trash-{uuid.uuid4().hex[:8]}"
            os.rename(entry, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.rename(tmp, entry)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("compiled %s in %.2f s", spec.uri, seconds)
    return BuildResult(spec.uri, entry, True, seconds)


def load(spec: KernelSpec) -> Any:
    """The loaded artifact of ``spec`` (a module, or a cubin module), building it on a miss.

    In-process hits are a dict lookup; a cache hit on disk costs a checksum and an import.
    """
    uri = spec.uri
    module = _loaded.get(uri)
    if module is not None:
        return module
    with _load_lock:
        module = _loaded.get(uri)
        if module is None:
            result = build(spec)
            manifest = json.loads((result.path / MANIFEST).read_text())
            module = get_backend(spec.backend).load(spec, result.path / manifest["artifact"])
            _touch(result.path)
            _loaded[uri] = module
    return module


def list_entries(root: Path | None = None) -> list[dict]:
    """Manifests of every entry under the cache root (with ``path`` and ``last_used`` added)."""
    root = root or cache_root()
    out = []
    for manifest_path in sorted(root.glob(f"*/*/{MANIFEST}")):
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            manifest = {"uri": manifest_path.parent.name, "backend": "?", "corrupt": True}
        manifest["path"] = str(manifest_path.parent)
        manifest["last_used"] = manifest_path.parent.stat().st_mtime
        manifest["disk_bytes"] = sum(p.stat().st_size for p in manifest_path.parent.iterdir())
        out.append(manifest)
    return out


def cache_size(root: Path | None = None) -> int:
    root = root or cache_root()
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0


def clear(root: Path | None = None) -> int:
    """Remove every entry of this version's cache; returns how many there were."""
    root = root or cache_root()
    n = len(list(root.glob(f"*/*/{MANIFEST}")))
    shutil.rmtree(root, ignore_errors=True)
    _loaded.clear()
    return n
