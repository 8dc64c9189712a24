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

    plan(qo_indptr_arr, paged_kv_indptr_arr, paged_kv_indices_arr, paged_kv_last_page_len_arr,
    num_qo_heads, num_kv_heads, head_dim, page_size, causal=False, ...): one page table per
    level (lists of num_levels int32 tensors); every level's qo_indptr ends at the same nnz.
    ``causal`` applies to the last level only (queries follow the whole shared prefix).
    run(q, paged_kv_cache) -> o [nnz, num_qo_heads, head_dim] (and the merged lse).
    """

    def __init__(self, num_levels: int, float_workspace_buffer: torch.Tensor,
                 kv_layout: str = "NHD", use_cuda_graph: bool = False, *,
                 backend: str = "auto"):
        self._num_levels = check_int("num_levels", num_levels, 1)
        check_tensor("float_workspace_buffer", float_workspace_buffer)
        if use_cuda_graph:  # the levels would need FlashInfer's per-level buffers (not taken)
            raise ValueError("use_cuda_graph=True is not supported for the cascade wrapper yet; "
                             "pass use_cuda_graph=False")
        self._levels = [BatchPrefillWithPagedKVCacheWrapper(float_workspace_buffer, kv_layout,
                                                            backend=backend)
                        for _ in range(num_levels)]
        self._backend = backend
        self._planned = False

    def plan(self, qo_indptr_arr, paged_kv_indptr_arr, paged_kv_indices_arr,
             paged_kv_last_page_len_arr, num_qo_heads: int, num_kv_heads: int, head_dim: int,
             page_size: int, causal: bool = False, *, window_left: int = -1,
             logits_soft_cap: float | None = None, q_data_type=torch.float16, kv_data_type=None,
             sm_scale: float | None = None) -> None:
        arrs = dict(qo_indptr_arr=qo_indptr_arr, paged_kv_indptr_arr=paged_kv_indptr_arr,
                    paged_kv_indices_arr=paged_kv_indices_arr,
                    paged_kv_last_page_len_arr=paged_kv_last_page_len_arr)
        for name, arr in arrs.items():
            if not isinstance(arr, (list, tuple)) or len(arr) != self._num_levels:
                raise ValueError(f"{name} must be a list of num_levels = {self._num_levels} "
                                 f"tensors, got {type(arr).__name__} of "
                                 f"{len(arr) if isinstance(arr, (list, tuple)) else '?'}")
        nnz = None
        for lvl, w in enumerate(self._levels):
            qo = qo_indptr_arr[lvl]
            w.plan(qo, paged_kv_indptr_arr[lvl], paged_kv_indices_arr[lvl],
                   paged_kv_last_page_len_arr[lvl], num_qo_heads, num_kv_heads, head_dim,
                   page_size, causal and lvl == self._num_levels - 1, window_left=window_left,
                   logits_soft_cap=logits_soft_cap, q_data_type=q_data_type,
                   kv_data_type=kv_data_type, sm_scale=sm_scale)
            if nnz is not None and w._plan.nnz_qo != nnz:
                raise ValueError(f"qo_indptr_arr[{lvl}] ends at {w._plan.nnz_qo} queries, level "
                                 f"0 at {nnz}: every level must cover the same queries")
            nnz = w._plan.nnz_qo
        self._planned = True

    begin_forward = plan

    def run(self, q: torch.Tensor, paged_kv_cache, *, return_lse: bool = False):
        if not self._planned:
            raise RuntimeError("MultiLevelCascadeAttentionWrapper.run() called before plan()")
        out, lse = self._levels[0].run(q, paged_kv_cache, return_lse=True)
        for w in self._levels[1:]:
            o_l, lse_l = w.run(q, paged_kv_cache, return_lse=True)
            merge_state_in_place(out, lse, o_l, lse_l, backend=self._backend)
        return (out, lse) if return_lse else out

    forward = run

