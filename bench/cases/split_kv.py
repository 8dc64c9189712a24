"""plan_split_kv: the host-side split-KV planner (C++ through the ninja backend vs Python).

Host code: timed on the CPU whatever ``--device`` says, per plan (one call on one batch). It
moves no device memory and does no arithmetic worth counting, so flops and bytes are 0 and only
the time and the speedup over the Python planner are reported. Both backends must return the
same plan; the error check compares every field (0 expected).
"""
from __future__ import annotations

import functools

from ..registry import Case, Setup, register

BATCHES = (16, 256)
# Workers to fill: 2 CTAs per SM on a 132-SM H100 SXM.
NUM_WORKERS = 264
PAGE_SIZE = 16
# Zipf-like decode batch: the request of rank r holds MAX_LEN / r^ALPHA tokens (at least 1), in
# shuffled order. At batch 256 that is one 32k-token request, a few thousands and a long tail of
# ~70-300 tokens: the skew that makes the planner split the long ones.
MAX_LEN = 32768
ALPHA = 1.1


def zipf_lens(batch: int, seed: int = 0):
    """int32 CPU tensor [batch] of Zipf-like KV lengths (deterministic for a seed)."""
    import torch

    ranks = torch.arange(1, batch + 1, dtype=torch.float64)
    lens = (MAX_LEN / ranks**ALPHA).floor().clamp_min(1).to(torch.int32)
    perm = torch.randperm(batch, generator=torch.Generator().manual_seed(seed))
    return lens[perm]


def _setup(batch: int, device: str, quick: bool) -> Setup:
    from flashkit.ops.scheduler import plan_split_kv

    def planner(backend):
        return functools.partial(plan_split_kv, num_workers=NUM_WORKERS, page_size=PAGE_SIZE,
                                 backend=backend)

    python = planner("python")
    return Setup(impls={"flashkit-ninja": planner("ninja")},
                 baselines={"flashkit-python": python},
                 inputs=[(zipf_lens(batch),)], reference=python, atol=0.0)


for _batch in BATCHES:
    register(Case(
        name=f"plan_split_kv/b{_batch}_w{NUM_WORKERS}", op="plan_split_kv",
        shape=f"batch={_batch} zipf(max={MAX_LEN}, a={ALPHA}) workers={NUM_WORKERS} page={PAGE_SIZE}",
        setup=functools.partial(_setup, _batch),
        # Host code: no device FLOPs or bytes to compare with the ceilings.
        flops=0, bytes=0, host=True, quick=("cpu", "cuda")))
