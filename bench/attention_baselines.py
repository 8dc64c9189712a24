"""Torch baselines of the attention benchmarks, on the same inputs as flashkit's wrappers.

- :class:`FlexPagedDecode`: ``torch.nn.attention.flex_attention`` reading the *paged* cache
  itself. K and V are the whole page pool viewed as one physical sequence ``[1, HK, pages *
  page_size, D]`` (no copy), shared by every request (flex broadcasts a KV batch of 1); the
  block mask lists, for request ``b``, its pages in the pool as KV blocks of ``page_size``
  tokens, so the kernel visits only those; the mask_mod maps a physical position back to the
  request's logical position (through the inverse page table) and keeps it when it is below the
  request's length (the last page is partly filled).
- :func:`contiguous_decode`: what a user without paging runs: each request's KV copied into a
  padded ``[B, HK, max_len, D]`` tensor once (setup, not timed), then one SDPA call with a
  padding mask (none when every request has the same length).
- :func:`sdpa_prefill`: causal single-request prefill through one SDPA backend (flash, cuDNN,
  efficient), with GQA done by SDPA where the backend takes it, else by expanding K/V once.

Each function returns ``o`` in flashkit's layout (``[B, HQ, D]`` for decode, ``[seq, HQ, D]``
for prefill); tests/test_bench_baselines.py checks them against flashkit's references on CPU.
"""
from __future__ import annotations

import functools

__all__ = ["FlexPagedDecode", "ContiguousDecode", "sdpa_prefill", "SDPA_BACKENDS",
           "kv_lens_of"]

# Name in the bench rows -> torch.nn.attention.SDPBackend member.
SDPA_BACKENDS = {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION",
                 "efficient": "EFFICIENT_ATTENTION"}


def kv_lens_of(indptr, last_page_len, page_size: int):
    """Tokens per request of a paged table: (pages - 1) * page_size + last (0 without pages)."""
    import torch

    pages = (indptr[1:] - indptr[:-1]).to(torch.int64)
    return torch.where(pages > 0, (pages - 1) * page_size + last_page_len.to(torch.int64),
                       torch.zeros_like(pages))


class FlexPagedDecode:
    """flex_attention over a paged NHD cache ``[pages, 2, page_size, HK, D]``.

    Parameters
    ----------
    indptr, indices, last_page_len : int32 page table (FlashInfer's layout), any device
    num_pages, page_size : the pool's shape
    compiled : run ``torch.compile(flex_attention)`` (the fused kernel; what to time on a GPU)
        rather than the eager math path (materializes the scores; what runs on the CPU)

    Calling it with ``q [B, HQ, D]`` and the cache returns ``o [B, HQ, D]`` in q's dtype.
    """

    def __init__(self, indptr, indices, last_page_len, num_pages: int, page_size: int, *,
                 compiled: bool):
        import torch
        from torch.nn.attention.flex_attention import BlockMask, flex_attention

        device = indices.device
        ptr = indptr.to(device=device, dtype=torch.int64)
        batch = ptr.numel() - 1
        pages = ptr[1:] - ptr[:-1]
        # The request of each table entry and its logical page index within the request.
        owner = torch.repeat_interleave(torch.arange(batch, device=device), pages)
        logical = torch.arange(indices.numel(), device=device) - ptr[:-1][owner]
        phys = indices.to(torch.int64)
        # Inverse page table: physical page -> logical page of request b, -1 where not b's.
        p2l = torch.full((batch, num_pages), -1, dtype=torch.int64, device=device)
        p2l[owner, phys] = logical
        kv_len = kv_lens_of(ptr, last_page_len.to(device), page_size)
        # Block table: row b lists b's pages (logical order), padded with 0 past its count.
        kv_indices = torch.zeros(batch, 1, 1, num_pages, dtype=torch.int32, device=device)
        kv_indices[owner, 0, 0, logical] = phys.to(torch.int32)
        kv_num_blocks = pages.to(torch.int32).view(batch, 1, 1)

        def mask_mod(b, h, q_idx, kv_idx):
            page = kv_idx // page_size
            lpage = p2l[b, page]
            return (lpage >= 0) & (lpage * page_size + kv_idx % page_size < kv_len[b])

        self.block_mask = BlockMask.from_kv_blocks(
            kv_num_blocks, kv_indices, BLOCK_SIZE=(page_size, page_size), mask_mod=mask_mod,
            seq_lengths=(1, num_pages * page_size))
        self.page_size, self.num_pages = page_size, num_pages
        if compiled:
            # Each case has its own mask_mod (a guard failure, so a recompile): start from a
            # clean dynamo cache so that the ninth case is not sent to eager by the recompile
            # limit (8 per function) without a word.
            torch._dynamo.reset()
            self._flex = torch.compile(flex_attention, dynamic=False)
        else:
            self._flex = flex_attention

    def __call__(self, q, cache):
        pages, two, page_size, hk, d = cache.shape
        if two != 2 or page_size != self.page_size or pages != self.num_pages:
            raise ValueError(f"cache must be [{self.num_pages}, 2, {self.page_size}, HK, D] (NHD),"
                             f" got {tuple(cache.shape)}")
        # [pages, page, HK, D] -> [1, HK, pages * page, D]: a strided view of the pool, no copy.
        k, v = (cache[:, i].reshape(1, pages * page_size, hk, d).transpose(1, 2)
                for i in range(2))
        o = self._flex(q.unsqueeze(2), k, v, block_mask=self.block_mask, enable_gqa=True)
        return o.squeeze(2)


