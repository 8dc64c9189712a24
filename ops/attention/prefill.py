"""Prefill attention (many query tokens per request): single_prefill_with_kv_cache,
BatchPrefillWithPagedKVCacheWrapper and BatchPrefillWithRaggedKVCacheWrapper (FlashInfer's API).

A work item is one tile of a request's query tokens (BLOCK_M rows of (token, q head) pairs)
over the request's whole KV, written straight to the output; causal tiles stop at their last
query. plan() cuts the tiles on the host; run() checks shapes and launches, with no sync.
use_cuda_graph=True plans into fixed buffers (PrefillGraphBuffers) for a fixed launch grid.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from .._common.checks import check_int, check_tensor
from .checks import (KV_DTYPES, MAX_HEAD_DIM, attn_backend, check_heads, check_indptr,
                     check_layout, check_mask, check_outputs, check_run_inputs, check_scalars,
                     check_single_kv)
from .compat import (as_backend, check_flag, check_host_indptr, check_lse_form,
                     check_prefill_extras, check_rope, check_scale, check_uniform_q_len,
                     out_dtype, plan_dtypes, refuse, variant_args_of)
from .forward import PagedPrefillForward, RaggedPrefillForward
from .graph import PrefillGraphBuffers, check_graph_buffer
from .index_tensors import int32, items_tensor
from .items import prefill_item_cols, prefill_items, prefill_tile
from .kv_views import kv_views
from .page_table import PageTable
from .plan import AttentionPlan
from .run_op import launch
from .variants import AttentionVariant
from .wrapper import PlannedWrapper, finish_lse, refuse_run_extras

__all__ = [
    "BatchPrefillWithPagedKVCacheWrapper",
    "BatchPrefillWithRaggedKVCacheWrapper",
    "single_prefill_with_kv_cache",
]


def single_prefill_with_kv_cache(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 scale_q=None, scale_k=None, scale_v=None, o_dtype=None,
                                 custom_mask: torch.Tensor | None = None,
                                 packed_custom_mask=None, causal: bool = False,
                                 kv_layout: str = "NHD", pos_encoding_mode: str = "NONE",
                                 use_fp16_qk_reduction: bool = False,
                                 sm_scale: float | None = None, window_left: int = -1,
                                 logits_soft_cap: float | None = None, rope_scale=None,
                                 rope_theta=None, backend: str = "auto",
                                 return_lse: bool = False, kv_cache_sf=None,
                                 k_scale: float | None = None, v_scale: float | None = None, *,
                                 variant: AttentionVariant | None = None, variant_args=()):
    """Attention of one request's query tokens over its KV.

    Parameters
    ----------
    q : [qo_len, num_qo_heads, head_dim], fp16/bf16
    k, v : [kv_len, num_kv_heads, head_dim] (NHD) or [num_kv_heads, kv_len, head_dim] (HND)
    causal : query i (at KV position kv_len - qo_len + i) sees keys up to its own position
    custom_mask : bool [qo_len, kv_len] (True: attend); replaces ``causal`` (as in FlashInfer)
    o_dtype : the output's dtype (q's by default; fp16, bf16 or float32)
    k_scale, v_scale : the logits are multiplied by k_scale, the output by v_scale
    window_left, logits_soft_cap, sm_scale, return_lse, backend, variant, pos_encoding_mode,
        rope_scale, rope_theta : as in single_decode_with_kv_cache
    use_fp16_qk_reduction : accepted, no effect (flashkit accumulates q.k in float32)
    scale_q, scale_k, scale_v, packed_custom_mask, kv_cache_sf : refused unless None

    Returns
    -------
    o : [qo_len, num_qo_heads, head_dim] (and lse [qo_len, num_qo_heads] float32, base 2)
    """
    check_layout(kv_layout)
    check_rope(pos_encoding_mode, rope_scale, rope_theta)
    check_flag("use_fp16_qk_reduction", use_fp16_qk_reduction)
    refuse("no per-head fp8 scale tensors or NVFP4 scale factors; k_scale/v_scale are floats",
           scale_q=scale_q, scale_k=scale_k, scale_v=scale_v, kv_cache_sf=kv_cache_sf)
    refuse("pass the mask unpacked as a bool custom_mask", packed_custom_mask=packed_custom_mask)
    k_scale, v_scale = check_scale("k_scale", k_scale), check_scale("v_scale", v_scale)
    check_tensor("q", q, dtypes=KV_DTYPES, ndim=3, last_dim_contiguous=True)
    qo_len, heads, dim = q.shape
    o_dtype = out_dtype("o_dtype", o_dtype, q.dtype)
    kv_len, num_kv_heads = check_single_kv(q, k, v, kv_layout)
    if custom_mask is not None:
        check_tensor("custom_mask", custom_mask, dtypes=(torch.bool,), shape=(qo_len, kv_len),
                     device=q.device)
    window_left, soft_cap, sm_scale = check_scalars(window_left, logits_soft_cap, sm_scale, dim)
    backend = attn_backend(as_backend(backend), q.device)
    qo_ptr = np.array([0, qo_len], np.int64)
    lens = np.array([kv_len], np.int64)
    items, n = prefill_items(qo_ptr, lens, heads // num_kv_heads, dim, q.device)
    mask, mask_ptr = check_mask(custom_mask, qo_ptr, lens, q.device)
    plan = AttentionPlan(
        decode=False, paged=False, batch=1, nnz_qo=qo_len, num_qo_heads=heads,
        num_kv_heads=num_kv_heads, head_dim=dim, page_size=1, causal=bool(causal),
        window_left=window_left, soft_cap=soft_cap, sm_scale=sm_scale, q_dtype=q.dtype,
        kv_dtype=k.dtype, n_items=n, max_page=kv_len - 1, items=items,
        qo_indptr=int32(qo_ptr, q.device), kv_indptr=int32([0, 0], q.device),
        kv_indices=int32([0], q.device), kv_lens=int32(lens, q.device),
        merge_indptr=int32([0, 0], q.device), mask=mask,
        mask_indptr=None if mask is None else int32(mask_ptr, q.device), variant=variant)
    out = torch.empty((qo_len, heads, dim), dtype=o_dtype, device=q.device)
    lse = torch.empty((qo_len, heads), dtype=torch.float32, device=q.device)
    k4, v4 = kv_views(k, v, kv_layout)
    launch(plan, q, k4, v4, out, lse, torch.empty(0, dtype=torch.uint8, device=q.device), backend,
           variant_args, k_scale=k_scale)
    if v_scale != 1.0:  # linear in v: the prefill kernel writes o directly, so scale it after
        out.mul_(v_scale)
    return (out, lse) if return_lse else out


class _PrefillWrapper(PlannedWrapper):
    def _setup(self, float_workspace_buffer, kv_layout, use_cuda_graph, backend, bufs: dict,
               masks: dict, batch_buf: str, jit_args=None, jit_kwargs=None,
               variant_owns_mask=False):
        """``bufs``: the graph buffers by FlashInfer's names (qo_indptr first, then the KV
        indptr, then indices and last_page_len for a paged cache); max_batch is the length of
        ``batch_buf`` (minus 1 for an indptr)."""
        self._init_wrapper(float_workspace_buffer, kv_layout, backend, jit_args=jit_args,
                           jit_kwargs=jit_kwargs)
        refuse("a variant's mask is its mask snippet", variant_owns_mask=variant_owns_mask)
        if not use_cuda_graph:
            return
        for name, buf in bufs.items():
            check_graph_buffer(name, buf, self.device)
        max_batch = bufs[batch_buf].numel() - batch_buf.endswith("indptr_buf")
        (cm_name, cm), (mi_name, mi) = masks.items()
        if (cm is None) != (mi is None):
            raise ValueError(f"{cm_name} and {mi_name} go together (custom masks need both)")
        if cm is not None:
            check_graph_buffer(cm_name, cm, self.device, (torch.bool, torch.uint8), "bool")
            check_graph_buffer(mi_name, mi, self.device)
        for name, buf in {**bufs, mi_name: mi}.items():
            if name.endswith("indptr_buf") and buf is not None and buf.numel() != max_batch + 1:
                raise ValueError(f"{name} must have max_batch + 1 = {max_batch + 1} entries "
                                 f"(max_batch from {batch_buf}), got {buf.numel()}")
        self._graph = PrefillGraphBuffers(bufs, batch_buf, cm, mi)

    def _common(self, qo_indptr, num_qo_heads, num_kv_heads, head_dim, causal, window_left,
                logits_soft_cap, sm_scale, q_data_type, kv_data_type, variant, o_data_type=None,
                uniform_q_len=None):
        check_heads(num_qo_heads, num_kv_heads)
        head_dim = check_int("head_dim", head_dim, 1, MAX_HEAD_DIM)
        qo_ptr = check_indptr("qo_indptr", qo_indptr)
        window_left, soft_cap, sm_scale = check_scalars(window_left, logits_soft_cap, sm_scale,
                                                        head_dim)
        check_uniform_q_len(uniform_q_len, qo_ptr)
        q_dtype, kv_dtype = plan_dtypes(q_data_type, kv_data_type, None, KV_DTYPES)
        o_dtype = out_dtype("o_data_type", o_data_type, q_dtype)
        if variant is not None and not isinstance(variant, AttentionVariant):
            raise ValueError(f"variant must be an AttentionVariant, got {type(variant).__name__}")
        return dict(num_qo_heads=num_qo_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                    causal=bool(causal), window_left=window_left, soft_cap=soft_cap,
                    sm_scale=sm_scale, q_dtype=q_dtype, kv_dtype=kv_dtype, variant=variant,
                    o_dtype=o_dtype), qo_ptr

    def _finish(self, qo_ptr, kv_lens, custom_mask, kv_table, non_blocking, **kw):
        """The plan's items and index tensors: new device tensors, or in graph mode the fixed
        buffers (views at their start) refilled in place, kv_indptr/kv_indices included."""
        dev = self.device
        batch = kv_lens.size
        if qo_ptr.size != batch + 1:
            raise ValueError(f"qo_indptr must have batch + 1 = {batch + 1} entries (as the "
                             f"KV page table), got {qo_ptr.size}")
        group = kw["num_qo_heads"] // kw["num_kv_heads"]
        tile = prefill_tile(group, kw["head_dim"])
        mask, mask_ptr = check_mask(custom_mask, qo_ptr, kv_lens, dev)
        kw.update(decode=False, batch=batch, nnz_qo=int(qo_ptr[-1]))
        g = self._graph
        if g is None:
            cols, n = prefill_item_cols(qo_ptr, kv_lens, tile)
            return dict(kw, n_items=n, items=items_tensor(cols, dev),
                        qo_indptr=int32(qo_ptr, dev), kv_lens=int32(kv_lens, dev),
                        merge_indptr=int32([0], dev), mask=mask,
                        mask_indptr=None if mask is None else int32(mask_ptr, dev))
        n = g.fill(qo_ptr, kv_lens, group, tile, kv_table, mask, mask_ptr, non_blocking)
        return dict(kw, n_items=n, items=g.items, qo_indptr=g.qo_indptr[:batch + 1],
                    kv_indptr=g.indptr[:batch + 1], kv_indices=g.indices,
                    kv_lens=g.kv_lens[:batch], merge_indptr=g.merge_indptr,
                    mask=None if mask is None else g.mask,
                    mask_indptr=None if mask is None else g.mask_indptr, num_items=g.num_items)

    def _rows(self, q) -> int:
        """q's row count to expect: the planned nnz, or in graph mode up to max_tokens."""
        plan, g = self._plan, self._graph
        if plan is None:
            raise RuntimeError(f"{type(self).__name__}.run() called before plan()")
        if g is None:
            return plan.nnz_qo
        check_tensor("q", q, ndim=3)
        if not plan.nnz_qo <= q.shape[0] <= g.max_tokens:
            raise ValueError(f"q must have between {plan.nnz_qo} (the planned qo_indptr[-1]) and "
                             f"{g.max_tokens} (the use_cuda_graph capacity) rows, got "
                             f"{q.shape[0]}")
        return q.shape[0]

    def _run(self, q, k, v, out, lse, return_lse, variant_args, plan=None, q_scale=None,
             k_scale=None, v_scale=None, lse_base="log2"):
        plan = plan or self._plan
        k_scale = check_scale("q_scale", q_scale) * check_scale("k_scale", k_scale)
        v_scale = check_scale("v_scale", v_scale)
        out, lse = check_outputs(plan, q, out, lse)
        if self._graph is not None:
            # The padding items cover rows [nnz, max_tokens): stop them at q's last row. A
            # device op on fixed buffers, so it is captured and replayed with the launch.
            torch.clamp(self._graph.q_end, max=q.shape[0], out=self._graph.items[2])
        launch(plan, q, k, v, out, lse, self._workspace, self._backend, variant_args,
               k_scale=k_scale)
        if v_scale != 1.0:  # linear in v: the prefill kernel writes o directly, so scale it after
            out.mul_(v_scale)
        lse = finish_lse(lse, lse_base)
        return (out, lse) if return_lse else out


