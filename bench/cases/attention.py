"""Paged decode and causal prefill attention (FlashInfer's API).

Decode: batch {1, 16, 64, 256} x kv_len {512, 4096, 32768}, uniform and Zipf-skewed lengths,
32 q / 8 kv heads, head_dim 128, bf16, page 16. A decode step reads the whole KV once and does
4 FLOP per (q head, key, dim): with 4 q heads per KV head that is 4 FLOP per KV byte, far under
H100's ~200 FLOP/B, so the number to read is the fraction of the copy bandwidth (target: >= 90%
at kv >= 4096).
Prefill: causal, seq {1k, 4k, 16k}, head_dim 128, bf16, 32/8 heads: TFLOP/s and the fraction of
the matmul ceiling.

Baselines in the same process: torch SDPA (prefill, causal, GQA) and FlashInfer where installed
(reported as skipped otherwise). Decode has no torch baseline: SDPA cannot read a paged cache.
"""
from __future__ import annotations

import functools

from ..registry import Case, Setup, input_sets, register

HQ, HK, DIM, PAGE = 32, 8, 128, 16
DECODE_BATCHES = (1, 16, 64, 256)
DECODE_KV = (512, 4096, 32768)
PREFILL_SEQS = (1024, 4096, 16384)
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


def prefill_flops(seq: int) -> int:
    """Causal: half of 4 * seq^2 * DIM FLOP per head (q.k and p.v)."""
    return 2 * seq * seq * DIM * HQ


def prefill_bytes(seq: int, elt: int = 2) -> int:
    return seq * (2 * HQ + 2 * HK) * DIM * elt


def _paged(lens, device, gen):
    import torch

    pages = [-(-n // PAGE) for n in lens]
    indptr = torch.tensor([0] + pages).cumsum(0).to(torch.int32)
    indices = torch.randperm(int(indptr[-1]), generator=gen).to(torch.int32)
    last = torch.tensor([n - (p - 1) * PAGE for n, p in zip(lens, pages)], dtype=torch.int32)
    cache = torch.randn(int(indptr[-1]), 2, PAGE, HK, DIM, dtype=torch.bfloat16, generator=gen)
    return cache.to(device), indptr.to(device), indices.to(device), last.to(device)


def _decode_setup(batch, kv_len, skew, device, quick) -> Setup:
    import torch

    from flashkit.ops.attention import BatchDecodeWithPagedKVCacheWrapper
    from flashkit.ops.attention.reference import naive_batch_attention, naive_gather_paged_kv

    cuda = device.startswith("cuda")
    gen = torch.Generator().manual_seed(batch * 7 + kv_len)
    lens = decode_lens(batch, kv_len, skew)
    cache, indptr, indices, last = _paged(lens, device, gen)
    ws = torch.empty(256 << 20, dtype=torch.uint8, device=device)
    impls, skipped = {}, {}
    for backend in (("triton",) if cuda else ("torch",)):
        w = BatchDecodeWithPagedKVCacheWrapper(ws, backend=backend)
        w.plan(indptr, indices, last, HQ, HK, DIM, PAGE, q_data_type=torch.bfloat16)
        impls[f"flashkit-{backend}"] = w.run
    if not cuda:
        skipped["flashkit-triton"] = "Triton runs in its interpreter on CPU: not timed"
    baselines = {}
    try:
        import flashinfer
    except ImportError:
        skipped["flashinfer"] = "flashinfer is not installed"
    else:
        fw = flashinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(256 << 20,
                                                                       dtype=torch.uint8,
                                                                       device=device))
        fw.plan(indptr, indices, last, HQ, HK, DIM, PAGE, q_data_type=torch.bfloat16)
        baselines["flashinfer"] = fw.run
    qo = torch.arange(batch + 1, dtype=torch.int32)

    def reference(q, cache):
        kv = naive_gather_paged_kv(cache, indptr.cpu(), indices.cpu(), last.cpu())
        return naive_batch_attention(q.float(), qo, [(k.float(), v.float()) for k, v in kv])[0]

    n_sets = input_sets(batch * HQ * DIM * 2, device)
    inputs = [(torch.randn(batch, HQ, DIM, dtype=torch.bfloat16, generator=gen).to(device), cache)
              for _ in range(n_sets)]
    return Setup(impls=impls, baselines=baselines, inputs=inputs, reference=reference, atol=ATOL,
                 skipped=skipped)


def _prefill_setup(seq, device, quick) -> Setup:
    import torch

    from flashkit.ops.attention import single_prefill_with_kv_cache
    from flashkit.ops.attention.reference import naive_single_attention

    cuda = device.startswith("cuda")
    gen = torch.Generator().manual_seed(seq)
    q = torch.randn(seq, HQ, DIM, dtype=torch.bfloat16, generator=gen).to(device)
    k, v = (torch.randn(seq, HK, DIM, dtype=torch.bfloat16, generator=gen).to(device)
            for _ in range(2))
    backend = "triton" if cuda else "torch"
    impls = {f"flashkit-{backend}": functools.partial(single_prefill_with_kv_cache, causal=True,
                                                      backend=backend)}
    skipped = {} if cuda else {"flashkit-triton": "Triton runs in its interpreter on CPU"}

    def sdpa(q, k, v):
        qt, kt, vt = (t.transpose(0, 1)[None] for t in (q, k, v))
        o = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=True,
                                                             enable_gqa=True)
        return o[0].transpose(0, 1)

    baselines = {"torch-sdpa": sdpa}
    try:
        import flashinfer
    except ImportError:
        skipped["flashinfer"] = "flashinfer is not installed"
    else:
        baselines["flashinfer"] = functools.partial(flashinfer.single_prefill_with_kv_cache,
                                                    causal=True)

    def reference(q, k, v):
        return naive_single_attention(q.float(), k.float(), v.float(), causal=True)[0]

    return Setup(impls=impls, baselines=baselines, inputs=[(q, k, v)], reference=reference,
                 atol=ATOL, skipped=skipped)


