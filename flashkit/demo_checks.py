"""The op checks of `flashkit demo`: each runs one op family on fresh random inputs on the best
device, on every backend that can run there, against its reference.

A check returns (shape, reference tensors, {backend: callable}); the demo times each callable
and reports max |out - ref| / (1 + |ref|) over all returned tensors.
"""
from __future__ import annotations

import time

import torch


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(time.time_ns() % 2**31)  # fresh inputs every run


def merge_states_check(device: str, backends: list[str]):
    import flashkit
    from flashkit.ops.attention import naive_merge_states

    g = _gen()
    seq, n, heads, dim = (4096, 8, 32, 128) if device == "cuda" else (64, 4, 8, 128)
    v = torch.randn(seq, n, heads, dim, generator=g).to(device, torch.bfloat16)
    s = (torch.randn(seq, n, heads, generator=g) * 4).to(device)
    s[::7, 0] = float("-inf")
    ref = naive_merge_states(v.double(), s.double())
    calls = {b: (lambda b=b: flashkit.merge_states(v, s, backend=b)) for b in backends}
    return f"{seq}x{n}x{heads}x{dim} bf16", ref, calls


def merge_state_in_place_check(device: str, backends: list[str]):
    import flashkit
    from flashkit.ops.attention import naive_merge_state

    g = _gen()
    seq, heads, dim = (4096, 32, 128) if device == "cuda" else (64, 8, 128)
    v = torch.randn(2, seq, heads, dim, generator=g).to(device, torch.bfloat16)
    s = (torch.randn(2, seq, heads, generator=g) * 4).to(device)
    ref = naive_merge_state(v[0].double(), s[0].double(), v[1].double(), s[1].double())

    def call(backend):
        out_v, out_s = v[0].clone(), s[0].clone()
        flashkit.merge_state_in_place(out_v, out_s, v[1], s[1], backend=backend)
        return out_v, out_s

    return f"{seq}x{heads}x{dim} bf16", ref, {b: (lambda b=b: call(b)) for b in backends}


