"""`flashkit doctor`: what this machine has, and which backends can run here."""
from __future__ import annotations

import functools
import platform
import re
import shutil
import subprocess
from importlib.metadata import PackageNotFoundError, version


def _pkg(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _first_line(cmd: list[str], pattern: str | None = None) -> str:
    if shutil.which(cmd[0]) is None:
        return "not found"
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"error ({exc})"
    if pattern:
        m = re.search(pattern, out)
        return m.group(0) if m else out.strip().splitlines()[-1]
    return out.strip().splitlines()[0] if out.strip() else "?"


@functools.lru_cache(maxsize=None)
def collect() -> dict:
    """A dict of everything doctor reports (also written into benchmark results)."""
    import torch

    from flashkit import __version__, jit

    info = {
        "flashkit": __version__,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda or "none",
        "triton": _pkg("triton"),
        "cuda-python": (_pkg("cuda-bindings") if _pkg("cuda-bindings") != "not installed"
                        else _pkg("cuda-python")),
        "nvrtc": jit.get_backend("nvrtc").toolchain(),
        "nvcc": _first_line(["nvcc", "--version"], r"release [\d.]+"),
        "ninja": _pkg("ninja"),
        "pybind11": _pkg("pybind11"),
        "c++": jit.get_backend("ninja").toolchain().split("|")[0],
        "cache_dir": str(jit.cache_root()),
        "cache_bytes": jit.cache_size(),
        "cache_entries": len(jit.list_entries()),
    }
    if torch.cuda.is_available():
        idx = torch.cuda.current_device()
        prop = torch.cuda.get_device_properties(idx)
        info["gpu"] = (f"{prop.name} (sm_{prop.major}{prop.minor}, {prop.total_memory / 2**30:.0f} GiB, "
                       f"{prop.multi_processor_count} SMs)")
        info["gpu_count"] = torch.cuda.device_count()
    else:
        info["gpu"] = "none"
        info["gpu_count"] = 0
    gpu = torch.cuda.is_available()
    backends = {}
    for name in ("triton", "nvrtc", "ninja"):
        ok, why = jit.get_backend(name).available()
        if not ok:
            backends[name] = f"unavailable: {why}"
        elif name == "triton":
            backends[name] = ("compile + run on GPU" if gpu
                              else "run in the interpreter on CPU (TRITON_INTERPRET=1)")
        elif name == "nvrtc":
            backends[name] = "compile + launch" if gpu else "compile only (no GPU to launch on)"
        else:
            backends[name] = "build + run host code"
    info["backends"] = backends
    return info


def render(info: dict) -> str:
    rows = [(k, v) for k, v in info.items() if k != "backends"]
    rows[rows.index(("cache_bytes", info["cache_bytes"]))] = (
        "cache_size", f"{info['cache_bytes'] / 2**20:.1f} MiB")
    width = max(len(k) for k, _ in rows) + 2
    lines = [f"{k:<{width}}{v}" for k, v in rows]
    lines.append("backends:")
    lines += [f"  {k:<{width - 2}}{v}" for k, v in info["backends"].items()]
    return "\n".join(lines)
