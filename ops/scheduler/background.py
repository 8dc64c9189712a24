"""The C++ planner off the first call's path: built in a background thread on first need.

A fresh machine's first ``plan_split_kv(backend="auto")`` would otherwise wait for the ninja
build of the extension (4.6-4.8 s on an H100 host, 8 s on the 2-core CPU box) before any
attention kernel compiles, against a < 2 s goal for a cold decode specialization. While the
build runs, "auto" plans with the Python planner, which gives identical plans (the two agree
exactly; tests/ops/scheduler); the C++ planner serves every plan after it has loaded. A planner
already in the cache is loaded at once (a load, not a build).

The thread calls ``jit.build`` (per-entry file lock) and only then ``jit.load`` (a cache hit),
so it never holds the JIT's in-process load lock during the compile: a kernel the first call
needs loads while the planner builds.
"""
from __future__ import annotations

import logging
import threading

from flashkit import jit
from flashkit.jit.cache import MANIFEST

__all__ = ["module_if_ready", "wait"]

log = logging.getLogger("flashkit.ops.scheduler")

_lock = threading.Lock()
_builds: dict[str, "_Build"] = {}


class _Build:
    def __init__(self, spec: jit.KernelSpec):
        self.spec, self.module, self.error = spec, None, None
        self.thread = threading.Thread(target=self._run, name=f"flashkit-build-{spec.name}",
                                       daemon=True)

    def _run(self):
        try:
            jit.build(self.spec)
            self.module = jit.load(self.spec)
        except Exception as exc:  # noqa: BLE001 - reported to the caller, which falls back
            self.error = exc
            log.warning("split-KV planner: background build failed (%s); using the Python "
                        "planner", exc)


def module_if_ready(spec: jit.KernelSpec):
    """The loaded extension of ``spec``; None while its background build runs (started by the
    first call). Raises the build's exception once it has failed."""
    with _lock:
        build = _builds.get(spec.uri)
        if build is None:
            if (jit.entry_dir(spec) / MANIFEST).exists():
                return jit.load(spec)  # cached: milliseconds
            build = _builds[spec.uri] = _Build(spec)
            build.thread.start()
    if build.thread.is_alive():
        return None
    if build.error is not None:
        raise build.error
    return build.module


def wait(spec: jit.KernelSpec, timeout: float | None = None) -> bool:
    """Wait for ``spec``'s background build, if one was started; whether none is running now."""
    with _lock:
        build = _builds.get(spec.uri)
    if build is not None:
        build.thread.join(timeout)
        return not build.thread.is_alive()
    return True
