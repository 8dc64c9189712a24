"""The collector that runs inside every Python process `flashkit debloat trace` starts.

`trace` copies this file next to a `sitecustomize.py` first on PYTHONPATH, so it is standard
library only (the traced interpreter may not have flashkit installed). At exit each process writes
``$FLASHKIT_TRACE_DIR/<pid>.json``:

- libraries: the shared objects mapped in /proc/self/maps at exit (Python does not dlclose
  extension modules, so exit sees everything a run loaded);
- kernels: with ``FLASHKIT_TRACE_KERNELS=1`` and a CUDA device, torch.profiler's CUDA kernel
  events (CUPTI activity records, so kernels of any library and of driver-API launches count,
  named as the profiler demangles them) from interpreter start to exit;
- flashkit_uris: the JIT entries this process loaded (`flashkit.jit.loaded_uris`), when flashkit
  was imported.
"""
import atexit
import json
import os
import sys

_state = {"profiler": None, "kernel_source": "off"}


def _libraries():
    libs = set()
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) == 6:
                path = parts[5].strip()
                if path.startswith("/") and ".so" in os.path.basename(path):
                    libs.add(path)
    return sorted(libs)


def _start_profiler():
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        _state["kernel_source"] = "unavailable (no torch)"
        return
    if not torch.cuda.is_available():
        _state["kernel_source"] = "unavailable (no CUDA device)"
        return
    prof = profile(activities=[ProfilerActivity.CUDA])
    prof.__enter__()
    _state["profiler"], _state["kernel_source"] = prof, "torch.profiler"


def _kernels():
    prof = _state["profiler"]
    if prof is None:
        return []
    import torch

    prof.__exit__(None, None, None)
    cuda = torch.autograd.DeviceType.CUDA
    return sorted({e.name for e in prof.events() if e.device_type == cuda
                   and not e.name.startswith(("Memcpy", "Memset"))})


def _flashkit_uris():
    jit = sys.modules.get("flashkit.jit")
    return list(jit.loaded_uris()) if jit is not None else []


def _write():
    out_dir = os.environ.get("FLASHKIT_TRACE_DIR")
    if not out_dir:
        return
    record = {"flashkit_trace": 1, "command": list(sys.argv), "processes": 1,
              "kernel_source": _state["kernel_source"], "kernels": _kernels(),
              "flashkit_uris": _flashkit_uris(), "libraries": _libraries()}
    tmp = os.path.join(out_dir, f".{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.replace(tmp, os.path.join(out_dir, f"{os.getpid()}.json"))


def installed():
    return _state.get("installed", False)


def install():
    """Start collecting (called from the generated sitecustomize)."""
    _state["installed"] = True
    if os.environ.get("FLASHKIT_TRACE_KERNELS") == "1":
        _start_profiler()
    atexit.register(_write)  # after torch's import: atexit runs it before torch's own handlers
