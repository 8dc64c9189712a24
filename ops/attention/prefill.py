"""Prefill attention (many query tokens per request): single_prefill_with_kv_cache,
BatchPrefillWithPagedKVCacheWrapper and BatchPrefillWithRaggedKVCacheWrapper (FlashInfer's API).

A work item is one tile of a request's query tokens (BLOCK_M rows of (token, q head) pairs)
over the request's whole KV, written straight to the output; causal tiles stop at their last
query. plan() cuts the tiles on the host; run() checks shapes and launches, with no sync.
"""
from __future__ import annotations

import numpy as np
import torch

from .._validate import check_tensor
from ._plan import (KV_DTYPES, AttentionPlan, attn_backend, check_heads, check_indptr, check_int,
                    check_layout, check_page_table, check_scalars, check_single_kv, int32,
                    items_tensor, kv_views, launch)
from .attention_triton import block_sizes
from .decode import as_dtype, check_outputs, check_run_inputs
from .variants import AttentionVariant

__all__ = ["single_prefill_with_kv_cache", "BatchPrefillWithPagedKVCacheWrapper",
           "BatchPrefillWithRaggedKVCacheWrapper"]


def prefill_items(qo_ptr: np.ndarray, kv_lens: np.ndarray, group: int, head_dim: int, device):
    """One item per tile of BLOCK_M // group query tokens; longest KV first (LPT-like order)."""
    tile = block_sizes(group, head_dim, decode=False)[0] // group
    qo_lens = np.diff(qo_ptr)
    n_tiles = -(-qo_lens // tile)
    req = np.repeat(np.arange(qo_lens.size), n_tiles)
    first = np.repeat(np.cumsum(n_tiles) - n_tiles, n_tiles)
    q_start = (np.arange(req.size) - first) * tile
    q_end = np.minimum(q_start + tile, qo_lens[req])
    kv_end = kv_lens[req]
    order = np.argsort(-kv_end, kind="stable")
    cols = [c[order] for c in (req, q_start, q_end, np.zeros_like(req), kv_end,
                               qo_ptr[req] + q_start)]
    return items_tensor(cols, device), int(req.size)


def check_mask(custom_mask, qo_ptr, kv_lens, device):
    """custom_mask: bool, flattened per request ([qo_len_i, kv_len_i] row-major, concatenated)."""
    if custom_mask is None:
        return None, None
    sizes = np.diff(qo_ptr) * kv_lens
    check_tensor("custom_mask", custom_mask, dtypes=(torch.bool,), device=device)
    if custom_mask.numel() != int(sizes.sum()):
        raise ValueError(f"custom_mask must hold sum(qo_len * kv_len) = {int(sizes.sum())} "
                         f"booleans, got {custom_mask.numel()}")
    mask = custom_mask.reshape(-1).contiguous().view(torch.uint8)
    return mask, int32(np.concatenate([[0], np.cumsum(sizes)[:-1]]) if sizes.size else [0], device)


def single_prefill_with_kv_cache(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 causal: bool = False, kv_layout: str = "NHD",
                                 custom_mask: torch.Tensor | None = None, window_left: int = -1,
                                 logits_soft_cap: float | None = None,
                                 sm_scale: float | None = None, return_lse: bool = False, *,
                                 backend: str = "auto", variant: AttentionVariant | None = None,
                                 variant_args=()):
    """Attention of one request's query tokens over its KV.

    Parameters
    ----------
    q : [qo_len, num_qo_heads, head_dim], fp16/bf16
    k, v : [kv_len, num_kv_heads, head_dim] (NHD) or [num_kv_heads, kv_len, head_dim] (HND)
    causal : query i (at KV position kv_len - qo_len + i) sees keys up to its own position
    custom_mask : bool [qo_len, kv_len] (True: attend); replaces ``causal`` (as in FlashInfer)
    window_left, logits_soft_cap, sm_scale, return_lse, backend, variant : as in
        single_decode_with_kv_cache

    Returns
    -------
    o : [qo_len, num_qo_heads, head_dim] (and lse [qo_len, num_qo_heads] float32, base 2)
    """
    check_layout(kv_layout)
    check_tensor("q", q, dtypes=KV_DTYPES, ndim=3, last_dim_contiguous=True)
    qo_len, heads, dim = q.shape
    kv_len, num_kv_heads = check_single_kv(q, k, v, kv_layout)
    if custom_mask is not None:
        check_tensor("custom_mask", custom_mask, dtypes=(torch.bool,), shape=(qo_len, kv_len),
                     device=q.device)
    window_left, soft_cap, sm_scale = check_scalars(window_left, logits_soft_cap, sm_scale, dim)
    backend = attn_backend(backend, q.device)
    qo_ptr = np.array([0, qo_len], np.int64)
    lens = np.array([kv_len], np.int64)
    items, n = prefill_items(qo_ptr, lens, heads // num_kv_heads, dim, q.device)
    mask, mask_indptr = check_mask(custom_mask, qo_ptr, lens, q.device)
    plan = AttentionPlan(
        decode=False, paged=False, batch=1, nnz_qo=qo_len, num_qo_heads=heads,
        num_kv_heads=num_kv_heads, head_dim=dim, page_size=1, causal=bool(causal),
        window_left=window_left, soft_cap=soft_cap, sm_scale=sm_scale, q_dtype=q.dtype,
        kv_dtype=k.dtype, n_items=n, max_page=kv_len - 1, items=items,
        qo_indptr=int32(qo_ptr, q.device), kv_indptr=int32([0, 0], q.device),
        kv_indices=int32([0], q.device), kv_lens=int32(lens, q.device),
        merge_indptr=int32([0, 0], q.device), mask=mask, mask_indptr=mask_indptr,
        variant=variant)
    out = torch.empty((qo_len, heads, dim), dtype=q.dtype, device=q.device)
    lse = torch.empty((qo_len, heads), dtype=torch.float32, device=q.device)
    k4, v4 = kv_views(k, v, kv_layout)
    launch(plan, q, k4, v4, out, lse, torch.empty(0, dtype=torch.uint8, device=q.device), backend,
           variant_args)
    return (out, lse) if return_lse else out


class _PrefillWrapper:
    def __init__(self, float_workspace_buffer: torch.Tensor, kv_layout: str = "NHD",
                 use_cuda_graph: bool = False, *, backend: str = "auto"):
        check_tensor("float_workspace_buffer", float_workspace_buffer)
        check_layout(kv_layout)
        if use_cuda_graph:
            raise ValueError("use_cuda_graph=True is not supported yet (no fixed-grid plan); "
                             "pass use_cuda_graph=False")
        self._workspace = float_workspace_buffer
        self._kv_layout = kv_layout
        self._backend = attn_backend(backend, float_workspace_buffer.device)
        self._plan: AttentionPlan | None = None

    def _common(self, qo_indptr, num_qo_heads, num_kv_heads, head_dim, causal, window_left,
                logits_soft_cap, sm_scale, q_data_type, kv_data_type, variant):
        check_heads(num_qo_heads, num_kv_heads)
        head_dim = check_int("head_dim", head_dim, 1, 512)
        qo_ptr = check_indptr("qo_indptr", qo_indptr)
        window_left, soft_cap, sm_scale = check_scalars(window_left, logits_soft_cap, sm_scale,
                                                        head_dim)
        q_dtype = as_dtype("q_data_type", q_data_type)
        kv_dtype = as_dtype("kv_data_type", kv_data_type, default=q_dtype)
        if variant is not None and not isinstance(variant, AttentionVariant):
            raise ValueError(f"variant must be an AttentionVariant, got {type(variant).__name__}")
        return dict(num_qo_heads=num_qo_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                    causal=bool(causal), window_left=window_left, soft_cap=soft_cap,
                    sm_scale=sm_scale, q_dtype=q_dtype, kv_dtype=kv_dtype, variant=variant), qo_ptr

    def _finish(self, qo_ptr, kv_lens, custom_mask, **kw):
        dev = self._workspace.device
        if qo_ptr.size != kv_lens.size + 1:
            raise ValueError(f"qo_indptr must have batch + 1 = {kv_lens.size + 1} entries (as the "
                             f"KV page table), got {qo_ptr.size}")
        items, n = prefill_items(qo_ptr, kv_lens, kw["num_qo_heads"] // kw["num_kv_heads"],
                                 kw["head_dim"], dev)
        mask, mask_indptr = check_mask(custom_mask, qo_ptr, kv_lens, dev)
        return dict(decode=False, batch=kv_lens.size, nnz_qo=int(qo_ptr[-1]), n_items=n,
                    items=items, qo_indptr=int32(qo_ptr, dev), kv_lens=int32(kv_lens, dev),
                    merge_indptr=int32([0], dev), mask=mask, mask_indptr=mask_indptr, **kw)

    def _run(self, q, k, v, out, lse, return_lse, variant_args):
        plan = self._plan
        out, lse = check_outputs(plan, q, out, lse)
        launch(plan, q, k, v, out, lse, self._workspace, self._backend, variant_args)
        return (out, lse) if return_lse else out


class BatchPrefillWithPagedKVCacheWrapper(_PrefillWrapper):
    """Batched prefill over a paged KV cache (FlashInfer's wrapper of the same name).

    plan(qo_indptr, paged_kv_indptr, paged_kv_indices, paged_kv_last_page_len, num_qo_heads,
    num_kv_heads, head_dim_qk, page_size, causal=False, ...) then run(q, paged_kv_cache):
    q [qo_indptr[-1], num_qo_heads, head_dim] -> o of q's shape (and lse [nnz, heads]).
    ``custom_mask``: bool, each request's [qo_len, kv_len] mask flattened and concatenated.
    """

    def plan(self, qo_indptr: torch.Tensor, paged_kv_indptr: torch.Tensor,
             paged_kv_indices: torch.Tensor, paged_kv_last_page_len: torch.Tensor,
             num_qo_heads: int, num_kv_heads: int, head_dim_qk: int, page_size: int,
             causal: bool = False, *, custom_mask: torch.Tensor | None = None,
             window_left: int = -1, logits_soft_cap: float | None = None,
             q_data_type=torch.float16, kv_data_type=None, sm_scale: float | None = None,
             non_blocking: bool = True, variant: AttentionVariant | None = None) -> None:
        page_size = check_int("page_size", page_size, 1)
        kw, qo_ptr = self._common(qo_indptr, num_qo_heads, num_kv_heads, head_dim_qk, causal,
                                  window_left, logits_soft_cap, sm_scale, q_data_type,
                                  kv_data_type, variant)
        kv_lens, max_page = check_page_table(
            paged_kv_indptr, paged_kv_indices, paged_kv_last_page_len, page_size,
            ("paged_kv_indptr", "paged_kv_indices", "paged_kv_last_page_len"))
        dev = self._workspace.device
        self._plan = AttentionPlan(
            paged=True, page_size=page_size, max_page=max_page,
            kv_indptr=paged_kv_indptr.to(dev, non_blocking=True),
            kv_indices=paged_kv_indices.to(dev, non_blocking=True),
            **self._finish(qo_ptr, kv_lens, custom_mask, **kw))

    begin_forward = plan

    def run(self, q: torch.Tensor, paged_kv_cache, *, out: torch.Tensor | None = None,
            lse: torch.Tensor | None = None, return_lse: bool = False, variant_args=()):
        plan = self._plan
        if plan is None:
            raise RuntimeError("BatchPrefillWithPagedKVCacheWrapper.run() called before plan()")
        k, v = check_run_inputs(plan, q, paged_kv_cache, self._kv_layout, self._workspace.device,
                                (plan.nnz_qo, plan.num_qo_heads, plan.head_dim))
        return self._run(q, k, v, out, lse, return_lse, variant_args)

    forward = run


class BatchPrefillWithRaggedKVCacheWrapper(_PrefillWrapper):
    """Batched prefill over ragged (unpaged) K/V (FlashInfer's wrapper of the same name).

    plan(qo_indptr, kv_indptr, num_qo_heads, num_kv_heads, head_dim_qk, causal=False, ...) then
    run(q, k, v): q [qo_indptr[-1], Hq, D], k/v [kv_indptr[-1], Hk, D] (NHD) or
    [Hk, kv_indptr[-1], D] (HND) -> o of q's shape (and lse).
    """

    def plan(self, qo_indptr: torch.Tensor, kv_indptr: torch.Tensor, num_qo_heads: int,
             num_kv_heads: int, head_dim_qk: int, causal: bool = False, *,
             custom_mask: torch.Tensor | None = None, window_left: int = -1,
             logits_soft_cap: float | None = None, q_data_type=torch.float16,
             kv_data_type=None, sm_scale: float | None = None, non_blocking: bool = True,
             variant: AttentionVariant | None = None) -> None:
        kw, qo_ptr = self._common(qo_indptr, num_qo_heads, num_kv_heads, head_dim_qk, causal,
                                  window_left, logits_soft_cap, sm_scale, q_data_type,
                                  kv_data_type, variant)
        kv_ptr = check_indptr("kv_indptr", kv_indptr)
        dev = self._workspace.device
        self._plan = AttentionPlan(
            paged=False, page_size=1, max_page=int(kv_ptr[-1]) - 1,
            kv_indptr=int32(kv_ptr, dev), kv_indices=int32([0], dev),
            **self._finish(qo_ptr, np.diff(kv_ptr), custom_mask, **kw))

    begin_forward = plan

    def run(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
            out: torch.Tensor | None = None, lse: torch.Tensor | None = None,
            return_lse: bool = False, variant_args=()):
        plan = self._plan
        if plan is None:
            raise RuntimeError("BatchPrefillWithRaggedKVCacheWrapper.run() called before plan()")
        dev = self._workspace.device
        check_tensor("q", q, dtypes=(plan.q_dtype,), shape=(plan.nnz_qo, plan.num_qo_heads,
                     plan.head_dim), device=dev, last_dim_contiguous=True)
        nnz_kv = plan.max_page + 1
        shape = ((nnz_kv, plan.num_kv_heads, plan.head_dim) if self._kv_layout == "NHD"
                 else (plan.num_kv_heads, nnz_kv, plan.head_dim))
        for name, t in (("k", k), ("v", v)):
            check_tensor(name, t, dtypes=(plan.kv_dtype,), shape=shape, device=dev,
                         last_dim_contiguous=True)
        k4, v4 = kv_views(k, v, self._kv_layout)
        return self._run(q, k4, v4, out, lse, return_lse, variant_args)

    forward = run