def batch_decode_check(device: str, backends: list[str]):
    import flashkit
    from flashkit.ops.attention.reference import naive_batch_attention, naive_gather_paged_kv

    g = _gen()
    kv_lens = [0, 17, 2000, 33000] if device == "cuda" else [0, 17, 130, 400]
    page, hq, hkv, dim = 16, 32 if device == "cuda" else 8, 8 if device == "cuda" else 2, 128
    pages = [-(-n // page) for n in kv_lens]
    perm = torch.randperm(sum(pages), generator=g).to(torch.int32)
    indptr = torch.tensor([0] + pages).cumsum(0).to(torch.int32)
    last = torch.tensor([n - (p - 1) * page if p else 0 for n, p in zip(kv_lens, pages)],
                        dtype=torch.int32)
    cache = torch.randn(sum(pages), 2, page, hkv, dim, generator=g).to(device, torch.bfloat16)
    q = torch.randn(len(kv_lens), hq, dim, generator=g).to(device, torch.bfloat16)
    kv = naive_gather_paged_kv(cache.cpu(), indptr, perm, last, "NHD")
    ref = naive_batch_attention(q.float().cpu(), torch.arange(len(kv_lens) + 1),
                                [(k.float(), v.float()) for k, v in kv])
    workspace = torch.empty(64 << 20, dtype=torch.uint8, device=device)

    def call(backend):
        w = flashkit.BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD", backend=backend)
        w.plan(indptr.to(device), perm.to(device), last.to(device), hq, hkv, dim, page,
               q_data_type=torch.bfloat16)
        return w.run(q, cache, return_lse=True)

    shape = f"kv {kv_lens}, {hq}/{hkv} heads, hd {dim}, page {page} bf16"
    return shape, ref, {b: (lambda b=b: call(b)) for b in backends if b != "cuda"}


def chunk_ssd_scan_check(device: str, backends: list[str]):
    import flashkit
    from flashkit.ops.ssm import naive_ssd_scan

    g = _gen()
    b, t, h, p, n, chunk = (2, 4096, 8, 64, 128, 256) if device == "cuda" else (1, 150, 4, 16, 16, 64)
    x = torch.randn(b, t, h, p, generator=g)
    dt = torch.randn(b, t, h, generator=g) * 0.5
    A = -torch.rand(h, generator=g) - 0.5
    B, C = (torch.randn(b, t, 1, n, generator=g) for _ in range(2))
    pos = torch.tensor([t // 3, t - 1])
    y, final, ckpt = naive_ssd_scan(*(a.double() for a in (x, dt, A, B, C)), dt_softplus=True,
                                    checkpoint_positions=pos)
    args = [a.to(device) for a in (x, dt, A, B, C)]

    def call(backend):
        return flashkit.chunk_ssd_scan(*args, chunk_size=chunk, dt_softplus=True,
                                       checkpoint_positions=pos.to(device),
                                       return_final_states=True, backend=backend)

    shape = f"b{b} t{t} h{h} p{p} n{n} chunk {chunk} fp32, checkpoints {pos.tolist()}"
    return shape, (y, final, ckpt), {bk: (lambda bk=bk: call(bk)) for bk in backends
                                     if bk == "triton"}


def fused_moe_check(device: str, backends: list[str]):
    import flashkit
    from flashkit.ops.moe.reference import naive_fused_moe, naive_fused_topk

    g = _gen()
    tokens, experts, topk, hidden, ffn = (512, 8, 2, 1024, 768) if device == "cuda" else (33, 8, 2, 64, 32)
    x = torch.randn(tokens, hidden, generator=g).to(device, torch.bfloat16)
    w1 = (torch.randn(experts, 2 * ffn, hidden, generator=g) / hidden ** 0.5).to(device, torch.bfloat16)
    w2 = (torch.randn(experts, hidden, ffn, generator=g) / ffn ** 0.5).to(device, torch.bfloat16)
    weights, ids = naive_fused_topk(torch.randn(tokens, experts, generator=g), topk)
    weights, ids = weights.to(device), ids.to(device)
    ref = naive_fused_moe(x.double(), w1.double(), w2.double(), weights.double(), ids)
    calls = {b: (lambda b=b: flashkit.fused_moe(x, w1, w2, weights, ids, backend=b))
             for b in backends if b != "cuda"}
    return f"{tokens} tokens, E={experts} top-{topk}, hidden {hidden}, ffn {ffn} bf16", ref, calls


CHECKS = {
    "merge_states": merge_states_check,
    "merge_state_in_place": merge_state_in_place_check,
    "batch_decode (paged)": batch_decode_check,
    "chunk_ssd_scan": chunk_ssd_scan_check,
    "fused_moe": fused_moe_check,
}
# bf16 outputs: rounding (2^-9, 2^-8 in Triton's interpreter, which truncates) plus bf16 P.V and
# expert GEMM operands; fp32 scans: float32 accumulation over a few hundred tokens.
TOLERANCE = {"chunk_ssd_scan": 1e-3}
DEFAULT_TOLERANCE = 3e-2


def relative_error(out, ref) -> float:
    """max |out - ref| / (1 + |ref|) over matching tensors; -inf must match -inf exactly."""
    outs = out if isinstance(out, (tuple, list)) else (out,)
    refs = ref if isinstance(ref, (tuple, list)) else (ref,)
    err = 0.0
    for o, r in zip(outs, refs):
        o, r = o.detach().double().cpu(), r.detach().double().cpu()
        if o.shape != r.shape or not torch.equal(torch.isneginf(o), torch.isneginf(r)):
            return float("inf")
        finite = torch.isfinite(r)
        if finite.any():
            err = max(err, ((o - r)[finite].abs() / (1 + r[finite].abs())).max().item())
    return err
