"""Attention of the engine's model over its KV pool through flashkit's paged wrappers.

The pool is one tensor per attention layer, ``[num_slots, n_heads, head_dim]``, read as pages of
one token (NHD, page_size 1): a request's KV slot ids, in position order, are its page table,
so the prefix cache's radix edges (slot ids) are passed to the kernels as they are and an edge
split never copies KV. A step of one query token uses BatchDecodeWithPagedKVCacheWrapper, a
longer prefill BatchPrefillWithPagedKVCacheWrapper (causal: query i sits at KV position
kv_len - qo_len + i). The wrappers take fp16/bf16 only, so K, V and q are bf16 here; scores and
the softmax accumulate in float32 inside the kernels. The wrappers are called with keyword
arguments only (the names are FlashInfer's, which flashkit's signatures follow).
"""
from __future__ import annotations

import torch

__all__ = ["PagedAttention", "ATTN_DTYPE", "BACKENDS"]

ATTN_DTYPE = torch.bfloat16
BACKENDS = ("torch", "triton")
_WORKSPACE_BYTES = 8 << 20  # split-KV partials: items x heads x (head_dim + 1) x 4, ample here


class PagedAttention:
    """One planned attention call per forward, run for every attention layer.

    Parameters
    ----------
    n_heads, head_dim : of the model's attention layers (multi-head: as many KV heads)
    backend : "torch" (the reference path) | "triton" (its kernels; the interpreter on CPU)
    """

    def __init__(self, n_heads: int, head_dim: int, backend: str = "torch"):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        import flashkit

        ws = torch.empty(_WORKSPACE_BYTES, dtype=torch.uint8)
        self.h, self.dh, self.backend = n_heads, head_dim, backend
        self._prefill = flashkit.BatchPrefillWithPagedKVCacheWrapper(
            float_workspace_buffer=ws, kv_layout="NHD", backend=backend)
        self._decode = flashkit.BatchDecodeWithPagedKVCacheWrapper(
            float_workspace_buffer=ws, kv_layout="NHD", backend=backend)
        self._wrapper = None

    def plan(self, slots: torch.Tensor, num_queries: int) -> None:
        """Plan for ``num_queries`` new tokens at the end of the KV in ``slots`` (int64
        [kv_len], the pool slot of every position)."""
        kv_len = int(slots.numel())
        indptr = torch.tensor([0, kv_len], dtype=torch.int32)
        indices = slots.to(torch.int32)
        last = torch.ones(1, dtype=torch.int32)
        if num_queries == 1:
            self._decode.plan(indptr=indptr, indices=indices, last_page_len=last,
                              num_qo_heads=self.h, num_kv_heads=self.h, head_dim=self.dh,
                              page_size=1, q_data_type=ATTN_DTYPE, kv_data_type=ATTN_DTYPE)
            self._wrapper = self._decode
        else:
            self._prefill.plan(qo_indptr=torch.tensor([0, num_queries], dtype=torch.int32),
                               paged_kv_indptr=indptr, paged_kv_indices=indices,
                               paged_kv_last_page_len=last, num_qo_heads=self.h,
                               num_kv_heads=self.h, head_dim_qk=self.dh, page_size=1,
                               causal=True, q_data_type=ATTN_DTYPE, kv_data_type=ATTN_DTYPE)
            self._wrapper = self._prefill

    def run(self, q: torch.Tensor, pool_k: torch.Tensor, pool_v: torch.Tensor) -> torch.Tensor:
        """q [num_queries, n_heads, head_dim] (any float dtype) over one layer's pool halves
        [num_slots, n_heads, head_dim] (bf16) -> o of q's shape and dtype."""
        cache = (pool_k.unsqueeze(1), pool_v.unsqueeze(1))  # [pages, page_size 1, H, D]
        o = self._wrapper.run(q=q.to(ATTN_DTYPE).contiguous(), paged_kv_cache=cache)
        return o.to(q.dtype)
