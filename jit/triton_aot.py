"""Compile Triton kernels for a GPU architecture on a machine without a GPU.

Under Triton's interpreter (TRITON_INTERPRET=1, how the kernels run on CPU) nothing is
compiled, so errors that only the GPU compiler sees (a dot smaller than 16, an unsupported
dtype conversion, too much shared memory, register spills) would wait for a GPU. This module
closes that gap in two steps:

1. ``record_launches()`` captures the launches an op makes under the interpreter: the rendered
   module, the kernel, and its arguments described by type (tensor dtype and 16-byte
   alignment, scalar values, constexprs), exactly what Triton's JIT specializes on.
2. ``compile_launches(launches, archs)`` compiles each distinct launch for ``sm_80``/``sm_90``
   in a subprocess without the interpreter (it patches ``triton.language`` in place, so the
   real compiler must run in a clean process), with the same signature, constexprs and
   alignment attributes a GPU launch would pass, and reports per (kernel, arch): ok or the
   compiler's error, shared memory, registers, stack and local (spill) bytes from the cubin,
   and which tensor-core instructions the PTX uses (``wgmma`` on Hopper, ``mma.sync``).

bf16 dots are upcast to float32 under the interpreter (jit.env.interpreted_bf16_dot_upcast);
record with ``FLASHKIT_INTERPRET_BF16_DOT=native`` set before the launchers render their
specs, so that the recorded launches are the GPU's.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["Launch", "record_launches", "compile_launches"]


@dataclasses.dataclass(frozen=True)
class Launch:
    """One kernel launch described by what Triton specializes on. ``args``/``kwargs`` hold
    scalars as they are and tensors as ("tensor", dtype name, 16-byte aligned)."""

    module_path: str
    kernel: str
    args: tuple
    kwargs: tuple  # sorted (name, value) pairs

    @property
    def key(self) -> str:
        return json.dumps([self.module_path, self.kernel, self.args, self.kwargs], default=repr)


def _describe(value):
    import torch

    if isinstance(value, torch.Tensor):
        return ("tensor", str(value.dtype).removeprefix("torch."), value.data_ptr() % 16 == 0)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    # tl.constexpr-wrapped values and dtypes: their repr is what the kernel body sees
    return ("repr", repr(value))


@contextlib.contextmanager
def record_launches():
    """Collect the interpreted launches made inside the block (a list of Launch, distinct in
    order of first launch). The kernels still run, so the ops' results are unchanged."""
    from triton.runtime.interpreter import InterpretedFunction

    if os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise RuntimeError("record_launches() needs TRITON_INTERPRET=1 (kernels run interpreted)")
    seen: dict[str, Launch] = {}
    original = InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        module = sys.modules[self.fn.__module__]
        launch = Launch(module.__file__, self.fn.__name__, tuple(_describe(a) for a in args),
                        tuple(sorted((k, _describe(v)) for k, v in kwargs.items())))
        seen.setdefault(launch.key, launch)
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    launches: list[Launch] = []
    InterpretedFunction.run = run
    try:
        yield launches
    finally:
        InterpretedFunction.run = original
        launches.extend(seen.values())


def compile_launches(launches: list[Launch], archs=("sm_80", "sm_90"),
                     timeout: float = 900) -> list[dict]:
    """Compile every launch for every arch in a fresh interpreter-free Python; one result dict
    per (launch, arch) with keys kernel, module, arch, ok, error, seconds, and on success
    shared (bytes), registers, stack, local (bytes per thread), num_warps, num_stages,
    wgmma, mma_sync, and wide_loads: the 16-byte global loads in the PTX (``ld.global.v4`` and
    16-byte ``cp.async``; a bandwidth-bound kernel needs them)."""
    payload = json.dumps({"archs": list(archs), "launches": [dataclasses.asdict(x)
                                                             for x in launches]})
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-m", "flashkit.jit.triton_aot"], input=payload,
                          capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"the Triton compile subprocess failed ({proc.returncode}):\n"
                           f"{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------- the compiling subprocess
