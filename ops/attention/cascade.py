"""MultiLevelCascadeAttentionWrapper: attention over shared-prefix levels (FlashInfer's).

Level 0 usually holds a prefix shared by many requests (its qo_indptr groups their queries into
one "request"), later levels the unique suffixes. Each level runs as a batched paged prefill
returning (o, lse); the levels are combined with merge_state_in_place, which is exact: attention
over the union of the levels' keys. The prefix's KV is read once per level-0 group instead of
once per request.
"""
from __future__ import annotations

import torch

from .._common.checks import check_int, check_tensor
from .compat import check_flag, check_rope
from .merge_state import merge_state_in_place
from .prefill import BatchPrefillWithPagedKVCacheWrapper

__all__ = ["MultiLevelCascadeAttentionWrapper"]


class MultiLevelCascadeAttentionWrapper:
    """Parameters
    ----------
    num_levels : int >= 1
    float_workspace_buffer : device tensor (shared by the levels)
    kv_layout : "NHD" | "HND"
    backend : "auto" | "triton" | "torch" (the levels' prefill and the merge)

    plan(qo_indptr_arr, paged_kv_indptr_arr, paged_kv_indices_arr, paged_kv_last_page_len,
    num_qo_heads, num_kv_heads, head_dim, page_size, causal=False, ...): one page table per
    level (lists of num_levels int32 tensors); every level's qo_indptr ends at the same nnz.
    ``causal`` applies to the last level only (queries follow the whole shared prefix).
    run(q, paged_kv_cache) -> o [nnz, num_qo_heads, head_dim] (and the merged lse).
    """

    def __init__(self, num_levels: int, float_workspace_buffer: torch.Tensor,
                 kv_layout: str = "NHD", use_cuda_graph: bool = False,
                 qo_indptr_buf_arr=None, paged_kv_indptr_buf_arr=None,
                 paged_kv_indices_buf_arr=None, paged_kv_last_page_len_buf_arr=None, *,
                 backend: str = "auto"):
        self._num_levels = check_int("num_levels", num_levels, 1)
        check_tensor("float_workspace_buffer", float_workspace_buffer)
        check_flag("use_cuda_graph", use_cuda_graph)
        # The *_buf_arr (one graph buffer per level) are read only with use_cuda_graph=True,
        # ignored otherwise as in FlashInfer.
        if use_cuda_graph:
            raise ValueError("use_cuda_graph=True is not supported for the cascade wrapper yet; "
                             "pass use_cuda_graph=False")
        self._levels = [BatchPrefillWithPagedKVCacheWrapper(float_workspace_buffer, kv_layout,
                                                            backend=backend)
                        for _ in range(num_levels)]
        self._backend = backend
        self._planned = False

    def plan(self, qo_indptr_arr, paged_kv_indptr_arr, paged_kv_indices_arr,
             paged_kv_last_page_len, num_qo_heads: int, num_kv_heads: int, head_dim: int,
             page_size: int, causal: bool = False, pos_encoding_mode: str = "NONE",
             use_fp16_qk_reduction: bool = False, sm_scale: float | None = None,
             window_left: int = -1, logits_soft_cap: float | None = None, rope_scale=None,
             rope_theta=None, q_data_type="float16", kv_data_type=None) -> None:
        """``paged_kv_last_page_len``: a list of num_levels tensors (FlashInfer's name, without
        the _arr of its siblings). pos_encoding_mode/rope_*/use_fp16_qk_reduction as in the
        prefill wrapper's plan()."""
        check_rope(pos_encoding_mode, rope_scale, rope_theta)
        check_flag("use_fp16_qk_reduction", use_fp16_qk_reduction)
        arrs = dict(qo_indptr_arr=qo_indptr_arr, paged_kv_indptr_arr=paged_kv_indptr_arr,
                    paged_kv_indices_arr=paged_kv_indices_arr,
                    paged_kv_last_page_len=paged_kv_last_page_len)
        for name, arr in arrs.items():
            if not isinstance(arr, (list, tuple)) or len(arr) != self._num_levels:
                raise ValueError(f"{name} must be a list of num_levels = {self._num_levels} "
                                 f"tensors, got {type(arr).__name__} of "
                                 f"{len(arr) if isinstance(arr, (list, tuple)) else '?'}")
        nnz = None
        for lvl, w in enumerate(self._levels):
            qo = qo_indptr_arr[lvl]
            w.plan(qo, paged_kv_indptr_arr[lvl], paged_kv_indices_arr[lvl],
                   paged_kv_last_page_len[lvl], num_qo_heads, num_kv_heads, head_dim,
                   page_size, causal=causal and lvl == self._num_levels - 1,
                   window_left=window_left,
                   logits_soft_cap=logits_soft_cap, q_data_type=q_data_type,
                   kv_data_type=kv_data_type, sm_scale=sm_scale)
            if nnz is not None and w._plan.nnz_qo != nnz:
                raise ValueError(f"qo_indptr_arr[{lvl}] ends at {w._plan.nnz_qo} queries, level "
                                 f"0 at {nnz}: every level must cover the same queries")
            nnz = w._plan.nnz_qo
        self._planned = True

    begin_forward = plan

    def reset_workspace_buffer(self, float_workspace_buffer: torch.Tensor,
                               int_workspace_buffers) -> None:
        """Swap the levels' workspace (FlashInfer's): one int workspace per level, checked and
        unused as in the batch wrappers."""
        if not isinstance(int_workspace_buffers, (list, tuple)) \
                or len(int_workspace_buffers) != self._num_levels:
            raise ValueError(f"int_workspace_buffers must be a list of num_levels = "
                             f"{self._num_levels} tensors")
        for w, buf in zip(self._levels, int_workspace_buffers):
            w.reset_workspace_buffer(float_workspace_buffer, buf)

    def run(self, q: torch.Tensor, paged_kv_cache, *, return_lse: bool = False):
        if not self._planned:
            raise RuntimeError("MultiLevelCascadeAttentionWrapper.run() called before plan()")
        out, lse = self._levels[0].run(q, paged_kv_cache, return_lse=True)
        for w in self._levels[1:]:
            o_l, lse_l = w.run(q, paged_kv_cache, return_lse=True)
            merge_state_in_place(out, lse, o_l, lse_l, backend=self._backend)
        return (out, lse) if return_lse else out

    forward = run