class BatchPrefillWithPagedKVCacheWrapper(PagedPrefillForward, _PrefillWrapper):
    """Batched prefill over a paged KV cache (FlashInfer's wrapper of the same name).

    plan(qo_indptr, paged_kv_indptr, paged_kv_indices, paged_kv_last_page_len, num_qo_heads,
    num_kv_heads, head_dim_qk, page_size, causal=False, ...) then run(q, paged_kv_cache):
    q [qo_indptr[-1], num_qo_heads, head_dim] -> o of q's shape (and lse [nnz, heads]).
    ``custom_mask``: bool, each request's [qo_len, kv_len] mask flattened and concatenated.

    use_cuda_graph=True (FlashInfer's contract) fixes run()'s launch so that it can be captured
    once and replayed after any later plan(): plan() copies into the int32 device buffers
    qo_indptr_buf and paged_kv_indptr_buf ([max_batch + 1]), paged_kv_indices_buf
    ([max_pages]) and paged_kv_last_page_len_buf ([max_batch]), plus custom_mask_buf (bool or
    uint8, one element per mask entry) and mask_indptr_buf ([max_batch + 1]) for custom masks.
    Capacity: any batch up to max_batch (FlashInfer: exactly the first plan's) and up to
    ``max_tokens`` = the first plan's qo_indptr[-1] query tokens (FlashInfer's rule: plan the
    largest batch first); the work-item table has ceil(max_tokens / tile) + max_batch slots
    (tile: query tokens per item, max(1, 64 // GQA group); the group must stay the first
    plan's). run() then takes q with between qo_indptr[-1] and max_tokens rows, rows past the
    plan's giving o = 0 and lse = -inf: capture it with q/out of max_tokens rows. The torch
    backend runs such plans but reads the page table on the host, so it cannot be captured.
    """

    def __init__(self, float_workspace_buffer: torch.Tensor, kv_layout: str = "NHD",
                 use_cuda_graph: bool = False, qo_indptr_buf: torch.Tensor | None = None,
                 paged_kv_indptr_buf: torch.Tensor | None = None,
                 paged_kv_indices_buf: torch.Tensor | None = None,
                 paged_kv_last_page_len_buf: torch.Tensor | None = None,
                 custom_mask_buf: torch.Tensor | None = None,
                 mask_indptr_buf: torch.Tensor | None = None, backend: str = "auto",
                 jit_args=None, jit_kwargs=None, variant_owns_mask: bool = False,
                 max_total_num_rows: int | None = None):
        refuse("the use_cuda_graph capacity is the first plan's qo_indptr[-1]",
               max_total_num_rows=max_total_num_rows)
        self._setup(float_workspace_buffer, kv_layout, use_cuda_graph, backend,
                    dict(qo_indptr_buf=qo_indptr_buf, paged_kv_indptr_buf=paged_kv_indptr_buf,
                         paged_kv_indices_buf=paged_kv_indices_buf,
                         paged_kv_last_page_len_buf=paged_kv_last_page_len_buf),
                    dict(custom_mask_buf=custom_mask_buf, mask_indptr_buf=mask_indptr_buf),
                    "paged_kv_last_page_len_buf", jit_args, jit_kwargs, variant_owns_mask)

    def plan(self, qo_indptr: torch.Tensor, paged_kv_indptr: torch.Tensor,
             paged_kv_indices: torch.Tensor, paged_kv_last_page_len: torch.Tensor,
             num_qo_heads: int, num_kv_heads: int, head_dim_qk: int, page_size: int,
             head_dim_vo: int | None = None, custom_mask: torch.Tensor | None = None,
             packed_custom_mask=None, causal: bool = False, pos_encoding_mode: str = "NONE",
             use_fp16_qk_reduction: bool = False, sm_scale: float | None = None,
             window_left: int = -1, logits_soft_cap: float | None = None, rope_scale=None,
             rope_theta=None, q_data_type="float16", kv_data_type=None, o_data_type=None,
             non_blocking: bool = True, prefix_len_ptr=None, token_pos_in_items_ptr=None,
             token_pos_in_items_len: int = 0, max_item_len_ptr=None, seq_lens=None,
             seq_lens_q=None, block_tables=None, max_token_per_sequence=None,
             max_sequence_kv=None, fixed_split_size: int | None = None,
             disable_split_kv: bool = False, uniform_q_len: int | None = None,
             use_token_head_sf: bool = False, *,
             variant: AttentionVariant | None = None) -> None:
        """FlashInfer's plan(); its arguments flashkit has no use for are checked or refused
        (docs/attention.md, "FlashInfer compatibility")."""
        check_prefill_extras(
            head_dim_qk, head_dim_vo, packed_custom_mask, pos_encoding_mode,
            use_fp16_qk_reduction, rope_scale, rope_theta, token_pos_in_items_len,
            fixed_split_size, disable_split_kv, prefix_len_ptr=prefix_len_ptr,
            token_pos_in_items_ptr=token_pos_in_items_ptr, max_item_len_ptr=max_item_len_ptr,
            seq_lens=seq_lens, seq_lens_q=seq_lens_q, block_tables=block_tables,
            max_token_per_sequence=max_token_per_sequence, max_sequence_kv=max_sequence_kv,
            use_token_head_sf=use_token_head_sf)
        page_size = check_int("page_size", page_size, 1)
        kw, qo_ptr = self._common(qo_indptr, num_qo_heads, num_kv_heads, head_dim_qk, causal,
                                  window_left, logits_soft_cap, sm_scale, q_data_type,
                                  kv_data_type, variant, o_data_type, uniform_q_len)
        table = PageTable.check(
            paged_kv_indptr, paged_kv_indices, paged_kv_last_page_len, page_size,
            ("paged_kv_indptr", "paged_kv_indices", "paged_kv_last_page_len"))
        kv = {} if self._graph is not None else table.copies(self.device)
        self._plan = AttentionPlan(
            paged=True, page_size=page_size, max_page=table.max_page, **kv,
            **self._finish(qo_ptr, table.kv_lens, custom_mask, table, non_blocking, **kw))

    begin_forward = plan

    def run(self, q: torch.Tensor, paged_kv_cache, *args, q_scale: float | None = None,
            k_scale: float | None = None, v_scale: float | None = None,
            out: torch.Tensor | None = None, lse: torch.Tensor | None = None,
            return_lse: bool = False, lse_base: str = "log2", lse_layout: str = "NH",
            enable_pdl: bool | None = None, window_left: int | None = None, sinks=None,
            kv_cache_sf=None, skip_softmax_threshold_scale_factor=None,
            use_fp16_softmax: bool | None = None, uses_spcompress=None, variant_args=()):
        """q [qo_indptr[-1], Hq, D] -> o (and lse [nnz, Hq] float32, base 2 unless
        lse_base='ln'). q_scale * k_scale multiply the logits, v_scale the output;
        window_left overrides the planned window for this run; ``args`` are variant_args;
        enable_pdl is accepted with no effect."""
        rows = self._rows(q)
        check_lse_form(lse_base, lse_layout)
        check_flag("enable_pdl", enable_pdl, allow_none=True)
        refuse_run_extras(sinks=sinks, kv_cache_sf=kv_cache_sf,
                          skip_softmax_threshold_scale_factor=skip_softmax_threshold_scale_factor,
                          use_fp16_softmax=use_fp16_softmax, uses_spcompress=uses_spcompress)
        plan = self._run_plan(window_left)
        k, v = check_run_inputs(plan, q, paged_kv_cache, self._kv_layout, self.device,
                                (rows, plan.num_qo_heads, plan.head_dim))
        return self._run(q, k, v, out, lse, return_lse, variant_args_of(args, variant_args),
                         plan, q_scale, k_scale, v_scale, lse_base)

    run_return_lse = functools.partialmethod(run, return_lse=True)


