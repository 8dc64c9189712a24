"""The CPU KV tier: prefilled KV parked in (shared) host memory between prefill and decode.

Pages are HND: a page of one layer is [2, num_kv_heads, page_size, head_dim], so the heads a TP
rank owns are one contiguous block per (page, layer, k/v) whatever the layout that wrote them.
PP prefill ranks write their stages' layers with all heads of their TP slice; TP decode ranks
read their heads of every layer: the swap itself re-shards the KV, nothing else moves it.
"""
from __future__ import annotations

import bisect
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import torch

__all__ = ["PageAllocator", "KVTier"]


class PageAllocator:
    """First-fit allocator over ``num_pages`` pages with coalescing of freed ranges.

    ``alloc(n)`` returns page ids (the longest free runs first, so a request's pages are
    contiguous whenever a run is long enough); ``free(pages)`` merges them back into maximal
    runs. Thread-safe.
    """

    def __init__(self, num_pages: int):
        if not isinstance(num_pages, int) or num_pages < 1:
            raise ValueError(f"num_pages must be an int >= 1, got {num_pages!r}")
        self.num_pages = num_pages
        self._runs = [(0, num_pages)]  # sorted, disjoint, non-adjacent (start, stop)
        self._lock = threading.Lock()

    @property
    def free_pages(self) -> int:
        return sum(b - a for a, b in self._runs)

    @property
    def runs(self) -> list[tuple[int, int]]:
        return list(self._runs)

    def alloc(self, n: int) -> list[int]:
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        with self._lock:
            if n > self.free_pages:
                raise MemoryError(f"KV tier: {n} pages requested, {self.free_pages} of "
                                  f"{self.num_pages} free")
            out = []
            fit = next((i for i, (a, b) in enumerate(self._runs) if b - a >= n), None)
            order = [fit] if fit is not None else sorted(
                range(len(self._runs)), key=lambda i: self._runs[i][0] - self._runs[i][1])
            taken = {}
            for i in order:
                a, b = self._runs[i]
                k = min(n - len(out), b - a)
                out.extend(range(a, a + k))
                taken[i] = (a + k, b)
                if len(out) == n:
                    break
            self._runs = [taken.get(i, r) for i, r in enumerate(self._runs)]
            self._runs = [(a, b) for a, b in self._runs if b > a]
            return out

    def free(self, pages) -> None:
        with self._lock:
            for p in sorted(set(pages)):
                if not isinstance(p, int) or not 0 <= p < self.num_pages:
                    raise ValueError(f"page {p!r} is not in [0, {self.num_pages})")
                i = bisect.bisect_right(self._runs, (p, self.num_pages + 1))
                if i and self._runs[i - 1][1] > p:
                    raise ValueError(f"page {p} is already free")
                left = i and self._runs[i - 1][1] == p
                right = i < len(self._runs) and self._runs[i][0] == p + 1
                if left and right:
                    self._runs[i - 1:i + 1] = [(self._runs[i - 1][0], self._runs[i][1])]
                elif left:
                    self._runs[i - 1] = (self._runs[i - 1][0], p + 1)
                elif right:
                    self._runs[i] = (p, self._runs[i][1])
                else:
                    self._runs.insert(i, (p, p + 1))


class _StreamHandle:
    def __init__(self, event):
        self._event = event

    def wait(self):
        torch.cuda.current_stream().wait_event(self._event)


