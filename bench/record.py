"""The run record: device, versions, commit, command; writing it as JSON into bench/results/."""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path

__all__ = ["environment", "results_dir", "save", "write_json", "device_slug", "commit"]

_HERE = Path(__file__).resolve().parent


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _device_info(device: str) -> dict:
    import torch

    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        return {"type": "cuda", "name": props.name, "capability": f"{props.major}.{props.minor}",
                "sm_count": props.multi_processor_count,
                "memory_gib": round(props.total_memory / 2**30, 1),
                "l2_mib": round(getattr(props, "L2_cache_size", 0) / 2**20, 1)}
    return {"type": "cpu", "name": _cpu_name()}


def _git(*args: str) -> str | None:
    repo = _HERE.parent
    if not (repo / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                             timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def commit() -> str | None:
    """The checkout's commit (FLASHKIT_GIT_COMMIT in a copy without .git), or None."""
    return _git("rev-parse", "HEAD") or os.environ.get("FLASHKIT_GIT_COMMIT") or None


def environment(device: str) -> dict:
    """Device, host, versions and the git state of the checkout (None outside one)."""
    import torch

    import flashkit

    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    if commit is None:
        # A copy of the tree without .git (a GPU host's): the commit the run was prepared at.
        commit = os.environ.get("FLASHKIT_GIT_COMMIT") or None
    return {
        "device": _device_info(device),
        # Host cases (planners) run here whatever the device.
        "host": {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "triton": _version("triton"),
            "flashkit": flashkit.__version__,
            "flashinfer": _version("flashinfer-python") or _version("flashinfer"),
            "numpy": _version("numpy"),
        },
        "git": {"commit": commit, "short": commit[:10] if commit else None,
                "dirty": bool(status) if status is not None else None},
    }


def results_dir() -> Path | None:
    """bench/results of a source checkout; None when installed (never write in site-packages)."""
    d = _HERE / "results"
    if not d.is_dir() or {"site-packages", "dist-packages"} & set(d.parts):
        return None
    return d


def device_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3' (at most 40 characters)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40].rstrip("-") or "unknown"


def _finite(obj):
    """JSON has no NaN/inf: write them as null (the row's status says what happened)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _dumps(record: dict) -> str:
    return json.dumps(_finite(record), indent=1, allow_nan=False) + "\n"


def write_json(record: dict, path: str | os.PathLike) -> Path:
    """Write ``record`` to ``path`` atomically (a process killed mid-write leaves the previous
    version, never half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(_dumps(record))
    os.replace(tmp, path)
    return path


def save(record: dict, directory: Path) -> Path:
    """A new file ``<UTC date>_<device-slug>_<short commit>.json`` (``_2``, ``_3``... when that
    name is taken: runs are appended, never overwritten)."""
    date = _dt.datetime.fromisoformat(record["timestamp"]).strftime("%Y-%m-%d")
    commit = (record["git"]["short"] or "nogit")[:7]
    stem = f"{date}_{device_slug(record['device']['name'])}_{commit}"
    text = _dumps(record)
    for i in range(1, 10_000):
        path = directory / (f"{stem}.json" if i == 1 else f"{stem}_{i}.json")
        try:
            with open(path, "x") as f:
                f.write(text)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"no free result file name for {stem} in {directory}")
