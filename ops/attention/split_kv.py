"""Split-KV work items of decode: chunks of every request's KV balanced over the workers by
the planner (ops/scheduler), and the fixed buffers a use_cuda_graph=True decode wrapper plans
into (the buffer checks and in-place copies at the end serve prefill's graph buffers too).

Work-item table (int32 [6, n]): request, q_start, q_end, kv_start, kv_end, output row, in the
order the programs launch (longest first).
"""
from __future__ import annotations

import numpy as np
import torch

from .._validate import check_tensor
from ..scheduler import plan_split_kv
from ._plan import INDEX_DTYPES, int32, items_tensor

__all__ = ["default_workers", "split_kv_items", "split_kv_plan", "GraphBuffers",
           "check_graph_buffer", "check_graph_fits", "copy_into"]


def default_workers(device: torch.device, num_kv_heads: int) -> int:
    """Work items to balance over: two resident programs per SM, shared by the KV heads (each
    item is launched once per KV head). On the CPU (interpreter, tests) a fixed 8."""
    if device.type != "cuda":
        return 8
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, 2 * sms // num_kv_heads)


def split_kv_items(kv_lens: np.ndarray, workers: int, page_size: int, min_chunk_tokens: int,
                   max_items: int | None = None) -> tuple[list[np.ndarray], np.ndarray, int]:
    """Decode work items on the host: (the 6 columns of the items table, launched longest
    first; merge_indptr int32 [batch + 1]; n_items). With ``max_items`` (a CUDA-graph plan's
    fixed capacity, at least the batch size), chunks are lengthened (min_chunk_tokens doubled)
    until the plan fits: at worst one item per non-empty request."""
    while True:
        sp = plan_split_kv(kv_lens, workers, page_size=page_size, min_chunk_tokens=min_chunk_tokens)
        if max_items is None or sp.num_items <= max_items:
            break
        min_chunk_tokens *= 2
    order = sp.worker_items.numpy().astype(np.int64)  # LPT order: cost descending
    n = sp.num_items
    cols = [sp.request.numpy()[order], np.zeros(n), np.ones(n), sp.kv_start.numpy()[order],
            sp.kv_end.numpy()[order], order]
    return cols, sp.merge_indptr.numpy(), n


def split_kv_plan(kv_lens: np.ndarray, device, num_kv_heads, page_size, num_workers,
                  min_chunk_tokens) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Decode work items (on ``device``): one per KV chunk, launched longest first."""
    workers = num_workers or default_workers(torch.device(device), num_kv_heads)
    cols, merge_indptr, n = split_kv_items(kv_lens, workers, page_size, min_chunk_tokens)
    return items_tensor(cols, device), int32(merge_indptr, device), n


class GraphBuffers:
    """The fixed device buffers of a use_cuda_graph=True wrapper. The page-table buffers are the
    user's (FlashInfer's contract); the work-item table, its device-side count, merge_indptr,
    qo_indptr and kv_lens are allocated at the first plan(), sized for ``max_batch`` requests
    and ``max_items = max_batch + 2 * num_workers`` work items (num_workers of that first
    plan), and every later plan() copies into them in place."""

    def __init__(self, indptr, indices, last_page_len):
        self.indptr, self.indices, self.last_page_len = indptr, indices, last_page_len
        self.max_batch = last_page_len.numel()
        self.max_items = 0
        self.items = self.num_items = self.merge_indptr = self.qo_indptr = self.kv_lens = None

    def allocate(self, workers: int, device) -> None:
        self.max_items = self.max_batch + 2 * workers
        i32 = dict(dtype=torch.int32, device=device)
        self.items = torch.zeros((6, self.max_items), **i32)
        self.num_items = torch.zeros(1, **i32)
        self.merge_indptr = torch.zeros(self.max_batch + 1, **i32)
        self.qo_indptr = torch.arange(self.max_batch + 1, **i32)
        self.kv_lens = torch.zeros(self.max_batch, **i32)

    def fill(self, kv_lens: np.ndarray, indptr, indices, last_page_len, workers: int,
             page_size: int, min_chunk_tokens: int, non_blocking: bool) -> int:
        """Copy a plan into the buffers (allocating them at the first call); returns the
        number of work items. Requests past the batch are empty (merged to o = 0)."""
        batch = kv_lens.size
        n_pages = int(indptr[-1].item())
        check_graph_fits(batch, self.max_batch, "paged_kv_last_page_len_buffer", n_pages,
                         self.indices, "paged_kv_indices_buffer")
        if self.items is None:
            self.allocate(workers, self.indices.device)
        cols, merge_indptr, n = split_kv_items(kv_lens, workers, page_size, min_chunk_tokens,
                                               max_items=self.max_items)
        host = np.zeros((6, self.max_items), np.int32)
        for r, c in enumerate(cols):
            host[r, :n] = c
        pad = self.max_batch - batch
        copies = [
            (self.items, host), (self.num_items, np.array([n])),
            (self.merge_indptr, np.concatenate([merge_indptr, np.full(pad, n)])),
            (self.kv_lens, np.concatenate([kv_lens, np.zeros(pad)])),
            (self.indptr[:batch + 1], indptr), (self.indices[:n_pages], indices[:n_pages]),
            (self.last_page_len[:batch], last_page_len)]
        copy_into(copies, non_blocking)
        return n

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in (
            "indptr", "indices", "last_page_len", "items", "num_items", "merge_indptr",
            "qo_indptr", "kv_lens")}


def check_graph_buffer(name: str, buf, device, dtypes=INDEX_DTYPES, what="int32") -> None:
    """A use_cuda_graph=True buffer of the constructor: a contiguous 1-D tensor on ``device``."""
    if not isinstance(buf, torch.Tensor):
        raise ValueError(f"use_cuda_graph=True needs {name} (a 1-D {what} device tensor that "
                         f"plan() copies into)")
    check_tensor(name, buf, dtypes=dtypes, ndim=1, device=device)
    if not buf.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def check_graph_fits(batch: int, max_batch: int, batch_buf: str, n_pages: int | None = None,
                     indices=None, indices_buf: str = "") -> None:
    """A plan's batch and page count against the fixed buffers (ValueError naming them)."""
    if batch > max_batch:
        raise ValueError(f"use_cuda_graph=True: batch size {batch} exceeds max_batch = "
                         f"{max_batch} (the length of {batch_buf})")
    if n_pages is not None and n_pages > indices.numel():
        raise ValueError(f"use_cuda_graph=True: the page table has {n_pages} pages but "
                         f"{indices_buf} holds {indices.numel()}")


def copy_into(copies, non_blocking: bool) -> None:
    """(fixed buffer or view at its start, host array or tensor) pairs, copied in place."""
    for dst, src in copies:
        if isinstance(src, np.ndarray):
            src = torch.from_numpy(src.astype(np.int32))
        dst.copy_(src, non_blocking=non_blocking)
