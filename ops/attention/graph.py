"""The fixed device buffers of use_cuda_graph=True wrappers: every plan() copies its page table
and work items into them in place (same data_ptrs), so that run() captured once in a CUDA
graph replays any later plan. The kernels read the real item count from ``num_items`` on the
device, so the grid (the buffers' capacity) never changes.
"""
from __future__ import annotations

import numpy as np
import torch

from .._common.checks import check_tensor
from .checks import INDEX_DTYPES
from .items import prefill_item_cols, split_kv_items

__all__ = ["DecodeGraphBuffers", "PrefillGraphBuffers", "check_graph_buffer", "check_graph_fits",
           "copy_into"]


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


def page_table_copies(table, private, user) -> list:
    """(buffer, host array) pairs putting a checked PageTable into the private (indptr,
    indices) buffers the kernels read and into the caller's (indptr, indices, last_page_len)."""
    batch, n = table.batch, table.n_pages
    return [(private[0][:batch + 1], table.indptr), (private[1][:n], table.indices),
            (user[0][:batch + 1], table.indptr), (user[1][:n], table.indices),
            (user[2][:batch], table.last_page_len)]


class DecodeGraphBuffers:
    """The fixed device buffers of a use_cuda_graph=True wrapper. The page-table buffers are the
    user's (FlashInfer's contract); the work-item table, its device-side count, merge_indptr,
    qo_indptr and kv_lens are allocated at the first plan(), sized for ``max_batch`` requests
    and ``max_items = max_batch + 2 * num_workers`` work items (num_workers of that first
    plan), and every later plan() copies into them in place."""

    def __init__(self, indptr, indices, last_page_len):
        # plan() fills the caller's buffers (FlashInfer's contract) and private twins of the two
        # the kernels read: a caller writing into its buffers after plan() moves no gather.
        self.user = (indptr, indices, last_page_len)
        self.indptr, self.indices = torch.empty_like(indptr), torch.empty_like(indices)
        self.last_page_len = last_page_len
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

    def fill(self, table, workers: int, page_size: int, min_chunk_tokens: int,
             non_blocking: bool) -> int:
        """Copy a plan (its checked PageTable's host arrays) into the buffers, allocating them
        at the first call; returns the number of work items. Requests past the batch are empty
        (merged to o = 0)."""
        kv_lens, batch, n_pages = table.kv_lens, table.batch, table.n_pages
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
            *page_table_copies(table, (self.indptr, self.indices), self.user)]
        copy_into(copies, non_blocking)
        return n

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in (
            "indptr", "indices", "last_page_len", "items", "num_items", "merge_indptr",
            "qo_indptr", "kv_lens")}


