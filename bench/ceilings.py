"""The device's own ceilings, measured in every run: copy bandwidth and a matmul rate.

Results are printed as fractions of these, not of datasheet numbers: the same card reaches
different rates with different clocks, power caps and drivers.
"""
from __future__ import annotations

from .timing import measure

__all__ = ["measure_ceilings"]

# GPU: 1 GiB copies (20x any L2) and an 8192^3 bf16 matmul (1.1 TFLOP, large enough to fill
# every SM of an H100/H200 with full tiles).
_GPU_COPY_BYTES = 2**30
_GPU_MATMUL = (8192, 8192, 8192)
# CPU: 64 MiB copies (past the last-level cache of most hosts) and a 1024^3 float32 matmul
# (~0.08 s on the 2-core dev box). bf16 is not used on the CPU: without AMX it runs as a slow
# fallback (0.44 GFLOP/s against 28 GFLOP/s for float32 at 1024^3 on the dev box), which would
# be no ceiling at all.
_CPU_COPY_BYTES = 64 * 2**20
_CPU_MATMUL = (1024, 1024, 1024)


def measure_ceilings(device: str, quick: bool = False) -> dict:
    """Copy bandwidth (GB/s, bytes read + written) and matmul rate (TFLOP/s) on ``device``.

    Inputs are random (never zeros: a bf16 matmul has run 13% faster on zeros on an H200).
    Long warm-ups let the clocks settle before the numbers that everything is compared to.
    """
    import torch

    cuda = str(device).startswith("cuda")
    copy_bytes = _GPU_COPY_BYTES if cuda else _CPU_COPY_BYTES
    m, n, k = _GPU_MATMUL if cuda else _CPU_MATMUL
    dtype = torch.bfloat16 if cuda else torch.float32
    if cuda:
        timing = dict(warmup_ms=100 if quick else 200, rep_ms=100 if quick else 300, min_reps=10)
    else:
        timing = dict(warmup_ms=10 if quick else 50, rep_ms=50 if quick else 300,
                      min_reps=3 if quick else 5)
    gen = torch.Generator(device=device).manual_seed(0)

    src = torch.empty(copy_bytes // 4, dtype=torch.float32, device=device).uniform_(generator=gen)
    dst = torch.empty_like(src)
    dst.copy_(src)
    t_copy = measure(lambda dst=dst, src=src: dst.copy_(src), device=device, **timing)
    del src, dst

    a = torch.randn(m, k, dtype=dtype, device=device, generator=gen)
    b = torch.randn(k, n, dtype=dtype, device=device, generator=gen)
    torch.matmul(a, b)
    t_mm = measure(lambda a=a, b=b: torch.matmul(a, b), device=device, **timing)
    del a, b
    if cuda:
        torch.cuda.empty_cache()

    return {
        # A copy reads and writes every byte once.
        "copy_gbps": 2 * copy_bytes / (t_copy.median_ms * 1e-3) / 1e9,
        "copy_bytes": copy_bytes,
        "copy_ms": t_copy.median_ms,
        # A matmul [m, k] x [k, n] does m*n*k multiply-adds: 2*m*n*k FLOP.
        "matmul_tflops": 2 * m * n * k / (t_mm.median_ms * 1e-3) / 1e12,
        "matmul_dtype": str(dtype).replace("torch.", ""),
        "matmul_shape": [m, n, k],
        "matmul_ms": t_mm.median_ms,
    }
