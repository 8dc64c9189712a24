"""Timing of one callable: warm-up, then per-repetition times; median with p20/p80.

On CUDA each repetition is bracketed by CUDA events on the current stream. A Python call with
argument checks issues kernels more slowly than a small kernel runs (tens of microseconds of
host time, against a floor of about 3 us for an 8 MB merge at H100's ~3 TB/s), so an event pair
around a bare call would time the launch, not the kernel. Before each repetition we therefore
queue a spin kernel (``torch.cuda._sleep``) that lasts longer than the host needs to issue the
call: the call's kernels wait in the queue behind it and run back to back, and the events measure
GPU time only.
With ``cold_l2`` a 256 MB buffer is zeroed before each repetition as well (L2 is 50 MB on H100,
60 MB on H200), so inputs start in device memory.

On the CPU each call is timed with ``time.perf_counter``; ``cold_l2`` does nothing there.

The caller rotates inputs (several input sets) where one set would fit in L2: this module times
whatever ``fn`` does.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np

__all__ = ["Timing", "measure", "sync"]

# Zeroing this much evicts every L2 of current parts (50 MB H100, 60 MB H200, 126 MB B200).
_FLUSH_BYTES = 256 * 2**20
# Spin-kernel cycles per millisecond, calibrated once per device (SM clock, roughly 1.7-2 GHz).
_CYCLES_PER_MS: dict[int, float] = {}


@dataclasses.dataclass(frozen=True)
class Timing:
    """Per-repetition statistics in milliseconds."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    reps: int


def sync(device: str) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], *, device: str, warmup_ms: float = 25, rep_ms: float = 100,
            min_reps: int = 5, max_reps: int = 1000, cold_l2: bool = False) -> Timing:
    """Time ``fn()`` on ``device``; about ``rep_ms`` of repetitions, at least ``min_reps``.

    ``fn`` must already have run once (compiled, loaded): the warm-up is for clocks and caches,
    not for building kernels.
    """
    if str(device).startswith("cuda"):
        times = _times_cuda(fn, str(device), warmup_ms, rep_ms, min_reps, max_reps, cold_l2)
    else:
        times = _times_cpu(fn, warmup_ms, rep_ms, min_reps, max_reps)
    p20, p50, p80 = np.percentile(np.asarray(times, dtype=np.float64), [20, 50, 80])
    return Timing(float(p50), float(p20), float(p80), len(times))


def _times_cpu(fn, warmup_ms, rep_ms, min_reps, max_reps) -> list[float]:
    clock = time.perf_counter
    stop = clock() + warmup_ms / 1e3
    fn()
    while clock() < stop:
        fn()
    times: list[float] = []
    stop = clock() + rep_ms / 1e3
    while len(times) < min_reps or (len(times) < max_reps and clock() < stop):
        t0 = clock()
        fn()
        times.append((clock() - t0) * 1e3)
    return times


def _cycles_per_ms(torch, index: int) -> float:
    if index not in _CYCLES_PER_MS:
        torch.cuda._sleep(1000)  # load the kernel before timing it
        start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
        cycles = 2_000_000  # about 1 ms
        start.record()
        torch.cuda._sleep(cycles)
        end.record()
        end.synchronize()
        _CYCLES_PER_MS[index] = cycles / max(start.elapsed_time(end), 1e-3)
    return _CYCLES_PER_MS[index]


def _times_cuda(fn, device, warmup_ms, rep_ms, min_reps, max_reps, cold_l2) -> list[float]:
    import torch

    dev = torch.device(device)
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    with torch.cuda.device(index):
        event = lambda: torch.cuda.Event(enable_timing=True)  # noqa: E731
        torch.cuda.synchronize()
        # Estimate from 5 back-to-back calls: GPU time per call and host time to issue one.
        start, end = event(), event()
        t0 = time.perf_counter()
        start.record()
        for _ in range(5):
            fn()
        end.record()
        host_ms = (time.perf_counter() - t0) * 1e3 / 5
        torch.cuda.synchronize()
        est_ms = max(start.elapsed_time(end) / 5, 1e-3)

        # Spin for twice the host time (plus 20 us) so that the call is fully queued before its
        # start event fires; capped at 20 ms for calls that synchronize internally.
        cycles = 0
        if hasattr(torch.cuda, "_sleep"):
            cycles = int(min(2 * host_ms + 0.02, 20.0) * _cycles_per_ms(torch, index))
        flush = torch.empty(_FLUSH_BYTES, dtype=torch.uint8, device=dev) if cold_l2 else None

        for _ in range(int(min(max(warmup_ms / est_ms, 1), 5000))):
            fn()
        # The budget counts the longer of GPU and host time per repetition.
        n_rep = int(min(max(rep_ms / max(est_ms, host_ms), min_reps), max(max_reps, min_reps)))
        starts = [event() for _ in range(n_rep)]
        ends = [event() for _ in range(n_rep)]
        for i in range(n_rep):
            if flush is not None:
                flush.zero_()
            if cycles:
                torch.cuda._sleep(cycles)
            starts[i].record()
            fn()
            ends[i].record()
        torch.cuda.synchronize()
        return [s.elapsed_time(e) for s, e in zip(starts, ends)]
