"""BatchDecodeWithPagedKVCacheWrapper: paged decode (FlashInfer's API).

32 q / 8 kv heads (GQA 4), head_dim 128, bf16, page 16. Headline: batch 32 at kv 1k, 4k, 16k,
32k, and a Zipf-skewed batch of 64 (mean 4k, the first request ~54k). A decode step reads the
whole KV once and does 4 FLOP per (q head, key, dim): with 4 q heads per KV head that is 4 FLOP
per KV byte, far under an H200's ~200 FLOP/B, so the number to read is the fraction of the copy
bandwidth (goal: >= 90% at kv >= 4k, and >= 1.1x flex_attention on skewed batches).

Baselines in the same process, on the same inputs: flex_attention reading the paged cache
through its block mask and page table (compiled on a GPU; bench/attention_baselines.py), SDPA
on the same requests laid out contiguously and padded (what a user without paging runs), and
FlashInfer where it imports.
"""
from __future__ import annotations

import functools

from ..attention_baselines import ContiguousDecode, FlexPagedDecode
from ..registry import Case, Setup, input_sets, needs_cuda, optional, register

OP = "BatchDecodeWithPagedKVCacheWrapper"
HQ, HK, DIM, PAGE = 32, 8, 128, 16
ATOL = 2e-2  # bf16 output of values |o| < ~3


def decode_lens(batch: int, kv_len: int, skew: str) -> list[int]:
    """Uniform: every request kv_len. Zipf: request i gets kv_len * batch / (i + 1) / H_batch,
    so the mean length stays kv_len while the first request is the longest."""
    if skew == "uniform":
        return [kv_len] * batch
    h = sum(1.0 / (i + 1) for i in range(batch))
    return [max(1, round(kv_len * batch / ((i + 1) * h))) for i in range(batch)]


def decode_bytes(lens, elt: int = 2) -> int:
    """K and V read once (2 * tokens * HK * DIM * elt), q read and o written once per request."""
    return 2 * sum(lens) * HK * DIM * elt + 2 * len(lens) * HQ * DIM * elt


def decode_flops(lens) -> int:
    """q.k and p.v: 2 * 2 * DIM FLOP per (q head, key)."""
    return 4 * sum(lens) * HQ * DIM


def _paged(lens, device, gen, dgen):
    """The page table (from ``gen``, CPU) and the cache, drawn on the device (``dgen``): 4 GB
    of bf16 at kv 32k would take seconds through the CPU."""
    import torch

    pages = [-(-n // PAGE) for n in lens]
    indptr = torch.tensor([0] + pages).cumsum(0).to(torch.int32)
    indices = torch.randperm(int(indptr[-1]), generator=gen).to(torch.int32)
    last = torch.tensor([n - (p - 1) * PAGE for n, p in zip(lens, pages)], dtype=torch.int32)
    cache = torch.randn(int(indptr[-1]), 2, PAGE, HK, DIM, dtype=torch.bfloat16, generator=dgen,
                        device=device)
    return cache, indptr.to(device), indices.to(device), last.to(device)


def _setup(batch, kv_len, skew, device, quick) -> Setup:
    import torch

    from flashkit.ops.attention import BatchDecodeWithPagedKVCacheWrapper
    from flashkit.ops.attention.reference import naive_batch_attention, naive_gather_paged_kv

    cuda = device.startswith("cuda")
    gen = torch.Generator().manual_seed(batch * 7 + kv_len)
    dgen = torch.Generator(device=device).manual_seed(batch * 7 + kv_len)
    lens = decode_lens(batch, kv_len, skew)
    cache, indptr, indices, last = _paged(lens, device, gen, dgen)
    impls, baselines, skipped = {}, {}, {}

    def wrapper(backend):
        # A workspace per wrapper: a plan lives in its workspace, so two wrappers planned on one
        # buffer would run each other's plans.
        ws = torch.empty(256 << 20, dtype=torch.uint8, device=device)
        w = BatchDecodeWithPagedKVCacheWrapper(ws, backend=backend)
        w.plan(indptr, indices, last, HQ, HK, DIM, PAGE, q_data_type=torch.bfloat16)
        return w.run

    # flashkit's own rows are built directly: a failure there is an error row, never a skip.
    for backend in ("triton", "cuda") if cuda else ("torch",):
        impls[f"flashkit-{backend}"] = wrapper(backend)
    if not cuda:
        skipped["flashkit-triton"] = "Triton runs in its interpreter on CPU: not timed"

    def flashinfer():
        import flashinfer as fi

        needs_cuda(device)
        fw = fi.BatchDecodeWithPagedKVCacheWrapper(torch.empty(256 << 20, dtype=torch.uint8,
                                                               device=device))
        fw.plan(indptr, indices, last, HQ, HK, DIM, PAGE, q_data_type=torch.bfloat16)
        return fw.run

    # Compiled on a GPU (the fused flex-decoding kernel); eager math on the CPU (a correctness
    # smoke test of the block mask, not a number to compare).
    optional(baselines, skipped, "torch-flex_attention",
             lambda: FlexPagedDecode(indptr, indices, last, cache.shape[0], PAGE, compiled=cuda))
    optional(baselines, skipped, "torch-sdpa-contiguous",
             lambda: ContiguousDecode(cache, indptr, indices, last, PAGE))
    optional(baselines, skipped, "flashinfer", flashinfer)
    qo = torch.arange(batch + 1, dtype=torch.int32)

    def reference(q, cache):
        kv = naive_gather_paged_kv(cache, indptr.cpu(), indices.cpu(), last.cpu())
        return naive_batch_attention(q.float(), qo, [(k.float(), v.float()) for k, v in kv])[0]

    n_sets = input_sets(batch * HQ * DIM * 2, device)
    inputs = [(torch.randn(batch, HQ, DIM, dtype=torch.bfloat16, generator=dgen, device=device),
               cache) for _ in range(n_sets)]
    return Setup(impls=impls, baselines=baselines, inputs=inputs, reference=reference, atol=ATOL,
                 skipped=skipped)


def _case(batch, kv_len, skew, tag="", **kw):
    lens = decode_lens(batch, kv_len, skew)
    return register(Case(
        name=f"{OP}/{tag}b{batch}_kv{kv_len}_{skew}", op=OP,
        shape=f"batch={batch} kv={kv_len} {skew} (max {max(lens)}) hq={HQ} hk={HK} d={DIM} "
              f"page={PAGE} bf16",
        setup=functools.partial(_setup, batch, kv_len, skew),
        flops=decode_flops(lens), bytes=decode_bytes(lens), **kw))


# The headline cases first (gpucheck runs these); then the wider grid of a full run.
HEADLINE = [(32, kv, "uniform") for kv in (1024, 4096, 16384, 32768)] + [(64, 4096, "zipf")]
for _b, _kv, _skew in HEADLINE:
    _case(_b, _kv, _skew, devices=("cuda",), quick=("cuda",) if _skew == "zipf" else ())
for _b, _kv, _skew in ((1, 32768, "uniform"), (256, 4096, "uniform"), (256, 4096, "zipf")):
    _case(_b, _kv, _skew, devices=("cuda",))
# CPU smoke case (the torch path and the torch baselines; not numbers to compare).
_case(4, 256, "zipf", tag="cpu_", devices=("cpu",), quick=("cpu",))
