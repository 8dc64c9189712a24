"""Plain-torch MoE references (float32 math): the oracle for tests and the CPU path.

Conventions (vLLM / SGLang): ``w1`` [E, 2*ffn, hidden] holds the gate rows then the up rows,
``w2`` [E, hidden, ffn]; expert e maps x to ``w2[e] @ (act(w1[e, :ffn] @ x) * (w1[e, ffn:] @ x))``
and a token's output is the routing-weighted sum over its top-k experts.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["naive_fused_topk", "naive_fused_moe", "naive_moe_align_block_size", "ACTIVATIONS",
           "SCORINGS"]

ACTIVATIONS = ("silu", "gelu")
SCORINGS = ("softmax", "sigmoid")


def _f32(t: torch.Tensor) -> torch.Tensor:
    """At least float32 (float64 stays float64: the tests' oracle)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _act(x: torch.Tensor, activation: str) -> torch.Tensor:
    return F.silu(x) if activation == "silu" else F.gelu(x)


def naive_fused_topk(gating_logits: torch.Tensor, topk: int, renormalize: bool = True,
                     scoring: str = "softmax", correction_bias: torch.Tensor | None = None,
                     num_expert_groups: int | None = None, topk_group: int | None = None):
    """Top-k routing: [tokens, E] logits -> (weights float32 [tokens, topk], ids int32).

    The bias (DeepSeek-V3's ``e_score_correction_bias``) only changes which experts are chosen;
    the weights are the unbiased scores. With groups, a group's score is its best expert's (the
    sum of its best two with a bias, as in DeepSeek-V3) and only the ``topk_group`` best groups
    compete.
    """
    inf = float("inf")
    logits = _f32(gating_logits)
    logits = torch.where(logits.isnan(), -inf, logits)  # docs/moe.md: NaN reads as -inf
    if scoring == "softmax":
        # softmax's limit: +inf logits share the mass, a row of -inf scores 0 everywhere
        m = logits.amax(-1, keepdim=True)
        p = torch.where(m == inf, (logits == inf).to(logits.dtype), (logits - m).exp())
        p = torch.where(m == -inf, 0.0, p)
        total = p.sum(-1, keepdim=True)
        scores = torch.where(total > 0, p / total, 0.0)
    else:
        scores = logits.sigmoid()
    choice = scores if correction_bias is None else scores + _f32(correction_bias)
    choice = torch.where(choice.isnan(), -inf, choice)
    if num_expert_groups is not None and num_expert_groups > 1:
        t, e = choice.shape
        grouped = choice.view(t, num_expert_groups, e // num_expert_groups)
        if correction_bias is not None:
            group_scores = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(-1)
        else:
            group_scores = grouped.max(-1).values
        group_scores = torch.where(group_scores.isnan(), -inf, group_scores)  # +inf + -inf
        keep = torch.zeros_like(group_scores, dtype=torch.bool)
        keep.scatter_(1, _top(group_scores, topk_group), True)
        choice = choice.masked_fill(~keep.repeat_interleave(e // num_expert_groups, 1), -inf)
    ids = _top(choice, topk)
    weights = scores.gather(1, ids)
    if renormalize:
        total = weights.sum(-1, keepdim=True)
        weights = torch.where(total > 0, weights / total, 0.0)
    return weights, ids.to(torch.int32)


def _top(x: torch.Tensor, k: int) -> torch.Tensor:
    """The indices of the k largest entries per row, ties (-inf rows too) to the lowest index:
    a stable sort, where torch.topk's order among equal values is unspecified."""
    return x.sort(dim=-1, descending=True, stable=True).indices[:, :k]


def naive_fused_moe(hidden_states: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                    topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                    activation: str = "silu") -> torch.Tensor:
    """A loop over experts in float32 (float64 inputs: float64); returns [tokens, hidden]."""
    x = _f32(hidden_states)
    ffn = w2.shape[-1]
    out = torch.zeros(x.shape[0], w2.shape[1], dtype=x.dtype, device=x.device)
    flat_ids = topk_ids.long().reshape(-1)
    flat_w = topk_weights.to(x.dtype).reshape(-1)
    token = torch.arange(x.shape[0], device=x.device).repeat_interleave(topk_ids.shape[1])
    for e in flat_ids.unique().tolist():
        sel = (flat_ids == e).nonzero().squeeze(1)
        rows = x[token[sel]]
        h = rows @ w1[e].to(x.dtype).t()
        y = (_act(h[:, :ffn], activation) * h[:, ffn:]) @ w2[e].to(x.dtype).t()
        out.index_add_(0, token[sel], y * flat_w[sel, None])
    return out


def naive_moe_align_block_size(topk_ids: torch.Tensor, block_size: int, num_experts: int):
    """vLLM's moe_align_block_size, written as a loop: (sorted_token_ids, expert_ids,
    num_tokens_post_padded).

    ``sorted_token_ids`` [numel + E*(block_size-1)] lists the flat (token*topk + slot) indices
    grouped by expert in ascending order, each expert padded to a multiple of ``block_size`` with
    ``numel``; ``expert_ids`` [cdiv(len(sorted_token_ids), block_size)] gives each block's expert
    (-1 past the padded total); ``num_tokens_post_padded`` [1] is that total. Experts with no
    tokens get no block.
    """
    flat = topk_ids.reshape(-1).long().cpu().tolist()
    numel = len(flat)
    cap = numel + num_experts * (block_size - 1)
    sorted_ids = [numel] * cap
    expert_ids = [-1] * (-(-cap // block_size))
    pos = 0
    for e in range(num_experts):
        mine = [i for i, x in enumerate(flat) if x == e]
        for j, i in enumerate(mine):
            sorted_ids[pos + j] = i
        n_blocks = -(-len(mine) // block_size)
        for b in range(n_blocks):
            expert_ids[pos // block_size + b] = e
        pos += n_blocks * block_size
    dev = topk_ids.device
    return (torch.tensor(sorted_ids, dtype=torch.int32, device=dev),
            torch.tensor(expert_ids, dtype=torch.int32, device=dev),
            torch.tensor([pos], dtype=torch.int32, device=dev))
