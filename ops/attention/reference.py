"""Plain-torch references for the attention family: the oracle of the tests and the CPU path.

LSE values are base-2 log-sum-exp (FlashInfer's convention): a state (v, s) is the softmax-
weighted average v of some keys' values and s = log2(sum of exp2 of their scores).
"""
from __future__ import annotations

import torch


def naive_merge_states(v: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge ``num_states`` partial attention states per (seq, head).

    v: [seq, num_states, heads, dim]; s: [seq, num_states, heads] (float32, base-2 LSE).
    Returns v [seq, heads, dim] (v's dtype) and s [seq, heads] (float32; float64 for float64
    inputs). States with s = -inf are empty; a row with only empty states gives v = 0, s = -inf.
    Math runs in float32, or float64 when the inputs are float64.
    """
    acc = torch.promote_types(v.dtype, torch.float32)
    s_acc = torch.promote_types(s.dtype, torch.float32)
    seq, n, heads, dim = v.shape
    if n == 0:
        return (v.new_zeros(seq, heads, dim),
                torch.full((seq, heads), float("-inf"), dtype=s_acc, device=s.device))
    s = s.to(s_acc)
    s_max = s.amax(dim=1)
    empty = torch.isneginf(s_max)
    s_max_safe = torch.where(empty, torch.zeros_like(s_max), s_max)
    w = torch.exp2(s - s_max_safe[:, None])  # exactly 0 for empty states
    denom = w.sum(dim=1)
    v_out = (w.to(acc)[..., None] * v.to(acc)).sum(dim=1) / torch.where(empty, 1.0, denom).to(acc)[..., None]
    s_out = torch.where(empty, s_max, s_max_safe + torch.log2(torch.where(empty, 1.0, denom)))
    return v_out.to(v.dtype), s_out


def naive_merge_state(v_a, s_a, v_b, s_b) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two states: v_a/v_b [seq, heads, dim], s_a/s_b [seq, heads] -> (v, s)."""
    return naive_merge_states(torch.stack([v_a, v_b], dim=1), torch.stack([s_a, s_b], dim=1))
