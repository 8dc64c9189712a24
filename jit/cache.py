"""The on-disk cache: build once, under a file lock, and load verified artifacts.

Layout: ``<cache_root>/<target>/<uri>/`` holding the rendered source, the artifact, build.log and
manifest.json (with the artifact's sha256). A build renders into a private temp folder next to
the entry and renames it into place, so a reader sees a whole entry or none. A manifest that does
not parse, or an artifact whose checksum differs, is a miss: the entry is rebuilt. Temp folders
that a killed build left behind are removed by the next build in their folder; a build or load
whose folder a ``clear`` removed starts over.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
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
# One lock per uri: loading a built entry never waits behind another entry's compile (a global
# lock made a cache hit wait 4.3 s behind an unrelated NVRTC compile in the same process).
_entry_locks: dict[str, threading.Lock] = {}
_entry_locks_guard = threading.Lock()
# A `jit clear` (or another process's clear) may remove the folder a build is writing into: the
# build starts over, up to this many times, before it reports the cache as unusable.
_ATTEMPTS = 3
_STALE = re.compile(r"^\.(?P<uri>.+)\.(?:tmp-(?P<pid>\d+)-[0-9a-f]+|trash-[0-9a-f]+)$")


class _CacheVanished(Exception):
    """The folder a build or load was using disappeared (the cache was cleared meanwhile)."""


def _entry_lock(uri: str) -> threading.Lock:
    with _entry_locks_guard:
        return _entry_locks.setdefault(uri, threading.Lock())


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
    for _ in range(_ATTEMPTS):
        try:
            return _build_under_lock(spec, entry, force)
        except _CacheVanished:
            log.warning("the cache folder of %s was removed during its build; building again",
                        spec.uri)
    raise JitCacheError(f"the cache folder {entry.parent} was removed {_ATTEMPTS} times while "
                        f"{spec.uri} was building (is `flashkit jit clear` running in a loop?)")


def _build_under_lock(spec: KernelSpec, entry: Path, force: bool) -> BuildResult:
    parent = entry.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".probe-{uuid.uuid4().hex}"
        probe.touch()
        probe.unlink()
    except FileNotFoundError:  # a clear removed a folder between mkdir and the probe
        raise _CacheVanished() from None
    except OSError as exc:
        raise JitCacheError(
            f"cannot write the flashkit cache at {parent} ({exc.strerror or exc}); set "
            f"FLASHKIT_CACHE_DIR to a writable folder, or prebuild there and set "
            f"FLASHKIT_DISABLE_JIT=1 to only read") from None
    timeout = lock_timeout()
    try:
        with FileLock(str(parent / f"{spec.uri}.lock"), timeout=timeout):
            manifest = None if force else read_manifest(entry)
            if manifest is not None:  # another process built it while we waited
                return BuildResult(spec.uri, entry, False, manifest["build_seconds"])
            _sweep_stale(parent, spec.uri)
            return _build_locked(spec, entry)
    except Timeout:
        raise JitCacheError(f"timed out after {timeout:.0f} s waiting for the build lock of "
                            f"{spec.uri} in {parent} (FLASHKIT_LOCK_TIMEOUT)") from None
    except FileNotFoundError:  # the lock file's folder went away before the lock was taken
        if parent.is_dir():
            raise
        raise _CacheVanished() from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def _sweep_stale(parent: Path, own_uri: str) -> None:
    """Remove the temp and trash folders that builds killed mid-way (SIGKILL, power loss) left
    in ``parent``. Called holding ``own_uri``'s build lock; another uri's leftovers are removed
    only if its lock is free right now, so a live build elsewhere (a pid this process cannot
    see, in another container) never loses its folder. A temp folder whose pid lives is kept."""
    stale: dict[str, list[Path]] = {}
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        m = _STALE.match(name)
        if m and not (m["pid"] and _pid_alive(int(m["pid"]))):
            stale.setdefault(m["uri"], []).append(parent / name)
    removed = 0
    for uri, folders in stale.items():
        try:
            # Our own lock is held already (a second FileLock on it would wait for ourselves).
            lock = contextlib.nullcontext() if uri == own_uri else \
                FileLock(str(parent / f"{uri}.lock"), timeout=0)
            with lock:
                for folder in folders:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed += 1
        except (Timeout, OSError):
            pass  # busy or unreadable: the next build sweeps it
    if removed:
        log.info("removed %d stale build folders in %s", removed, parent)


def _build_locked(spec: KernelSpec, entry: Path) -> BuildResult:
    backend = get_backend(spec.backend)
    tmp = entry.parent / f".{spec.uri}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
    except FileNotFoundError:
        raise _CacheVanished() from None
    try:
        source_path = tmp / f"source{backend.source_suffix}"
        source_path.write_text(spec.source)
        t0 = time.perf_counter()
        try:
            artifact = backend.compile(spec, source_path, tmp)
        except JitCompileError as exc:  # keep the source and log where the message says they are
            if not tmp.is_dir():
                raise _CacheVanished() from None
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
        try:
            os.rename(tmp, entry)
        except OSError:
            # A clear deleted the lock file under us and another process built the same entry
            # meanwhile: its entry is as good as ours.
            if read_manifest(entry) is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except (_CacheVanished, JitCompileError):
        raise
    except OSError as exc:
        vanished = isinstance(exc, FileNotFoundError) and not tmp.is_dir()
        shutil.rmtree(tmp, ignore_errors=True)
        if vanished:
            raise _CacheVanished() from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("compiled %s in %.2f s", spec.uri, seconds)
    return BuildResult(spec.uri, entry, True, seconds)


def load(spec: KernelSpec) -> Any:
    """The loaded artifact of ``spec`` (a module, or a cubin module), building it on a miss.

    In-process hits are a dict lookup; a cache hit on disk costs a checksum and an import.
    Each uri has its own lock: threads loading different specs never wait for each other.
    """
    uri = spec.uri
    module = _loaded.get(uri)
    if module is not None:
        return module
    with _entry_lock(uri):
        module = _loaded.get(uri)
        if module is None:
            module = _load_entry(spec)
            _loaded[uri] = module
    return module


def _load_entry(spec: KernelSpec) -> Any:
    backend = get_backend(spec.backend)
    for _ in range(_ATTEMPTS):
        result = build(spec)
        try:
            manifest = json.loads((result.path / MANIFEST).read_text())
            module = backend.load(spec, result.path / manifest["artifact"])
        except FileNotFoundError:
            if result.path.is_dir():
                raise
            log.warning("the cache entry %s was removed before it loaded; building again",
                        result.path)
            continue
        _touch(result.path)
        return module
    raise JitCacheError(f"the cache entry {entry_dir(spec)} was removed {_ATTEMPTS} times "
                        f"before it could load (is `flashkit jit clear` running in a loop?)")


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
