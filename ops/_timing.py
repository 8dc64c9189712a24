"""Host-clock timing for the autotuners and cost models (not the benchmarks: bench/timing.py)."""
from __future__ import annotations

import time

import torch


def wall_times(fn, device: torch.device, reps: int) -> list[float]:
    """Seconds of ``reps`` calls of ``fn``, each bracketed by device synchronizations."""
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return times
