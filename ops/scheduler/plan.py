"""SplitKVPlan: what a split-KV planner returns (the C++ one in planner.py and the Python one in
reference.py alike)."""
from __future__ import annotations

import dataclasses

import torch

__all__ = ["SplitKVPlan"]


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class SplitKVPlan:
    """A split-KV plan: work items (KV chunks of requests) and their assignment to workers.

    All tensors are on the CPU; ``n_items`` is ``num_items``, ``batch`` is ``batch_size``.

    Attributes
    ----------
    chunk_size : int
        Tokens per chunk (a multiple of the page size); the last chunk of a request may be shorter.
    request, kv_start, kv_end : int32 [n_items]
        Item ``j`` covers tokens ``kv_start[j]:kv_end[j]`` of request ``request[j]``. Items are in
        request order, then position order.
    merge_indptr : int32 [batch + 1]
        The items of request ``i`` are ``merge_indptr[i]:merge_indptr[i + 1]``: where its partial
        outputs go before ``merge_states``.
    worker_indptr : int32 [num_workers + 1], worker_items : int32 [n_items]
        CSR: worker ``w`` runs items ``worker_items[worker_indptr[w]:worker_indptr[w + 1]]``, in
        the order they were assigned (cost descending).
    worker_load : int64 [num_workers]
        Sum of the costs ``(kv_end - kv_start) + item_overhead`` of each worker's items.
    """

    chunk_size: int
    request: torch.Tensor
    kv_start: torch.Tensor
    kv_end: torch.Tensor
    merge_indptr: torch.Tensor
    worker_indptr: torch.Tensor
    worker_items: torch.Tensor
    worker_load: torch.Tensor

    @property
    def num_items(self) -> int:
        return self.request.shape[0]

    @property
    def batch_size(self) -> int:
        return self.merge_indptr.shape[0] - 1

    @property
    def num_workers(self) -> int:
        return self.worker_load.shape[0]

    def __repr__(self) -> str:
        load = self.worker_load
        busy = int((self.worker_indptr[1:] > self.worker_indptr[:-1]).sum())
        max_load = int(load.max()) if load.numel() else 0
        mean_load = float(load.double().mean()) if load.numel() else 0.0
        return (f"SplitKVPlan(batch={self.batch_size}, items={self.num_items}, "
                f"chunk_size={self.chunk_size}, workers={busy}/{self.num_workers} busy, "
                f"max_load={max_load}, mean_load={mean_load:.1f})")
