"""Estimated seconds of each GPU-check section on an H200, from the sizes of what it runs.

A model, written down so that a run can be compared with it (the summary records both). Its
constants are assumptions unless a measurement is cited; the first GPU run replaces them:

- every section pays a fresh Python with torch and a CUDA context: :data:`START_S`;
- a bench case pays its inputs (written once at ~200 GB/s by torch's generators), the reference
  check (float32 math on the device at ~1/20 of the floor rate, plus per-call overhead), and per
  row a first call (a compile on its first use in the section: :data:`FIRST_USE_S`) and the
  timing loop (25 ms warm-up + 100 ms of repetitions, at least 5 calls at ~2x the floor);
- the floor of a call is max(bytes / copy rate, FLOPs / matmul rate) at the H200's ceilings
  measured on these hosts (GPU.md): 4.3 TB/s, 780 TFLOP/s bf16.
"""
from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

__all__ = ["bench", "tests", "count_tests", "jit_cold", "floor_s", "pytest_plugins",
           "ENVIRONMENT_S"]

COPY_BPS = 4.3e12
MATMUL_FLOPS = 780e12
START_S = 8.0  # python + torch import + CUDA context (assumed; torch's import alone takes seconds)
# Environment: the start, nvidia-smi, 1 GiB copies (200 ms warm-up + 300 ms) and the 8192^3
# matmul (the same), allocations included.
ENVIRONMENT_S = START_S + 4.0
FILL_BPS = 200e9
# Seconds of a row's first call the first time its implementation appears in a section, then on
# later cases (a new specialization of the same kernel). A Triton compile of the decode kernel
# took 2.54 s on the CPU box (bench/results/); the torch.compile times are assumed.
FIRST_USE_S = {"flashkit-triton": (3.0, 1.5), "flashkit-cuda": (1.0, 0.5),
               "torch-flex_attention": (20.0, 8.0), "torch-compile": (15.0, 6.0)}
OTHER_FIRST_S = (0.5, 0.1)
# Rows of a case on a GPU, by op (the baselines that need no extra package; FlashInfer and
# mamba_ssm rows are skipped unless installed).
ROWS = {
    "BatchDecodeWithPagedKVCacheWrapper": ["flashkit-triton", "flashkit-cuda",
                                           "torch-flex_attention", "torch-sdpa-contiguous"],
    "single_prefill_with_kv_cache": ["flashkit-triton", "torch-sdpa-flash", "torch-sdpa-cudnn",
                                     "torch-sdpa-efficient"],
    "chunk_ssd_scan": ["flashkit-triton", "fla-chunk_simple_gla"],
    "fused_moe": ["flashkit-torch", "flashkit-triton", "torch-loop", "torch-grouped_mm"],
    "merge_states": ["flashkit-torch", "flashkit-triton", "flashkit-cuda", "torch-reference",
                     "torch-compile"],
    "APOLLO": ["flashkit-apollo-torch", "flashkit-apollo_mini-torch", "flashkit-triton",
               "flashkit-apollo_mini-triton", "torch-adamw-foreach", "torch-adamw-fused"],
}
# Rows slower than the floor by far: host loops and float32 references (multiples of the floor).
SLOW_ROWS = {"torch-loop": 8.0, "flashkit-torch": 4.0, "torch-reference": 4.0}
# One kernel test on a GPU (assumed): most of the ~1100 share their kernels (the JIT and Triton
# caches are shared by the xdist workers), so a first compile (~2.5 s) is paid by a few of them.
TEST_S = 1.5
TESTS_START_S = START_S + 12.0  # pytest start, collection, xdist workers' own starts


def floor_s(flops: float, nbytes: float) -> float:
    """The time no implementation beats at the H200's ceilings (seconds)."""
    return max(nbytes / COPY_BPS, flops / MATMUL_FLOPS)