def _materialize(value):
    """A stand-in for a described argument: Triton's binder reads only a tensor's dtype and
    data_ptr (alignment), so a small CPU tensor, offset by one element if unaligned."""
    import torch

    if isinstance(value, list) and value and value[0] == "tensor":
        t = torch.empty(64, dtype=getattr(torch, value[1]))
        return t if value[2] else t[1:]
    if isinstance(value, list) and value and value[0] == "repr":
        raise ValueError(f"cannot rebuild argument {value[1]} for an ahead-of-time compile")
    return value


_WIDE_LOAD_RE = re.compile(r"ld\.global(?:\.[a-z]+)*\.v4\.(?:b32|f32|u32)|"
                           r"cp\.async\.cg\.shared\.global \[[^\]]*\], \[[^\]]*\], 0x10")
_RESOURCE_RE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def _resource_usage(cubin: bytes, tmp: Path) -> dict:
    """Registers, stack and local bytes from ``cuobjdump --dump-resource-usage`` (Triton
    ships the tool); empty if it cannot run."""
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    path = tmp / "kernel.cubin"
    path.write_bytes(cubin)
    try:
        out = subprocess.run([str(tool), "--dump-resource-usage", str(path)],
                             capture_output=True, text=True, timeout=60).stdout
    except OSError:
        return {}
    m = _RESOURCE_RE.search(out)
    if not m:
        return {}
    return {"registers": int(m[1]), "stack": int(m[2]), "local": int(m[4])}


def _compile_one(launch: dict, arch: str, modules: dict, tmp: Path) -> dict:
    import importlib.util

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.compiler import compile as triton_compile
    from triton.runtime.jit import create_function_from_signature

    path = launch["module_path"]
    if path not in modules:  # a private copy: the cached module may be imported interpreted
        spec = importlib.util.spec_from_file_location(f"flashkit_aot_{len(modules)}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # @triton.jit reads the source through the module
        spec.loader.exec_module(module)
        modules[path] = module
    fn = getattr(modules[path], launch["kernel"])
    result = {"kernel": launch["kernel"], "module": Path(path).parent.name, "arch": arch}
    start = time.perf_counter()
    try:
        target = GPUTarget("cuda", int(arch.removeprefix("sm_")), 32)
        backend = make_backend(target)
        args = [_materialize(a) for a in launch["args"]]
        kwargs = {k: _materialize(v) for k, v in launch["kwargs"]}
        # Triton's own binder and packer: the signature, constexprs and divisibility
        # attributes are what a launch on a GPU would compile with.
        binder = create_function_from_signature(fn.signature, fn.params, backend)
        bound, specialization, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound,
                                                              specialization, options)
        compiled = triton_compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                                  options=options.__dict__)
    except Exception as exc:  # report, do not stop: every kernel gets its verdict
        msg = f"{type(exc).__name__}: {exc}"
        return {**result, "ok": False, "error": msg[-3000:],
                "seconds": round(time.perf_counter() - start, 2)}
    ptx = compiled.asm.get("ptx", "")
    return {**result, "ok": True, "error": "", "seconds": round(time.perf_counter() - start, 2),
            "shared": int(compiled.metadata.shared), "num_warps": compiled.metadata.num_warps,
            "num_stages": compiled.metadata.num_stages, "wgmma": "wgmma.mma_async" in ptx,
            "mma_sync": "mma.sync" in ptx, "wide_loads": len(_WIDE_LOAD_RE.findall(ptx)),
            **_resource_usage(compiled.asm["cubin"], tmp)}


def _main() -> None:
    import tempfile

    request = json.loads(sys.stdin.read())
    modules: dict = {}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for launch in request["launches"]:
            for arch in request["archs"]:
                results.append(_compile_one(launch, arch, modules, Path(tmp)))
    sys.stdout.write("\n" + json.dumps(results) + "\n")


if __name__ == "__main__":
    _main()
