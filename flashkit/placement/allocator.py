"""KV page allocators for flashkit's paged KV cache: a plain free list and a lifetime-aware one.

Pages are grouped in blocks of ``block_pages`` consecutive pages (the unit that can be handed
back whole: to shrink the cache, to defragment, or to move a whole instance). A block is empty
when none of its pages is in use. The lifetime-aware allocator takes each page from a block
whose other pages are predicted to be freed at about the same time (a request frees all its
pages at once when it ends), so blocks empty together instead of being pinned by one
long-lived page each.
"""
from __future__ import annotations

import collections
import math

__all__ = ["PageAllocator", "LifetimeAwarePageAllocator", "OutOfPages"]


class OutOfPages(RuntimeError):
    """No free page is left (the caller preempts a request)."""


class PageAllocator:
    """A plain FIFO free list of pages (freed pages go to the back, as in vLLM's block pool).

    Parameters
    ----------
    num_pages : int
        Pages of the paged KV cache (its first dimension).
    block_pages : int
        Pages per block (``num_pages`` must be a multiple).
    """

    def __init__(self, num_pages: int, block_pages: int = 16):
        if not isinstance(num_pages, int) or num_pages < 1:
            raise ValueError(f"num_pages must be an int >= 1, got {num_pages!r}")
        if not isinstance(block_pages, int) or block_pages < 1 or num_pages % block_pages:
            raise ValueError(f"block_pages must be an int >= 1 dividing num_pages={num_pages}, "
                             f"got {block_pages!r}")
        self.num_pages, self.block_pages = num_pages, block_pages
        self.num_blocks = num_pages // block_pages
        self.used = [0] * self.num_blocks              # pages in use per block
        self.empty_blocks = self.num_blocks
        self.free_pages = num_pages
        self._pages: dict = {}                          # request -> its pages, in order
        self._free = collections.deque(range(num_pages))

    def pages(self, req) -> list[int]:
        """The pages of request ``req``, in token order."""
        return self._pages.get(req, [])

    def _take(self, now: float, remaining: float) -> int:
        return self._free.popleft()

    def _give(self, page: int) -> None:
        self._free.append(page)

    def allocate(self, req, n: int = 1, *, now: float = 0.0, remaining: float = 0.0) -> list[int]:
        """Append ``n`` pages to request ``req``; ``remaining`` is its predicted remaining
        lifetime at time ``now`` (used by the lifetime-aware allocator). Raises OutOfPages
        (and allocates nothing) when fewer than ``n`` pages are free."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        if not (remaining >= 0 and math.isfinite(now)):
            raise ValueError(f"remaining must be >= 0 and now finite, got {remaining!r}, {now!r}")
        if n > self.free_pages:
            raise OutOfPages(f"{n} pages requested, {self.free_pages} free")
        got = self._pages.setdefault(req, [])
        bp = self.block_pages
        for _ in range(n):
            p = self._take(now, remaining)
            b = p // bp
            if self.used[b] == 0:
                self.empty_blocks -= 1
            self.used[b] += 1
            got.append(p)
        self.free_pages -= n
        return got[len(got) - n:]

    def free(self, req) -> int:
        """Free every page of ``req``; returns how many."""
        pages = self._pages.pop(req, None)
        if pages is None:
            raise ValueError(f"request {req!r} holds no pages")
        bp = self.block_pages
        for p in pages:
            b = p // bp
            self.used[b] -= 1
            if self.used[b] == 0:
                self.empty_blocks += 1
            self._give(p)
        self.free_pages += len(pages)
        return len(pages)

    def fragmentation(self) -> float:
        """Free pages stranded in partly used blocks, as a fraction of all free pages (0 when
        every free page lies in an empty block that could be handed back whole)."""
        if self.free_pages == 0:
            return 0.0
        return 1.0 - self.empty_blocks * self.block_pages / self.free_pages

    def page_table(self, reqs, seq_lens, page_size: int, device="cpu"):
        """CSR page table for a batch, as flashkit's (and FlashInfer's) paged attention reads it.

        Parameters
        ----------
        reqs : sequence of request keys [batch]
        seq_lens : sequence of ints [batch]
            Tokens of KV per request; request i must hold ceil(seq_lens[i] / page_size) pages.
        page_size : int

        Returns
        -------
        indptr int32 [batch + 1], indices int32 [indptr[-1]], last_page_len int32 [batch]
        """
        import torch

        if len(reqs) != len(seq_lens):
            raise ValueError(f"seq_lens must have one entry per request ({len(reqs)}), got "
                             f"{len(seq_lens)}")
        if not isinstance(page_size, int) or page_size < 1:
            raise ValueError(f"page_size must be an int >= 1, got {page_size!r}")
        indptr, indices, last = [0], [], []
        for r, n in zip(reqs, seq_lens):
            need = -(-int(n) // page_size)
            pages = self.pages(r)
            if n < 1 or len(pages) < need:
                raise ValueError(f"seq_lens: request {r!r} has {n} tokens but holds "
                                 f"{len(pages)} pages of {page_size}")
            indices.extend(pages[:need])
            indptr.append(len(indices))
            last.append(n - (need - 1) * page_size)
        return tuple(torch.tensor(x, dtype=torch.int32, device=device)
                     for x in (indptr, indices, last))


class LifetimeAwarePageAllocator(PageAllocator):
    """Pages from blocks grouped by predicted exit time.

    A page allocated at ``now`` for a request predicted to live ``remaining`` more is keyed by
    (k, floor((now + remaining) / (r0 * 2^k))), k = floor(log2(remaining / r0)): its predicted
    exit, to a precision that widens with the prediction (an exit 10 steps away is known to
    a few steps, one 10,000 away to thousands). It goes to an open block of its key; else to an
    empty block, which then takes the key; else, with no empty block left, to any partly used
    block.
    """

    def __init__(self, num_pages: int, block_pages: int = 16, *, r0: float = 16.0):
        super().__init__(num_pages, block_pages)
        if not r0 > 0:
            raise ValueError(f"r0 must be > 0, got {r0!r}")
        self.r0 = float(r0)
        self._free = None
        self._block_free: list[list[int]] = [
            list(range((b + 1) * block_pages - 1, b * block_pages - 1, -1))
            for b in range(self.num_blocks)]
        self._empty = list(range(self.num_blocks - 1, -1, -1))   # lowest block first
        self._key: list = [None] * self.num_blocks
        self._open: dict = {}                                      # key -> blocks with room
        self._partial: dict = {}                                   # blocks with room, in use

    def _group(self, now: float, remaining: float):
        k = 0 if remaining < self.r0 else int(math.log2(remaining / self.r0))
        return k, int((now + remaining) // (self.r0 * 2.0 ** k))

    def _take(self, now, remaining):
        key = self._group(now, remaining)
        blocks = self._open.get(key)
        while blocks and (self._key[blocks[-1]] != key or not self._block_free[blocks[-1]]):
            blocks.pop()                                           # stale: emptied or full
        if blocks:
            b = blocks[-1]
        elif self._empty:
            b = self._empty.pop()
            self._key[b] = key
            self._open.setdefault(key, []).append(b)
        else:
            b = next(iter(self._partial))
        page = self._block_free[b].pop()
        if self._block_free[b]:
            self._partial[b] = None
        else:
            self._partial.pop(b, None)
        return page

    def _give(self, page):
        b = page // self.block_pages
        free = self._block_free[b]
        free.append(page)
        if self.used[b] == 0:                                      # whole block free again
            self._partial.pop(b, None)
            self._key[b] = None
            self._empty.append(b)
        elif len(free) == 1:                                       # was full: has room again
            self._partial[b] = None
            self._open.setdefault(self._key[b], []).append(b)
