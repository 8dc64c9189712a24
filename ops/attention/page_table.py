"""PageTable: a CSR page table checked once on the host, the only page table run() reads.

plan() validates the caller's indptr/indices/last_page_len here, then copies THESE host arrays
(not the caller's tensors) into the plan's own device tensors or, with use_cuda_graph=True, the
wrapper's fixed buffers. A caller who edits its tensors after plan() changes nothing run() reads,
so no gather can leave the pages plan() checked against the cache (FlashInfer copies its page
table into the workspace at plan() for the same reason).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .._common.checks import INT32_DTYPES, check_readable, check_tensor
from .index_tensors import int32

_NAMES = ("indptr", "indices", "last_page_len")


@dataclasses.dataclass(frozen=True, eq=False)
class PageTable:
    """indptr int64 [batch + 1], indices int64 [indptr[-1]] (the entries used, nothing past),
    last_page_len int64 [batch], kv_lens int64 [batch], max_page (-1 without pages)."""

    indptr: np.ndarray
    indices: np.ndarray
    last_page_len: np.ndarray
    kv_lens: np.ndarray
    max_page: int

    @property
    def batch(self) -> int:
        return self.kv_lens.size

    @property
    def n_pages(self) -> int:
        return int(self.indptr[-1])

    def copies(self, device) -> dict:
        """kv_indptr and kv_indices as new int32 device tensors (indices at least one entry, so
        that a kernel always gets a valid pointer)."""
        indices = self.indices if self.indices.size else np.zeros(1, np.int64)
        return dict(kv_indptr=int32(self.indptr, device), kv_indices=int32(indices, device))

    @classmethod
    def check(cls, indptr, indices, last_page_len, page_size: int,
              names: tuple[str, str, str] = _NAMES) -> "PageTable":
        """The table as host copies, or a ValueError naming the argument. A request without
        pages is empty (its last_page_len may be 0)."""
        n_ptr, n_idx, n_last = names
        check_tensor(n_ptr, indptr, dtypes=INT32_DTYPES, ndim=1)
        check_tensor(n_idx, indices, dtypes=INT32_DTYPES, ndim=1)
        check_tensor(n_last, last_page_len, dtypes=INT32_DTYPES, ndim=1)
        for name, t in ((n_ptr, indptr), (n_idx, indices), (n_last, last_page_len)):
            check_readable(name, t)
        ptr = indptr.cpu().numpy().astype(np.int64)
        idx = indices.cpu().numpy().astype(np.int64)
        last = last_page_len.cpu().numpy().astype(np.int64)
        if ptr.size < 1 or ptr[0] != 0:
            raise ValueError(f"{n_ptr} must start at 0 and have batch + 1 entries, got "
                             f"{ptr[:4].tolist()}...")
        if np.any(np.diff(ptr) < 0):
            raise ValueError(f"{n_ptr} must be non-decreasing, got a drop at index "
                             f"{int(np.argmax(np.diff(ptr) < 0))}")
        if ptr[-1] > idx.size:
            raise ValueError(f"{n_ptr}[-1] ({int(ptr[-1])}) exceeds the {idx.size} entries of "
                             f"{n_idx}")
        if last.size != ptr.size - 1:
            raise ValueError(f"{n_last} must have batch = {ptr.size - 1} entries, got "
                             f"{last.size}")
        pages = np.diff(ptr)
        bad = ((pages > 0) & ((last < 1) | (last > page_size))
               | (pages == 0) & ((last < 0) | (last > page_size)))
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{n_last}[{i}] must be in [1, page_size={page_size}], got "
                             f"{int(last[i])}")
        used = idx[:ptr[-1]].copy()
        if used.size and used.min() < 0:
            raise ValueError(f"{n_idx} must be non-negative page numbers, got {int(used.min())}")
        kv_lens = np.where(pages > 0, (pages - 1) * page_size + last, 0)
        return cls(ptr, used, last, kv_lens, int(used.max()) if used.size else -1)