for _b in DECODE_BATCHES:
    for _kv in DECODE_KV:
        for _skew in ("uniform", "zipf"):
            if _b == 1 and _skew == "zipf":
                continue
            _lens = decode_lens(_b, _kv, _skew)
            register(Case(
                name=f"batch_decode/b{_b}_kv{_kv}_{_skew}", op="batch_decode",
                shape=f"batch={_b} kv={_kv} {_skew} hq={HQ} hk={HK} d={DIM} page={PAGE} bf16",
                setup=functools.partial(_decode_setup, _b, _kv, _skew),
                flops=decode_flops(_lens), bytes=decode_bytes(_lens), devices=("cuda",),
                quick=("cuda",) if (_b, _kv, _skew) == (64, 4096, "zipf") else ()))
for _seq in PREFILL_SEQS:
    register(Case(
        name=f"prefill/causal_seq{_seq}", op="prefill",
        shape=f"seq={_seq} causal hq={HQ} hk={HK} d={DIM} bf16",
        setup=functools.partial(_prefill_setup, _seq), flops=prefill_flops(_seq),
        bytes=prefill_bytes(_seq), devices=("cuda",), quick=("cuda",) if _seq == 4096 else ()))
# CPU smoke cases (the torch path; not numbers to compare).
register(Case(name="batch_decode/cpu_b4_kv256_zipf", op="batch_decode",
              shape="batch=4 kv=256 zipf (CPU smoke)",
              setup=functools.partial(_decode_setup, 4, 256, "zipf"),
              flops=decode_flops(decode_lens(4, 256, "zipf")),
              bytes=decode_bytes(decode_lens(4, 256, "zipf")), devices=("cpu",), full=False,
              quick=("cpu",)))