class PrefillGraphBuffers:
    """The fixed device buffers of a use_cuda_graph=True prefill wrapper. The index buffers are
    the user's (FlashInfer's contract); kv_lens and the work-item table are flashkit's. The
    first plan() fixes the capacity, as FlashInfer's: ``max_tokens`` = its qo_indptr[-1], and
    its GQA group (hence ``tile``, the query tokens per item). The item table has
    ceil(max_tokens / tile) + max_batch slots: any plan's tiles plus the padding items (no keys,
    so o = 0, lse = -inf) over rows [nnz, max_tokens) number fewer than (max_tokens + (batch +
    1) x (tile - 1)) / tile, each of the batch + 1 groups wasting under one tile. run() clamps
    the padding items' q_end to q's row count."""

    def __init__(self, bufs: dict[str, torch.Tensor], batch_buf: str, mask=None,
                 mask_indptr=None):
        # bufs: qo_indptr, the KV indptr, then (paged) indices and last_page_len, by the
        # constructor's argument names (kept for errors)
        qo_indptr, indptr, *paged = bufs.values()
        indices, self.last_page_len = paged or (None, None)  # last_page_len None: ragged KV
        # As the decode buffers: the kernels read private twins of the index buffers (the
        # caller's are filled too), so no write after plan() moves a gather.
        self.user = (qo_indptr, indptr, indices, self.last_page_len, mask_indptr)
        self.qo_indptr, self.indptr = torch.empty_like(qo_indptr), torch.empty_like(indptr)
        self.batch_buf = batch_buf + " minus 1" * batch_buf.endswith("indptr_buf")
        self.indices_buf = list(bufs)[2] if paged else ""
        self.mask = None if mask is None else mask.view(torch.uint8)
        self.mask_indptr = None if mask_indptr is None else torch.empty_like(mask_indptr)
        self.max_batch = qo_indptr.numel() - 1
        i32 = dict(dtype=torch.int32, device=qo_indptr.device)
        self.indices = torch.empty_like(indices) if indices is not None else torch.zeros(1, **i32)
        self.kv_lens = torch.zeros(max(self.max_batch, 1), **i32)
        self.num_items = torch.zeros(1, **i32)
        self.merge_indptr = torch.zeros(1, **i32)  # unused: prefill items write o directly
        self.max_tokens = self.group = None
        self.max_items = 0
        self.items = self.q_end = None

    def fill(self, qo_ptr: np.ndarray, kv_lens: np.ndarray, group: int, tile: int, kv_table,
             mask, mask_ptr, non_blocking: bool) -> int:
        """Check a plan against the capacity, then copy it in (allocating the item table at the
        first call). ``kv_table``: the checked PageTable (paged) or the kv_indptr array
        (ragged). Returns the item count: the plan's tiles, then padding."""
        batch, nnz = kv_lens.size, int(qo_ptr[-1])
        paged = self.last_page_len is not None
        n_pages = kv_table.n_pages if paged else None
        check_graph_fits(batch, self.max_batch, self.batch_buf, n_pages, self.indices,
                         self.indices_buf)
        user_qo, user_ptr, user_idx, user_last, user_mi = self.user
        copies = [(self.qo_indptr[:batch + 1], qo_ptr), (user_qo[:batch + 1], qo_ptr),
                  (self.kv_lens[:batch], kv_lens)]
        if paged:
            copies += page_table_copies(kv_table, (self.indptr, self.indices),
                                        (user_ptr, user_idx, user_last))
        else:
            copies += [(self.indptr[:batch + 1], kv_table), (user_ptr[:batch + 1], kv_table)]
        if mask is not None:
            if self.mask is None:
                raise ValueError("use_cuda_graph=True: a custom_mask plan needs custom_mask_buf "
                                 "and mask_indptr_buf (given to the constructor)")
            if mask.numel() > self.mask.numel():
                raise ValueError(f"use_cuda_graph=True: custom_mask has {mask.numel()} elements "
                                 f"but custom_mask_buf holds {self.mask.numel()}")
            copies += [(self.mask[:mask.numel()], mask), (self.mask_indptr[:batch + 1], mask_ptr),
                       (user_mi[:batch + 1], mask_ptr)]
        if self.items is None:
            self.max_tokens, self.group = nnz, group
            self.max_items = max(1, -(-nnz // tile) + self.max_batch)
            self.items = torch.zeros((6, self.max_items), dtype=torch.int32,
                                     device=self.qo_indptr.device)
            self.q_end = torch.zeros_like(self.items[2])
        if group != self.group:
            raise ValueError(f"use_cuda_graph=True: num_qo_heads // num_kv_heads must stay "
                             f"{self.group} (the first plan's; it fixes the tiles), got {group}")
        if nnz > self.max_tokens:
            raise ValueError(f"use_cuda_graph=True: qo_indptr[-1] = {nnz} query tokens exceed "
                             f"the capacity of {self.max_tokens} fixed by the first plan() "
                             f"(plan the largest batch first)")
        cols, n = prefill_item_cols(qo_ptr, kv_lens, tile)
        # Padding items: request 0 (qo_indptr[0] = 0, so q_start is a row of q), no keys.
        pad = nnz + tile * np.arange(-(-(self.max_tokens - nnz) // tile))
        host = np.zeros((6, self.max_items), np.int64)
        for r, c in enumerate(cols):
            host[r, :n] = c
        host[1, n:n + pad.size] = host[5, n:n + pad.size] = pad
        host[2, n:n + pad.size] = np.minimum(pad + tile, self.max_tokens)
        copies += [(self.items, host), (self.q_end, host[2]),
                   (self.num_items, np.array([n + pad.size]))]
        copy_into(copies, non_blocking)
        return n + pad.size

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in vars(self).items() if isinstance(v, torch.Tensor)}
