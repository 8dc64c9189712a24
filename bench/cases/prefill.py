"""single_prefill_with_kv_cache: causal prefill of one request (FlashInfer's API).

seq 1k-16k, 32 q / 8 kv heads (GQA 4), head_dim 128, bf16: bound by arithmetic (2 * seq^2 *
DIM * HQ FLOP, ~1 FLOP per 2 B moved... per byte the intensity is seq / 2), so the numbers to
read are TFLOP/s and the fraction of the matmul ceiling (goal: >= 0.9x the best SDPA backend
and >= 75% of the bf16 matmul ceiling at 8k).

Baselines in the same process: torch SDPA with each backend the device offers (flash, cuDNN,
efficient; GQA through ``enable_gqa`` where the backend takes it, else K/V expanded to 32 heads
once at setup, outside the timing) and FlashInfer where it imports. The reference is float32
attention in query blocks of 1024 rows (a 16k x 16k float32 score matrix per head would need
34 GB).
"""
from __future__ import annotations

import functools

from ..attention_baselines import SDPA_BACKENDS, sdpa_prefill
from ..registry import Case, Setup, Unavailable, needs_cuda, optional, register

OP = "single_prefill_with_kv_cache"
HQ, HK, DIM = 32, 8, 128
SEQS = (1024, 2048, 4096, 8192, 16384)
REF_ROWS = 1024
ATOL = 2e-2  # bf16 output of values |o| < ~3


def prefill_flops(seq: int) -> int:
    """Causal: half of 4 * seq^2 * DIM FLOP per q head (q.k and p.v)."""
    return 2 * seq * seq * DIM * HQ


def prefill_bytes(seq: int, elt: int = 2) -> int:
    """q and o (HQ heads), k and v (HK heads), each once."""
    return seq * (2 * HQ + 2 * HK) * DIM * elt


def blocked_reference(q, k, v, rows: int = REF_ROWS):
    """Causal float32 attention, ``rows`` query rows at a time: rows s:e see keys :e, and
    naive_single_attention aligns its queries to the end of the keys it is given."""
    import torch

    from flashkit.ops.attention.reference import naive_single_attention

    out = [naive_single_attention(q[s:s + rows].float(), k[:s + rows].float(),
                                  v[:s + rows].float(), causal=True)[0]
           for s in range(0, q.shape[0], rows)]
    return torch.cat(out)


def _sdpa(backend, device, q, k, v):
    """The SDPA row of one backend, probed once on the case's inputs."""
    import torch

    needs_cuda(device)
    fn = functools.partial(sdpa_prefill, backend)
    try:
        fn(q, k, v)
        return fn
    except RuntimeError as exc:  # this backend without GQA: expand K/V once, here
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    rep = HQ // HK
    kx, vx = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    expanded = {k.data_ptr(): (kx, vx)}

    def call(q, k, v):
        kx, vx = expanded[k.data_ptr()]
        return sdpa_prefill(backend, q, kx, vx)

    try:
        call(q, k, v)
    except RuntimeError as exc:
        raise Unavailable(f"SDPA {backend} cannot run this ({first}; with K/V expanded: "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
    torch.cuda.synchronize()
    return call


def _setup(seq, device, quick) -> Setup:
    import torch

    from flashkit.ops.attention import single_prefill_with_kv_cache

    cuda = device.startswith("cuda")
    gen = torch.Generator().manual_seed(seq)
    q = torch.randn(seq, HQ, DIM, dtype=torch.bfloat16, generator=gen).to(device)
    k, v = (torch.randn(seq, HK, DIM, dtype=torch.bfloat16, generator=gen).to(device)
            for _ in range(2))
    impls, baselines, skipped = {}, {}, {}

    backend = "triton" if cuda else "torch"
    impls[f"flashkit-{backend}"] = functools.partial(single_prefill_with_kv_cache, causal=True,
                                                     backend=backend)
    if not cuda:
        skipped["flashkit-triton"] = "Triton runs in its interpreter on CPU: not timed"
    for backend in SDPA_BACKENDS:
        optional(baselines, skipped, f"torch-sdpa-{backend}",
                 functools.partial(_sdpa, backend, device, q, k, v))
    if not cuda:  # torch's own choice (math on the CPU): the CPU smoke test's baseline
        baselines["torch-sdpa"] = functools.partial(sdpa_prefill, None)

    def flashinfer():
        import flashinfer as fi

        needs_cuda(device)
        return functools.partial(fi.single_prefill_with_kv_cache, causal=True)

    optional(baselines, skipped, "flashinfer", flashinfer)
    return Setup(impls=impls, baselines=baselines, inputs=[(q, k, v)],
                 reference=blocked_reference, atol=ATOL, skipped=skipped)


def _case(seq, tag="", **kw):
    return register(Case(
        name=f"{OP}/{tag}causal_seq{seq}", op=OP, shape=f"seq={seq} causal hq={HQ} hk={HK} "
                                                       f"d={DIM} bf16",
        setup=functools.partial(_setup, seq), flops=prefill_flops(seq),
        bytes=prefill_bytes(seq), **kw))


for _seq in SEQS:
    _case(_seq, devices=("cuda",), quick=("cuda",) if _seq == 4096 else ())
_case(256, tag="cpu_", devices=("cpu",), quick=("cpu",))