class KVTier:
    """Host KV pages for ``num_layers`` layers: [num_pages, num_layers, 2, H, page_size, D].

    Parameters
    ----------
    num_pages, num_layers, num_kv_heads, page_size, head_dim : sizes
    dtype : the KV dtype (fp16/bf16, as the attention ops read it)
    shared : put the pages in shared memory (visible to forked / torch.multiprocessing
        workers, as prefill and decode ranks are)
    pin : page-lock the memory so GPU copies are asynchronous (needs CUDA)

    ``write`` and ``read`` copy between a device paged cache (HND, [pages, 2, h, page_size,
    D] per layer) and the tier, for one layer range and one head range; ``*_async`` do the same
    on a side CUDA stream for device tensors and on a worker thread for CPU ones, and return a
    handle whose ``wait()`` orders the copy before later work.
    """

    def __init__(self, num_pages: int, num_layers: int, num_kv_heads: int, page_size: int,
                 head_dim: int, dtype=torch.float16, *, shared: bool = True, pin: bool = False):
        for k, v in dict(num_pages=num_pages, num_layers=num_layers, num_kv_heads=num_kv_heads,
                         page_size=page_size, head_dim=head_dim).items():
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{k} must be an int >= 1, got {v!r}")
        self.pages = torch.zeros(num_pages, num_layers, 2, num_kv_heads, page_size, head_dim,
                                 dtype=dtype)
        if shared:
            self.pages.share_memory_()
        if pin:
            self.pages = self.pages.pin_memory()
        self.allocator = PageAllocator(num_pages)
        self.num_layers, self.num_kv_heads, self.page_size = num_layers, num_kv_heads, page_size
        self.head_dim = head_dim
        self._pool = None
        self._stream = None

    @property
    def bytes_per_page(self) -> int:
        return self.pages[0].numel() * self.pages.element_size()

    def _check(self, cache, tier_pages, cache_pages, layer, heads):
        h0, h1 = heads
        if not 0 <= h0 < h1 <= self.num_kv_heads:
            raise ValueError(f"heads must be a range inside [0, {self.num_kv_heads}), got {heads}")
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer must be in [0, {self.num_layers}), got {layer}")
        want = (2, h1 - h0, self.page_size, self.head_dim)
        if cache.dim() != 5 or tuple(cache.shape[1:]) != want or cache.dtype != self.pages.dtype:
            raise ValueError(f"cache must be HND [pages, {', '.join(map(str, want))}] "
                             f"{self.pages.dtype}, got {tuple(cache.shape)} {cache.dtype}")
        if len(tier_pages) != len(cache_pages):
            raise ValueError(f"tier_pages ({len(tier_pages)}) and cache_pages "
                             f"({len(cache_pages)}) must have the same length")

    def write(self, cache, cache_pages, tier_pages, layer: int, heads: tuple[int, int]) -> None:
        """Swap out: the cache's pages (one layer, heads h0:h1) into the tier's pages."""
        self._check(cache, tier_pages, cache_pages, layer, heads)
        self._copy_out(cache, cache_pages, tier_pages, layer, heads)

    def _copy_out(self, cache, cache_pages, tier_pages, layer, heads):
        src = cache[torch.as_tensor(cache_pages, dtype=torch.long, device=cache.device)]
        self.pages[torch.as_tensor(tier_pages, dtype=torch.long), layer, :,
                   heads[0]:heads[1]] = src.to("cpu", non_blocking=self.pages.is_pinned())

    def read(self, cache, cache_pages, tier_pages, layer: int, heads: tuple[int, int]) -> None:
        """Swap in: the tier's pages (one layer, heads h0:h1) into the cache's pages."""
        self._check(cache, tier_pages, cache_pages, layer, heads)
        self._copy_in(cache, cache_pages, tier_pages, layer, heads)

    def _copy_in(self, cache, cache_pages, tier_pages, layer, heads):
        src = self.pages[torch.as_tensor(tier_pages, dtype=torch.long), layer, :,
                         heads[0]:heads[1]]
        cache[torch.as_tensor(cache_pages, dtype=torch.long, device=cache.device)] = src.to(
            cache.device, non_blocking=self.pages.is_pinned())

    def _async(self, fn, cache, *args):
        if cache.is_cuda:
            if self._stream is None:
                self._stream = torch.cuda.Stream(cache.device)
            self._stream.wait_stream(torch.cuda.current_stream(cache.device))
            with torch.cuda.stream(self._stream):
                fn(cache, *args)
                cache.record_stream(self._stream)
                event = torch.cuda.Event()
                event.record(self._stream)
            return _StreamHandle(event)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="flashkit-kv-swap")
        return _FutureHandle(self._pool.submit(fn, cache, *args))

    def write_async(self, cache, cache_pages, tier_pages, layer, heads):
        self._check(cache, tier_pages, cache_pages, layer, heads)
        return self._async(self._copy_out, cache, cache_pages, tier_pages, layer, heads)

    def read_async(self, cache, cache_pages, tier_pages, layer, heads):
        self._check(cache, tier_pages, cache_pages, layer, heads)
        return self._async(self._copy_in, cache, cache_pages, tier_pages, layer, heads)


class _FutureHandle:
    def __init__(self, fut: Future):
        self._fut = fut

    def wait(self):
        self._fut.result()
