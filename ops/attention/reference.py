"""Plain-torch references for the attention family: the oracle of the tests and the CPU path.

LSE values are base-2 log-sum-exp (FlashInfer's convention): a state (v, s) is the softmax-
weighted average v of some keys' values and s = log2(sum of exp2 of their scores).
"""
from __future__ import annotations

import math

import torch


def naive_merge_states(v: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge ``num_states`` partial attention states per (seq, head).

    v: [seq, num_states, heads, dim]; s: [seq, num_states, heads] (float32, base-2 LSE).
    Returns v [seq, heads, dim] (v's dtype) and s [seq, heads] (float32; float64 for float64
    inputs). States with s = -inf are empty; a row with only empty states gives v = 0, s = -inf.
    A state with s = +inf takes all the weight (several share it equally) and s is +inf.
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
    # exactly 0 for empty states; a state at the max weighs 1, so +inf states (the max then)
    # share the weight instead of exp2(inf - inf) = NaN
    w = torch.where(s == s_max_safe[:, None], 1.0, torch.exp2(s - s_max_safe[:, None]))
    denom = w.sum(dim=1)
    v_out = (w.to(acc)[..., None] * v.to(acc)).sum(dim=1) / torch.where(empty, 1.0, denom).to(acc)[..., None]
    s_out = torch.where(empty, s_max, s_max_safe + torch.log2(torch.where(empty, 1.0, denom)))
    return v_out.to(v.dtype), s_out


def naive_merge_state(v_a, s_a, v_b, s_b) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two states: v_a/v_b [seq, heads, dim], s_a/s_b [seq, heads] -> (v, s)."""
    return naive_merge_states(torch.stack([v_a, v_b], dim=1), torch.stack([s_a, s_b], dim=1))


def naive_single_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                           causal: bool = False, custom_mask: torch.Tensor | None = None,
                           window_left: int = -1, logits_soft_cap: float | None = None,
                           sm_scale: float | None = None, logits_fn=None,
                           k_scale: float | None = None, v_scale: float | None = None,
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of one request, FlashInfer's semantics, in float32 (float64 for float64 inputs).

    q [qo_len, num_qo_heads, head_dim]; k, v [kv_len, num_kv_heads, head_dim] (NHD);
    num_qo_heads a multiple of num_kv_heads (GQA/MQA). Query row i sits at KV position
    ``kv_len - qo_len + i`` (causal and the window align the queries to the end of the KV).
    ``custom_mask`` [qo_len, kv_len] bool (True: attend) replaces ``causal``. Key p is kept for
    query position t when ``p <= t`` (causal), ``p >= t - window_left`` (window_left >= 0) and the
    mask allows it. logits = q.k * sm_scale (default 1/sqrt(head_dim)), then
    ``cap * tanh(logits / cap)`` with a soft cap. ``logits_fn(logits, q_pos, k_pos, qo_head)``,
    if given, returns (logits, keep) for a custom variant. k/v may be fp8 (e4m3) with
    ``k_scale``/``v_scale``: they are dequantized (``k.float() * k_scale``) before anything else.

    Returns o [qo_len, num_qo_heads, head_dim] (q's dtype) and the base-2 LSE [qo_len,
    num_qo_heads] float32 (float64 for float64 inputs). A row with no key kept gives o = 0 and
    lse = -inf.
    """
    acc = torch.promote_types(q.dtype, torch.float32)
    qo_len, hq, d = q.shape
    kv_len, hk, _ = k.shape
    group = hq // hk
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(d)
    kf, vf = k.to(acc), v.to(acc)
    if k_scale is not None:
        kf = kf * k_scale
    if v_scale is not None:
        vf = vf * v_scale
    kf = kf.repeat_interleave(group, dim=1)
    vf = vf.repeat_interleave(group, dim=1)
    logits = torch.einsum("qhd,khd->hqk", q.to(acc), kf) * sm_scale
    if logits_soft_cap is not None and logits_soft_cap > 0:
        logits = logits_soft_cap * torch.tanh(logits / logits_soft_cap)
    q_pos = torch.arange(qo_len, device=q.device)[:, None] + (kv_len - qo_len)
    k_pos = torch.arange(kv_len, device=q.device)[None, :]
    keep = torch.ones(qo_len, kv_len, dtype=torch.bool, device=q.device)
    if custom_mask is not None:
        keep = custom_mask.to(torch.bool).reshape(qo_len, kv_len).clone()
    elif causal:
        keep &= k_pos <= q_pos
    if window_left is not None and window_left >= 0:
        keep &= k_pos >= q_pos - window_left
    keep = keep[None].expand(hq, qo_len, kv_len)
    if logits_fn is not None:
        heads = torch.arange(hq, device=q.device)[:, None, None]
        logits, extra = logits_fn(logits, q_pos[None], k_pos[None], heads)
        keep = keep & extra
    logits = torch.where(keep, logits * math.log2(math.e), float("-inf"))
    lse = torch.logsumexp(logits * math.log(2.0), dim=-1) / math.log(2.0)  # base 2
    empty = torch.isneginf(lse)
    p = torch.exp2(logits - torch.where(empty, 0.0, lse)[..., None])
    o = torch.einsum("hqk,khd->qhd", p, vf)
    return o.to(q.dtype), lse.transpose(0, 1).contiguous()


def naive_gather_paged_kv(paged_kv_cache, indptr: torch.Tensor, indices: torch.Tensor,
                          last_page_len: torch.Tensor, kv_layout: str = "NHD",
                          ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each request's (k, v), both [kv_len, num_kv_heads, head_dim] (NHD), from a paged cache.

    ``paged_kv_cache``: one tensor [max_pages, 2, page_size, H, D] (NHD) or [max_pages, 2, H,
    page_size, D] (HND), or a (k, v) tuple of [max_pages, page_size, H, D] / [max_pages, H,
    page_size, D]. Request i owns pages ``indices[indptr[i]:indptr[i + 1]]``; its last page holds
    ``last_page_len[i]`` tokens (a request without pages is empty).
    """
    if isinstance(paged_kv_cache, (tuple, list)):
        k_cache, v_cache = paged_kv_cache
    else:
        k_cache, v_cache = paged_kv_cache[:, 0], paged_kv_cache[:, 1]
    if kv_layout == "HND":
        k_cache, v_cache = k_cache.transpose(1, 2), v_cache.transpose(1, 2)
    page_size = k_cache.shape[1]
    out = []
    indptr, indices, last_page_len = indptr.tolist(), indices.tolist(), last_page_len.tolist()
    for i in range(len(indptr) - 1):
        pages = indices[indptr[i]:indptr[i + 1]]
        kv_len = (len(pages) - 1) * page_size + last_page_len[i] if pages else 0
        k = k_cache[pages].flatten(0, 1)[:kv_len]
        v = v_cache[pages].flatten(0, 1)[:kv_len]
        out.append((k, v))
    return out


def naive_batch_attention(q: torch.Tensor, qo_indptr: torch.Tensor,
                          kv: list[tuple[torch.Tensor, torch.Tensor]], *,
                          custom_masks: list | None = None, **kw,
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """A per-request loop of :func:`naive_single_attention`: q [nnz_qo, Hq, D] with qo_indptr
    [batch + 1]; ``kv`` one (k, v) NHD pair per request (e.g. from naive_gather_paged_kv)."""
    bounds = qo_indptr.tolist()
    outs, lses = [], []
    for i, (k, v) in enumerate(kv):
        mask = custom_masks[i] if custom_masks is not None else None
        o, lse = naive_single_attention(q[bounds[i]:bounds[i + 1]], k, v, custom_mask=mask, **kw)
        outs.append(o)
        lses.append(lse)
    acc = torch.promote_types(q.dtype, torch.float32)
    if not outs:
        return q.new_zeros(q.shape), q.new_zeros(q.shape[:2], dtype=acc)
    return torch.cat(outs), torch.cat(lses)
