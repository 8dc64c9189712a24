"""Test-only specs over tests/jit/templates, and a helper to run code in a fresh interpreter.

Every spec here is tiny: a Triton module run by the interpreter on CPU, a CUDA kernel NVRTC
compiles for sm_80/sm_90 without a GPU, and a pybind11 extension (~7 s to build on 2 cores, so
tests build each ninja spec as few times as they can).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from flashkit.jit import KernelSpec

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = Path(__file__).resolve().parent / "templates"

BACKENDS = ("triton", "nvrtc", "ninja")


def triton_spec(scale: int = 2, root: Path = TEMPLATES, template: str = "scale_add.py.j2",
                **kw) -> KernelSpec:
    return KernelSpec.create("scale_add", "triton", template, {"scale": scale},
                             template_root=str(root), **kw)


def nvrtc_spec(scale: int = 2, target: str = "sm_90", root: Path = TEMPLATES,
               template: str = "scale.cu.j2", **kw) -> KernelSpec:
    return KernelSpec.create("scale", "nvrtc", template, {"scale": scale}, target=target,
                             template_root=str(root), **kw)


def ninja_spec(offset: int = 100, root: Path = TEMPLATES, template: str = "add.cpp.j2",
               **kw) -> KernelSpec:
    return KernelSpec.create("add", "ninja", template, {"offset": offset},
                             template_root=str(root), **kw)


def spec_for(backend: str, **kw) -> KernelSpec:
    return {"triton": triton_spec, "nvrtc": nvrtc_spec, "ninja": ninja_spec}[backend](**kw)


def broken_spec(backend: str) -> KernelSpec:
    """A spec whose source the backend's compiler rejects."""
    if backend == "triton":
        return KernelSpec.create("broken", "triton", "syntax_error.py.j2",
                                 template_root=str(TEMPLATES))
    if backend == "nvrtc":
        return KernelSpec.create("broken", "nvrtc", "undeclared.cu.j2", target="sm_90",
                                 template_root=str(TEMPLATES))
    return KernelSpec.create("broken", "ninja", "undeclared.cpp.j2", template_root=str(TEMPLATES))


# Code that checks a loaded module really works, per backend (run in-process or in a child).
CALL = {
    "triton": ("import torch; x = torch.arange(37, dtype=torch.float32); "
               "y = torch.ones(37); "
               "ok = torch.equal(module.scale_add(x, y), x * 2 + y)"),
    "nvrtc": "ok = module.uri == spec.uri and module.target == spec.target and len(module.cubin) > 0",
    "ninja": "ok = module.add(2, 3) == 105",
}


def check_loaded(backend: str, spec: KernelSpec, module) -> bool:
    scope = {"module": module, "spec": spec}
    exec(CALL[backend], scope)
    return scope["ok"]


def run_python(code: str, env: dict | None = None, timeout: float = 120, **popen) -> dict:
    """Run ``code`` in a fresh interpreter (repo root as cwd) and parse the JSON of its last line."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout, **popen)
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def spec_code(backend: str, **kw) -> str:
    """Python source that rebuilds the same spec in a child process as ``spec``."""
    args = ", ".join(f"{k}={v!r}" for k, v in kw.items())
    return f"from tests.jit.specs import spec_for\nspec = spec_for({backend!r}, {args})\n"



def as_unprivileged():
    """``run_python`` kwargs for a child that file permissions bind.

    Tests run as root in CI, and root writes through chmod 0o500. Dropping CAP_DAC_OVERRIDE,
    CAP_DAC_READ_SEARCH and CAP_FOWNER from the child's bounding set (prctl PR_CAPBSET_DROP, before
    exec) makes it a root that obeys permission bits, so a read-only folder is read-only to it.
    """
    if os.geteuid() != 0:
        return {}
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def drop():
        for cap in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
            if libc.prctl(24, cap, 0, 0, 0) != 0:  # 24 = PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    return {"preexec_fn": drop}


def make_read_only(root: Path):
    for path in [root, *root.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)


def make_writable(root: Path):
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
