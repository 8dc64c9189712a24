"""AttentionPlan: what a wrapper's plan() computed on the host, its index tensors on the device."""
from __future__ import annotations

import dataclasses

import torch

from .variants import AttentionVariant


@dataclasses.dataclass(eq=False)
class AttentionPlan:
    """What plan() computed on the host, with its index tensors already on the device.

    items int32 [6, n_items_pad]: request, q_start, q_end, kv_start, kv_end, output row.
    Decode items write partial states at rows 0..n_items-1 of the workspace, merged per request
    over ``merge_indptr``; prefill items write the output rows directly.

    ``num_items`` (int32 [1] on the device) marks a CUDA-graph plan: run() launches the fixed
    grid of ``items.shape[1]`` programs and those at or past ``num_items[0]`` exit at once.
    """

    decode: bool
    paged: bool
    batch: int
    nnz_qo: int
    num_qo_heads: int
    num_kv_heads: int
    head_dim: int
    page_size: int
    causal: bool
    window_left: int
    soft_cap: float
    sm_scale: float
    q_dtype: torch.dtype | None
    kv_dtype: torch.dtype | None
    n_items: int
    max_page: int  # highest page (paged) or token (ragged) index the page table reads
    items: torch.Tensor
    qo_indptr: torch.Tensor
    kv_indptr: torch.Tensor
    kv_indices: torch.Tensor
    kv_lens: torch.Tensor
    merge_indptr: torch.Tensor
    mask: torch.Tensor | None = None
    mask_indptr: torch.Tensor | None = None
    variant: AttentionVariant | None = None
    num_items: torch.Tensor | None = None
    o_dtype: torch.dtype | None = None  # the output's dtype (None: q's)

    @property
    def n_programs(self) -> int:
        """The attention kernel's grid (x KV heads): the fixed capacity of a CUDA-graph plan,
        the real item count otherwise."""
        return self.items.shape[1] if self.num_items is not None else self.n_items

    def workspace_bytes(self) -> int:
        """Partial outputs and LSEs of the split-KV items (float32)."""
        if not self.decode:
            return 0
        return self.items.shape[1] * self.num_qo_heads * (self.head_dim + 1) * 4