class ContiguousDecode:
    """SDPA decode on the same requests laid out contiguously and padded to the longest.

    The copy into ``[B, HK, max_len, D]`` happens once here (setup); calls time the attention.
    Calling it with ``q [B, HQ, D]`` (and the paged cache, ignored: the data was copied)
    returns ``o [B, HQ, D]``. Raises :class:`~flashkit.bench.registry.Unavailable` when the
    padded copy would exceed ``max_bytes``.
    """

    def __init__(self, cache, indptr, indices, last_page_len, page_size: int, *,
                 max_bytes: float = 16 * 2**30):
        import torch

        from flashkit.ops.attention.reference import naive_gather_paged_kv

        from .registry import Unavailable

        lens = kv_lens_of(indptr.cpu(), last_page_len.cpu(), page_size).tolist()
        longest = max(lens)
        batch, hk, d = len(lens), cache.shape[3], cache.shape[4]
        padded = 2 * batch * hk * longest * d * cache.element_size()
        if padded > max_bytes:
            raise Unavailable(f"padding {batch} requests to the longest ({longest} tokens) "
                              f"takes {padded / 2**30:.0f} GiB")
        kv = naive_gather_paged_kv(cache, indptr.cpu(), indices.cpu(), last_page_len.cpu())
        self.k = cache.new_zeros(batch, hk, longest, d)
        self.v = cache.new_zeros(batch, hk, longest, d)
        for b, (k, v) in enumerate(kv):
            self.k[b, :, :lens[b]] = k.transpose(0, 1)
            self.v[b, :, :lens[b]] = v.transpose(0, 1)
        self.mask = None
        if min(lens) != longest:  # True: attend
            pos = torch.arange(longest, device=cache.device)
            self.mask = (pos[None, :] < torch.tensor(lens, device=cache.device)[:, None]
                         ).view(batch, 1, 1, longest)

    def __call__(self, q, cache=None):
        import torch

        o = torch.nn.functional.scaled_dot_product_attention(
            q.unsqueeze(2), self.k, self.v, attn_mask=self.mask, enable_gqa=True)
        return o.squeeze(2)


def sdpa_prefill(backend: str | None, q, k, v, *, expand_kv: bool = False):
    """Causal attention of one request: q [seq, HQ, D], k/v [seq, HK, D] -> o [seq, HQ, D].

    ``backend``: a key of :data:`SDPA_BACKENDS` (that backend only; it raises where it cannot
    run these inputs) or None (torch's own choice). ``expand_kv``: repeat K/V to HQ heads before
    the call, for backends without GQA (the caller does it once, outside the timing, by passing
    already-expanded tensors; this flag is for a one-off call).
    """
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    qt, kt, vt = (t.transpose(0, 1)[None] for t in (q, k, v))
    gqa = qt.shape[1] != kt.shape[1]
    if expand_kv and gqa:
        rep = qt.shape[1] // kt.shape[1]
        kt, vt = kt.repeat_interleave(rep, dim=1), vt.repeat_interleave(rep, dim=1)
        gqa = False
    call = functools.partial(torch.nn.functional.scaled_dot_product_attention, qt, kt, vt,
                             is_causal=True, enable_gqa=gqa)
    if backend is None:
        o = call()
    else:
        with sdpa_kernel(getattr(SDPBackend, SDPA_BACKENDS[backend])):
            o = call()
    return o[0].transpose(0, 1)
