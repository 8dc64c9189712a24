"""NVRTC backend: a rendered ``.cu`` of ``extern "C"`` kernels compiled to a cubin for one arch.

Compiling needs only the NVRTC library (pip ``nvidia-cuda-nvrtc``), so every shipped
specialization is compiled and checked on machines without a GPU. Loading and launching go
through the CUDA driver API (cuda-python) on torch's current stream.
"""
from __future__ import annotations

import ctypes
import threading
from pathlib import Path

from ..env import CSRC_DIR
from ..errors import BackendUnavailableError, JitCompileError
from .base import Backend

# -lineinfo costs nothing at run time and lets compute-sanitizer / ncu point at source lines.
BASE_OPTIONS = ("-std=c++17", "-lineinfo", "--device-as-default-execution-space")


def _check(result: tuple, what: str):
    """Unpack a cuda-python ``(err, *values)`` result, raising on a non-zero ``err``."""
    err, *values = result
    if int(err) != 0:
        raise RuntimeError(f"{what} failed: {err!r}")
    return values[0] if len(values) == 1 else tuple(values) or None


class NvrtcBackend(Backend):
    name = "nvrtc"
    source_suffix = ".cu"

    def available(self):
        try:
            from cuda.bindings import nvrtc

            _check(nvrtc.nvrtcVersion(), "nvrtcVersion")
        except Exception as exc:  # missing package or library: report, never crash doctor
            return False, f"NVRTC unavailable ({type(exc).__name__}: {exc})"
        return True, ""

    def toolchain(self) -> str:
        try:
            from cuda.bindings import nvrtc

            major, minor = _check(nvrtc.nvrtcVersion(), "nvrtcVersion")
            return f"nvrtc-{major}.{minor}"
        except Exception:
            return "nvrtc-missing"

    def compile(self, spec, source_path: Path, build_dir: Path) -> Path:
        ok, why = self.available()
        if not ok:
            raise BackendUnavailableError(why)
        from cuda.bindings import nvrtc

        options = [f"--gpu-architecture={spec.target}", f"--include-path={CSRC_DIR}",
                   *BASE_OPTIONS, *spec.flags]
        # Named by uri, not by the temp build folder: stable -lineinfo paths and identical cubins
        # from identical sources.
        prog = _check(nvrtc.nvrtcCreateProgram(source_path.read_bytes(),
                                               f"{spec.uri}/{source_path.name}".encode(), 0, [], []),
                      "nvrtcCreateProgram")
        try:
            opts = [o.encode() for o in options]
            (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
            size = _check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
            log = b" " * size
            nvrtc.nvrtcGetProgramLog(prog, log)
            log_text = "nvrtc " + " ".join(options) + "\n" + log.rstrip(b"\x00 ").decode(errors="replace")
            log_path = build_dir / "build.log"
            log_path.write_text(log_text)
            if int(err) != 0:
                raise JitCompileError(spec.uri, source_path, log_path, log_text)
            size = _check(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
            cubin = b" " * size
            _check(nvrtc.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
        finally:
            nvrtc.nvrtcDestroyProgram(prog)
        artifact = build_dir / "kernel.cubin"
        artifact.write_bytes(cubin)
        return artifact

    def load(self, spec, artifact: Path):
        return CubinModule(spec.uri, spec.target, artifact.read_bytes())


def _as_param(arg):
    """A ctypes value for one kernel argument: tensors pass their data pointer."""
    if isinstance(arg, ctypes._SimpleCData):
        return arg
    if hasattr(arg, "data_ptr"):
        return ctypes.c_void_p(arg.data_ptr())
    if isinstance(arg, bool):
        return ctypes.c_bool(arg)
    if isinstance(arg, int):
        return ctypes.c_int(arg)
    if isinstance(arg, float):
        return ctypes.c_float(arg)
    raise TypeError(f"cannot pass {type(arg).__name__} to a kernel; use a tensor or a ctypes value")


class CubinModule:
    """A cubin, loaded lazily into each device's primary context (the one torch uses)."""

    def __init__(self, uri: str, target: str, cubin: bytes):
        self.uri = uri
        self.target = target
        self.cubin = cubin
        self._functions: dict[tuple[int, str], object] = {}
        self._contexts: dict[int, object] = {}
        self._modules: dict[int, object] = {}
        self._lock = threading.Lock()

    def _context(self, device: int):
        from cuda.bindings import driver

        ctx = self._contexts.get(device)
        if ctx is None:
            _check(driver.cuInit(0), "cuInit")
            dev = _check(driver.cuDeviceGet(device), "cuDeviceGet")
            ctx = _check(driver.cuDevicePrimaryCtxRetain(dev), "cuDevicePrimaryCtxRetain")
            self._contexts[device] = ctx
        current = _check(driver.cuCtxGetCurrent(), "cuCtxGetCurrent")
        if int(current) != int(ctx):
            _check(driver.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
        return ctx

    def function(self, name: str, device: int):
        key = (device, name)
        fn = self._functions.get(key)
        if fn is None:
            from cuda.bindings import driver

            with self._lock:
                self._context(device)
                if device not in self._modules:
                    self._modules[device] = _check(driver.cuModuleLoadData(self.cubin),
                                                   f"cuModuleLoadData({self.uri}, {self.target})")
                fn = _check(driver.cuModuleGetFunction(self._modules[device], name.encode()),
                            f"cuModuleGetFunction({name})")
                self._functions[key] = fn
        return fn

    def launch(self, name: str, grid, block, args, *, device: int, stream: int,
               shared_mem: int = 0):
        """Launch kernel ``name`` with ``args`` (tensors, ints as int32, floats as float32, or
        explicit ctypes values) on the raw CUDA ``stream`` of ``device``."""
        from cuda.bindings import driver

        fn = self.function(name, device)
        self._context(device)
        grid = tuple(grid) + (1,) * (3 - len(grid))
        block = tuple(block) + (1,) * (3 - len(block))
        values = [_as_param(a) for a in args]
        pointers = (ctypes.c_void_p * max(1, len(values)))(
            *[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
        if shared_mem > 48 * 1024:
            _check(driver.cuFuncSetAttribute(
                fn, driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                shared_mem), "cuFuncSetAttribute")
        (err,) = driver.cuLaunchKernel(fn, *grid, *block, shared_mem, driver.CUstream(stream),
                                       ctypes.addressof(pointers), 0)
        if int(err) != 0:
            raise RuntimeError(f"cuLaunchKernel({self.uri}:{name}) failed: {err!r}")
