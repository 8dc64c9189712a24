"""Workload traces: which libraries, kernels and flashkit JIT entries a run used.

A trace is a JSON object::

    {"flashkit_trace": 1, "command": [...], "processes": n, "kernel_source": "...",
     "libraries": [path, ...], "kernels": [name, ...], "flashkit_uris": [uri, ...]}

Several traces union (sorted, deduplicated lists), so a deployment can be pruned for a set of
workloads. `run_traced` runs a command with the collector of `flashkit.debloat.collect` in every
Python process it starts (children included, through PYTHONPATH).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

LISTS = ("libraries", "kernels", "flashkit_uris")
_SITECUSTOMIZE = """\
import _flashkit_trace_collect
if not _flashkit_trace_collect.installed():
    _flashkit_trace_collect.install()
    # then whatever sitecustomize the environment had
    import importlib, os, sys
    _here = os.path.realpath(os.path.dirname(os.path.abspath(__file__)))
    _saved, _self = sys.path[:], sys.modules.pop("sitecustomize", None)
    sys.path[:] = [p for p in sys.path if os.path.realpath(os.path.abspath(p or ".")) != _here]
    try:
        importlib.import_module("sitecustomize")
    except ImportError:
        pass
    finally:
        sys.path[:] = _saved
        sys.modules["sitecustomize"] = _self  # the import statement running this looks it up
"""


def empty_trace() -> dict:
    return {"flashkit_trace": 1, "command": [], "processes": 0, "kernel_source": "off",
            **{k: [] for k in LISTS}}


def union_traces(traces: list[dict]) -> dict:
    """One trace holding everything ``traces`` hold."""
    out = empty_trace()
    sources = set()
    for t in traces:
        for k in LISTS:
            out[k] = sorted(set(out[k]) | set(t[k]))
        out["processes"] += t.get("processes", 1)
        out["command"] = out["command"] or t.get("command", [])
        sources.add(t.get("kernel_source", "off"))
    out["kernel_source"] = ", ".join(sorted(sources)) or "off"
    return out


def _check(t, where: str) -> dict:
    if not isinstance(t, dict) or t.get("flashkit_trace") != 1:
        raise ValueError(f"{where}: not a flashkit trace (no \"flashkit_trace\": 1)")
    for k in LISTS:
        if not isinstance(t.get(k), list) or not all(isinstance(x, str) for x in t[k]):
            raise ValueError(f"{where}: \"{k}\" must be a list of strings")
    return t


def read_traces(paths) -> dict:
    """The union of the trace files ``paths`` (one path or a list). Raises ValueError naming a
    file that is missing, not JSON or not a trace."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    traces = []
    for p in paths:
        try:
            traces.append(_check(json.loads(Path(p).read_text()), str(p)))
        except OSError as exc:
            raise ValueError(f"{p}: cannot read trace ({exc.strerror})") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{p}: not JSON ({exc})") from None
    if not traces:
        raise ValueError("paths: expected at least one trace file")
    return union_traces(traces)


def write_trace(trace: dict, path: str | os.PathLike) -> None:
    _check(trace, "trace")
    Path(path).write_text(json.dumps(trace, indent=1))


def run_traced(cmd: list[str], out: str | os.PathLike, kernels: bool = True
               ) -> tuple[int, dict]:
    """Run ``cmd`` with the collector; write the union of its processes' traces to ``out``.

    Returns ``(exit status, trace)``. ``kernels`` turns on torch.profiler in each process (it
    imports torch at start-up and needs a CUDA device to record anything).
    """
    if not isinstance(cmd, (list, tuple)) or not cmd or not all(isinstance(c, str) for c in cmd):
        raise ValueError(f"cmd: expected a non-empty list of strings, got {cmd!r}")
    tmp = Path(tempfile.mkdtemp(prefix="flashkit-trace-"))
    try:
        parts = tmp / "parts"
        parts.mkdir()
        shutil.copy(Path(__file__).with_name("collect.py"), tmp / "_flashkit_trace_collect.py")
        (tmp / "sitecustomize.py").write_text(_SITECUSTOMIZE)
        env = dict(os.environ, FLASHKIT_TRACE_DIR=str(parts),
                   FLASHKIT_TRACE_KERNELS="1" if kernels else "0",
                   PYTHONPATH=os.pathsep.join(
                       [str(tmp)] + ([os.environ["PYTHONPATH"]]
                                     if os.environ.get("PYTHONPATH") else [])))
        try:
            rc = subprocess.call(list(cmd), env=env)
        except OSError as exc:
            raise ValueError(f"cmd: cannot run {cmd[0]!r} ({exc.strerror})") from None
        traces = [_check(json.loads(p.read_text()), str(p)) for p in sorted(parts.glob("*.json"))]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    trace = union_traces(traces)
    trace["command"] = list(cmd)
    write_trace(trace, out)
    return rc, trace