def _case_s(case, seen: set[str]) -> float:
    floor = floor_s(case.flops, case.bytes)
    total = case.bytes / FILL_BPS + 20 * floor + 0.3  # inputs, the float32 reference
    for row in ROWS.get(case.op, ["flashkit-triton"]):
        first, later = FIRST_USE_S.get(row, OTHER_FIRST_S)
        total += later if row in seen else first
        seen.add(row)
        per_call = floor * SLOW_ROWS.get(row, 2.0)
        total += 0.125 + max(5 * per_call, per_call * 2)  # warm-up + reps, at least 5 calls
    return total


def bench(names: list[str]) -> tuple[float, str]:
    """(seconds, what was counted) of a bench section running the cases ``names``."""
    from flashkit.bench.registry import cases

    found = {c.name: c for c in cases(device="cuda")}
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError(f"gpucheck plan names unknown bench cases: {', '.join(missing)}")
    seen: set[str] = set()
    per_case = [_case_s(found[n], seen) for n in names]
    floors = sum(floor_s(found[n].flops, found[n].bytes) for n in names)
    return START_S + 2 + sum(per_case), (f"{len(names)} cases, floors {floors * 1e3:.1f} ms in "
                                         f"all; max case {max(per_case):.0f} s")


def pytest_plugins() -> set[str]:
    """Which of pytest-timeout and pytest-xdist this Python has."""
    return {name for name, module in (("timeout", "pytest_timeout"), ("xdist", "xdist"))
            if importlib.util.find_spec(module) is not None}


def count_tests(python: str, selections: list[list[str]], root: Path) -> int | None:
    """How many tests the section's pytest selections collect here (``--collect-only``; a GPU
    host collects a few more: its device lists add the cuda backend). None if it fails."""
    total = 0
    for args in selections:
        try:
            proc = subprocess.run([python, "-m", "pytest", "--collect-only", "-q", *args],
                                  capture_output=True, text=True, timeout=120, cwd=root)
        except (OSError, subprocess.TimeoutExpired):
            return None
        m = re.search(r"(\d+)(?:/\d+)? tests? collected", proc.stdout)
        if m is None:
            if "no tests collected" in proc.stdout or "deselected" in proc.stdout:
                continue
            return None
        total += int(m.group(1))
    return total


def tests(n_tests: int | None, workers: int, plugins: set[str]) -> tuple[float, str]:
    """(seconds, what was counted) of the test section: ``n_tests`` with ``workers`` xdist
    workers (None: not counted; the estimate is then the start alone)."""
    par = workers if "xdist" in plugins else 1
    if n_tests is None:
        return TESTS_START_S, "tests not counted (collection failed or not asked)"
    return (TESTS_START_S + n_tests * TEST_S / par,
            f"{n_tests} tests x {TEST_S} s / {par} worker(s)")


def jit_cold() -> tuple[float, str]:
    """Fresh processes: a cold decode end to end, the first plan, nvrtc cold + warm, Triton,
    ninja (each pays the start), plus their compiles and the awaited planner builds: nvrtc 0.3 s
    and Triton 2.5 s as on the CPU box (bench/results/), the planner 5 s (4.6-4.8 s on an H100
    host, issue 11) in the ninja, plan and decode samples, the decode's kernels 2.5 s."""
    procs, compiles = 6, 7.5 + 5.0 + 0.3 + 2.5 + 5.0
    return START_S + procs * (START_S - 2) + compiles, f"{procs} fresh processes + compiles"



def floor_table(names: list[str]) -> list[str]:
    """Markdown rows ``| case | shape | MB moved | GFLOP | floor us | bound |`` of bench cases at
    the H200 ceilings above (docs/performance.md holds this table; a test keeps them equal)."""
    from flashkit.bench.registry import cases

    found = {c.name: c for c in cases(device="cuda")}
    rows = []
    for name in names:
        c = found[name]
        mem, mm = c.bytes / COPY_BPS, c.flops / MATMUL_FLOPS
        bound = "memory" if mem >= mm else "matmul"
        rows.append(f"| `{name}` | {c.shape} | {c.bytes / 1e6:,.1f} | {c.flops / 1e9:,.1f} | "
                    f"{max(mem, mm) * 1e6:,.1f} | {bound} |")
    return rows