class BatchPrefillWithRaggedKVCacheWrapper(RaggedPrefillForward, _PrefillWrapper):
    """Batched prefill over ragged (unpaged) K/V (FlashInfer's wrapper of the same name).

    plan(qo_indptr, kv_indptr, num_qo_heads, num_kv_heads, head_dim_qk, causal=False, ...) then
    run(q, k, v): q [qo_indptr[-1], Hq, D], k/v [kv_indptr[-1], Hk, D] (NHD) or
    [Hk, kv_indptr[-1], D] (HND) -> o of q's shape (and lse).

    use_cuda_graph=True: as the paged wrapper's, with the int32 buffers qo_indptr_buf and
    kv_indptr_buf ([max_batch + 1] each; max_batch from qo_indptr_buf), and custom_mask_buf /
    mask_indptr_buf for custom masks. run() then also takes k/v with more than kv_indptr[-1]
    tokens (capture it with k/v of the largest KV).
    """

    def __init__(self, float_workspace_buffer: torch.Tensor, kv_layout: str = "NHD",
                 use_cuda_graph: bool = False, qo_indptr_buf: torch.Tensor | None = None,
                 kv_indptr_buf: torch.Tensor | None = None,
                 custom_mask_buf: torch.Tensor | None = None,
                 mask_indptr_buf: torch.Tensor | None = None, backend: str = "auto",
                 jit_args=None, jit_kwargs=None, variant_owns_mask: bool = False):
        self._setup(float_workspace_buffer, kv_layout, use_cuda_graph, backend,
                    dict(qo_indptr_buf=qo_indptr_buf, kv_indptr_buf=kv_indptr_buf),
                    dict(custom_mask_buf=custom_mask_buf, mask_indptr_buf=mask_indptr_buf),
                    "qo_indptr_buf", jit_args, jit_kwargs, variant_owns_mask)

    def plan(self, qo_indptr: torch.Tensor, kv_indptr: torch.Tensor, num_qo_heads: int,
             num_kv_heads: int, head_dim_qk: int, head_dim_vo: int | None = None,
             custom_mask: torch.Tensor | None = None, packed_custom_mask=None,
             causal: bool = False, pos_encoding_mode: str = "NONE",
             use_fp16_qk_reduction: bool = False, window_left: int = -1,
             logits_soft_cap: float | None = None, sm_scale: float | None = None,
             rope_scale=None, rope_theta=None, q_data_type="float16", kv_data_type=None,
             o_data_type=None, non_blocking: bool = True, prefix_len_ptr=None,
             token_pos_in_items_ptr=None, token_pos_in_items_len: int = 0,
             max_item_len_ptr=None, fixed_split_size: int | None = None,
             disable_split_kv: bool = False, seq_lens=None, seq_lens_q=None,
             max_token_per_sequence=None, max_sequence_kv=None, v_indptr=None, o_indptr=None,
             qo_indptr_cpu=None, kv_indptr_cpu=None, uniform_q_len: int | None = None,
             use_token_head_sf: bool = False, *,
             variant: AttentionVariant | None = None) -> None:
        """FlashInfer's plan(); qo_indptr_cpu/kv_indptr_cpu (host copies) must match the
        indptrs, the arguments flashkit has no use for are checked or refused."""
        check_prefill_extras(
            head_dim_qk, head_dim_vo, packed_custom_mask, pos_encoding_mode,
            use_fp16_qk_reduction, rope_scale, rope_theta, token_pos_in_items_len,
            fixed_split_size, disable_split_kv, prefix_len_ptr=prefix_len_ptr,
            token_pos_in_items_ptr=token_pos_in_items_ptr, max_item_len_ptr=max_item_len_ptr,
            seq_lens=seq_lens, seq_lens_q=seq_lens_q,
            max_token_per_sequence=max_token_per_sequence, max_sequence_kv=max_sequence_kv,
            v_indptr=v_indptr, o_indptr=o_indptr, use_token_head_sf=use_token_head_sf)
        kw, qo_ptr = self._common(qo_indptr, num_qo_heads, num_kv_heads, head_dim_qk, causal,
                                  window_left, logits_soft_cap, sm_scale, q_data_type,
                                  kv_data_type, variant, o_data_type, uniform_q_len)
        kv_ptr = check_indptr("kv_indptr", kv_indptr)
        check_host_indptr("qo_indptr_cpu", qo_indptr_cpu, qo_indptr)
        check_host_indptr("kv_indptr_cpu", kv_indptr_cpu, kv_indptr)
        dev = self.device
        kv = {} if self._graph is not None else dict(kv_indptr=int32(kv_ptr, dev),
                                                     kv_indices=int32([0], dev))
        self._plan = AttentionPlan(
            paged=False, page_size=1, max_page=int(kv_ptr[-1]) - 1, **kv,
            **self._finish(qo_ptr, np.diff(kv_ptr), custom_mask, kv_ptr, non_blocking, **kw))

    begin_forward = plan

    def run(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args,
            q_scale: float | None = None, k_scale: float | None = None,
            v_scale: float | None = None, o_scale=None, out: torch.Tensor | None = None,
            lse: torch.Tensor | None = None, return_lse: bool = False, lse_base: str = "log2",
            lse_layout: str = "NH", enable_pdl: bool | None = None, kv_cache_sf=None,
            variant_args=()):
        """As the paged wrapper's run(), with k/v ragged; o_scale (fp8 output) is refused."""
        rows = self._rows(q)
        check_lse_form(lse_base, lse_layout)
        check_flag("enable_pdl", enable_pdl, allow_none=True)
        refuse_run_extras(o_scale=o_scale, kv_cache_sf=kv_cache_sf)
        plan = self._plan
        dev = self.device
        check_tensor("q", q, dtypes=(plan.q_dtype,), shape=(rows, plan.num_qo_heads,
                     plan.head_dim), device=dev, last_dim_contiguous=True)
        nnz_kv, tok = plan.max_page + 1, int(self._kv_layout == "HND")
        if self._graph is not None and isinstance(k, torch.Tensor) and k.dim() == 3:
            nnz_kv = max(nnz_kv, k.shape[tok])  # graph mode: spare tokens past the plan's
        shape = ((nnz_kv, plan.num_kv_heads, plan.head_dim) if tok == 0
                 else (plan.num_kv_heads, nnz_kv, plan.head_dim))
        for name, t in (("k", k), ("v", v)):
            check_tensor(name, t, dtypes=(plan.kv_dtype,), shape=shape, device=dev,
                         last_dim_contiguous=True)
        k4, v4 = kv_views(k, v, self._kv_layout)
        return self._run(q, k4, v4, out, lse, return_lse, variant_args_of(args, variant_args),
                         None, q_scale, k_scale, v_scale, lse_base)

    run_return_lse = functools.partialmethod(run, return_lse=True)
