"""fused_moe: the experts of a MoE layer (two grouped GEMMs and a top-k reduction).

FLOPs count only routed work: each of the tokens*topk (token, expert) rows costs
2*hidden*2*ffn (GEMM1, gate and up) + 2*ffn*hidden (GEMM2) = 6*hidden*ffn. Bytes: the weights of
the experts that receive a token (all of them at these token counts, 3*ffn*hidden*E elements)
plus the activations read and written once (tokens*hidden in and out, tokens*topk*ffn through
the intermediate twice). Decode-sized batches are bound by the weight bytes, prefill by FLOPs.

Baselines in the same process: a per-expert torch loop in the input dtype (vLLM's
``torch_moe`` shape of the computation) and ``torch._grouped_mm`` where this torch has it
(CUDA, bf16: rows sorted by expert, two grouped GEMMs, silu-and-mul and the weighted scatter in
torch). The runner prints every row as a fraction of a dense bf16 cuBLAS matmul measured in the
same run (``frac_matmul``).
"""
from __future__ import annotations

import functools

from ..registry import Case, Setup, Unavailable, input_sets, optional, register

# (name, E, topk, hidden, ffn): Mixtral-8x7B and Qwen3-30B-A3B.
MODELS = [("mixtral", 8, 2, 4096, 14336), ("qwen3_30b_a3b", 128, 8, 2048, 768)]
TOKENS = (1, 64, 512, 4096, 16384)
# bf16 output of a 6*hidden*ffn-long float32 accumulation, |y| ~ 1 for unit-scaled inputs.
ATOL = 6e-2


def moe_flops(tokens: int, topk: int, hidden: int, ffn: int) -> int:
    return tokens * topk * 6 * hidden * ffn


def moe_bytes(tokens: int, num_experts: int, topk: int, hidden: int, ffn: int, elt: int) -> int:
    touched = min(num_experts, tokens * topk)
    return elt * (3 * ffn * hidden * touched + 2 * tokens * hidden + 2 * tokens * topk * ffn)


def torch_loop_moe(x, w1, w2, weights, ids):
    """Per-expert loop in the input dtype (what a framework without a fused kernel runs)."""
    import torch
    import torch.nn.functional as F

    ffn = w2.shape[-1]
    out = torch.zeros(x.shape[0], w2.shape[1], dtype=torch.float32, device=x.device)
    flat = ids.reshape(-1).long()
    token = torch.arange(x.shape[0], device=x.device).repeat_interleave(ids.shape[1])
    w = weights.reshape(-1)
    for e in range(w1.shape[0]):
        sel = (flat == e).nonzero().squeeze(1)
        if sel.numel() == 0:
            continue
        h = x[token[sel]] @ w1[e].t()
        y = (F.silu(h[:, :ffn]) * h[:, ffn:]) @ w2[e].t()
        out.index_add_(0, token[sel], (y * w[sel, None]).float())
    return out.to(x.dtype)


def grouped_mm_moe(x, w1, w2, weights, ids):
    """torch._grouped_mm over rows sorted by expert (offsets: cumulative rows per expert)."""
    import torch
    import torch.nn.functional as F

    ffn, num_experts = w2.shape[-1], w1.shape[0]
    flat = ids.reshape(-1).long()
    order = torch.sort(flat, stable=True).indices
    offs = torch.bincount(flat, minlength=num_experts).cumsum(0).to(torch.int32)
    rows = x[order // ids.shape[1]]
    h = torch._grouped_mm(rows, w1.transpose(1, 2), offs=offs)
    y = torch._grouped_mm(F.silu(h[:, :ffn]) * h[:, ffn:], w2.transpose(1, 2), offs=offs)
    y = y.float() * weights.reshape(-1)[order, None]
    out = torch.zeros(x.shape[0], w2.shape[1], dtype=torch.float32, device=x.device)
    return out.index_add_(0, order // ids.shape[1], y).to(x.dtype)


def _setup(tokens, num_experts, topk, hidden, ffn, device: str, quick: bool) -> Setup:
    import torch

    from flashkit.ops.moe import fused_moe, naive_fused_moe

    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    g = torch.Generator(device=device).manual_seed(tokens + num_experts)
    w1 = torch.randn(num_experts, 2 * ffn, hidden, device=device, generator=g).div_(
        hidden ** 0.5).to(dtype)
    w2 = torch.randn(num_experts, hidden, ffn, device=device, generator=g).div_(ffn ** 0.5).to(dtype)

    def make():
        x = torch.randn(tokens, hidden, device=device, generator=g).to(dtype)
        logits = torch.randn(tokens, num_experts, device=device, generator=g)
        w, ids = logits.softmax(-1).topk(topk, -1)
        return x, w1, w2, (w / w.sum(-1, keepdim=True)).float(), ids.to(torch.int32)

    act_bytes = moe_bytes(tokens, num_experts, topk, hidden, ffn, 2) - 3 * ffn * hidden * min(
        num_experts, tokens * topk) * 2
    n_sets = input_sets(max(act_bytes, 1), device, cap=8)
    impls = {"flashkit-torch": functools.partial(fused_moe, backend="torch")}
    baselines = {"torch-loop": torch_loop_moe}
    skipped = {}
    if cuda:
        impls["flashkit-triton"] = functools.partial(fused_moe, backend="triton")
    else:
        skipped["flashkit-triton"] = "Triton runs in its interpreter on CPU: not timed"

    def grouped_mm():
        if not hasattr(torch, "_grouped_mm"):
            raise Unavailable("this torch has no torch._grouped_mm")
        return grouped_mm_moe

    # On the CPU too (float32): the same computation, checked against the reference.
    optional(baselines, skipped, "torch-grouped_mm", grouped_mm)
    return Setup(impls=impls, baselines=baselines, inputs=[make() for _ in range(n_sets)],
                 reference=lambda *a: naive_fused_moe(*a), atol=ATOL if cuda else 1e-3,
                 skipped=skipped)


def _case(name, tokens, num_experts, topk, hidden, ffn, **kw) -> Case:
    return register(Case(
        name=f"fused_moe/{name}_t{tokens}", op="fused_moe",
        shape=f"tokens={tokens} E={num_experts} top{topk} hidden={hidden} ffn={ffn}",
        setup=functools.partial(_setup, tokens, num_experts, topk, hidden, ffn),
        flops=moe_flops(tokens, topk, hidden, ffn),
        bytes=moe_bytes(tokens, num_experts, topk, hidden, ffn, 2), **kw))


for _name, _e, _k, _h, _f in MODELS:
    for _t in TOKENS:
        _case(_name, _t, _e, _k, _h, _f, devices=("cuda",),
              quick=("cuda",) if (_name, _t) == ("qwen3_30b_a3b", 4096) else ())
# The CPU's --quick case (float32 on CPU): a smoke test of the runner, not numbers to compare.
_case("tiny", 64, 8, 2, 128, 256, devices=("cpu",), quick=("cpu",))
