"""Paged KV cache writes: append_paged_kv_cache and get_batch_indices_positions (FlashInfer's).

Plain torch indexing, vectorized on the device: one gather of each token's page and one scatter
of its k/v row; registered as a custom op that mutates the cache. In eager mode each op first
checks the values that decide where it writes (positions inside their request's pages, pages
inside the cache) with one host sync, so a bad position raises instead of writing into another
request's page; the check is skipped while torch.compile traces or a CUDA graph captures
(ops/_common/checks.host_checks_enabled), where callers pass tables they built themselves.
"""
from __future__ import annotations

import torch

from .._common.checks import check_int, check_tensor, host_checks_enabled
from .._common.custom_op import custom_op, eager_or_op
from .checks import INDEX_DTYPES, KV_DTYPES, check_layout, unpack_paged_cache

__all__ = ["append_paged_kv_cache", "get_batch_indices_positions"]


def get_batch_indices_positions(append_indptr: torch.Tensor, seq_lens: torch.Tensor, nnz: int,
                                batch_indices: torch.Tensor | None = None,
                                positions: torch.Tensor | None = None
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each appended token's request and position.

    Parameters
    ----------
    append_indptr : int32 [batch + 1], the appended tokens of request i are
        ``append_indptr[i]:append_indptr[i + 1]``
    seq_lens : int32 [batch], each request's KV length after the append
    nnz : int, ``append_indptr[-1]`` (the output size, so the op itself needs no host sync;
        eager mode checks it, and seq_lens >= each request's appended count, with one sync)
    batch_indices, positions : optional int32 [nnz] outputs, written in place (FlashInfer's)

    Returns
    -------
    batch_indices, positions : int32 [nnz]; token j of request i sits at position
    ``seq_lens[i] - append_len_i + j``.
    """
    check_tensor("append_indptr", append_indptr, dtypes=INDEX_DTYPES, ndim=1)
    check_tensor("seq_lens", seq_lens, dtypes=INDEX_DTYPES, shape=(append_indptr.shape[0] - 1,),
                 device=append_indptr.device)
    nnz = check_int("nnz", nnz, 0)
    for name, buf in (("batch_indices", batch_indices), ("positions", positions)):
        if buf is not None:
            check_tensor(name, buf, dtypes=(torch.int32,), shape=(nnz,),
                         device=append_indptr.device)
    counts = (append_indptr[1:] - append_indptr[:-1]).long()
    if host_checks_enabled() and not append_indptr.is_meta:
        _check_append_indptr(append_indptr, counts, seq_lens, nnz)
    batch = torch.repeat_interleave(torch.arange(counts.shape[0], device=counts.device), counts,
                                    output_size=nnz)
    j = torch.arange(nnz, device=counts.device) - append_indptr.long()[batch]
    pos = seq_lens.long()[batch] - counts[batch] + j
    outs = []
    for value, buf in ((batch, batch_indices), (pos, positions)):
        outs.append(value.to(torch.int32) if buf is None else buf.copy_(value))
    return outs[0], outs[1]


def _check_append_indptr(append_indptr, counts, seq_lens, nnz: int) -> None:
    """One host sync: append_indptr a CSR over nnz tokens, each request's seq_lens at least its
    appended count (else a position would be negative)."""
    ptr = append_indptr.long()
    if ptr.numel() == 0:
        raise ValueError("append_indptr must have batch + 1 >= 1 entries, got 0")
    first, last, drop, short = torch.stack([
        ptr[0], ptr[-1], (counts < 0).any().long(), (seq_lens.long() < counts).any().long()
    ]).tolist()
    if first != 0 or drop:
        raise ValueError(f"append_indptr must start at 0 and be non-decreasing, got "
                         f"{ptr[:8].tolist()}")
    if last != nnz:
        raise ValueError(f"nnz ({nnz}) must equal append_indptr[-1] ({last})")
    if short:
        i = int((seq_lens.long() < counts).nonzero()[0, 0])
        raise ValueError(f"seq_lens[{i}] = {int(seq_lens[i])} is less than the {int(counts[i])} "
                         f"tokens request {i} appends (append_indptr): a position would be "
                         f"negative")


def _check_append_targets(batch_indices, positions, kv_indices, kv_indptr, kv_last_page_len,
                          page_size: int, max_pages: int) -> None:
    """One host sync: every (request, position) inside its request's pages, every page it
    lands on inside the cache."""
    nnz = positions.numel()
    ptr = kv_indptr.long()
    batch = ptr.numel() - 1
    if batch < 0:
        raise ValueError("kv_indptr must have batch + 1 >= 1 entries, got 0")
    pages = ptr[1:] - ptr[:-1]
    last = kv_last_page_len.long()
    table_bad = torch.stack([
        ptr[0] != 0, (pages < 0).any(), ptr[-1] > kv_indices.numel(),
        ((pages > 0) & ((last < 1) | (last > page_size))).any()]).tolist()
    if any(table_bad):
        what = ("kv_indptr must start at 0", "kv_indptr must be non-decreasing",
                f"kv_indptr[-1] must be <= the {kv_indices.numel()} entries of kv_indices",
                f"kv_last_page_len must be in [1, page_size={page_size}] for requests with pages")
        raise ValueError(f"{what[table_bad.index(True)]}, got kv_indptr={ptr[:8].tolist()}, "
                         f"kv_last_page_len={last[:8].tolist()}")
    if nnz == 0:
        return
    b, pos = batch_indices.long(), positions.long()
    b_bad = (b < 0) | (b >= batch)
    bc = b.clamp(0, max(batch - 1, 0))
    kv_len = torch.where(pages > 0, (pages - 1) * page_size + last, 0) if batch else \
        torch.zeros(1, dtype=torch.int64, device=b.device)
    p_bad = ~b_bad & ((pos < 0) | (pos >= kv_len[bc]))
    slot = (ptr[bc] + pos.clamp(min=0) // page_size).clamp(0, max(kv_indices.numel() - 1, 0))
    page = kv_indices.long()[slot] if kv_indices.numel() else torch.zeros_like(slot)
    g_bad = ~b_bad & ~p_bad & ((page < 0) | (page >= max_pages))
    flags = torch.stack([b_bad.any(), p_bad.any(), g_bad.any()]).tolist()
    if flags[0]:
        j = int(b_bad.nonzero()[0, 0])
        raise ValueError(f"batch_indices[{j}] = {int(b[j])} is outside [0, {batch}) (the "
                         f"requests of kv_indptr)")
    if flags[1]:
        j = int(p_bad.nonzero()[0, 0])
        raise ValueError(f"positions[{j}] = {int(pos[j])} is outside [0, {int(kv_len[bc[j]])}), "
                         f"the KV length the page table gives request {int(b[j])}")
    if flags[2]:
        j = int(g_bad.nonzero()[0, 0])
        raise ValueError(f"kv_indices maps token {j} to page {int(page[j])}, outside the "
                         f"cache's {max_pages} pages")


def _append_impl(append_key: torch.Tensor, append_value: torch.Tensor,
                 batch_indices: torch.Tensor, positions: torch.Tensor, k_cache: torch.Tensor,
                 v_cache: torch.Tensor, kv_indices: torch.Tensor, kv_indptr: torch.Tensor,
                 hnd: bool) -> None:
    page_size = k_cache.shape[2] if hnd else k_cache.shape[1]
    pos = positions.long()
    page = kv_indices.long()[kv_indptr.long()[batch_indices.long()] + pos // page_size]
    slot = pos % page_size
    if hnd:
        k_cache.permute(0, 2, 1, 3)[page, slot] = append_key
        v_cache.permute(0, 2, 1, 3)[page, slot] = append_value
    else:
        k_cache[page, slot] = append_key
        v_cache[page, slot] = append_value


_append_op = custom_op("append_paged_kv_cache", _append_impl, mutates_args=("k_cache", "v_cache"))


@_append_op.register_fake
def _(append_key, append_value, batch_indices, positions, k_cache, v_cache, kv_indices, kv_indptr,
      hnd):
    return None


def append_paged_kv_cache(append_key: torch.Tensor, append_value: torch.Tensor,
                          batch_indices: torch.Tensor, positions: torch.Tensor, paged_kv_cache,
                          kv_indices: torch.Tensor, kv_indptr: torch.Tensor,
                          kv_last_page_len: torch.Tensor, kv_layout: str = "NHD") -> None:
    """Write new tokens' k/v into a paged cache, in place.

    Parameters
    ----------
    append_key, append_value : [nnz, num_kv_heads, head_dim], the cache's dtype
    batch_indices, positions : int32 [nnz] (see get_batch_indices_positions)
    paged_kv_cache : [max_pages, 2, page_size, H, D] (NHD) / [max_pages, 2, H, page_size, D]
        (HND) or a (k_cache, v_cache) tuple
    kv_indices, kv_indptr, kv_last_page_len : int32 page table that already covers the new
        tokens (kv_last_page_len is accepted for FlashInfer's signature; positions say where)

    In eager mode a batch index outside the table, a position outside its request's KV
    length ((pages - 1) * page_size + kv_last_page_len) or a page outside the cache raises
    ValueError before anything is written (one host sync; skipped while tracing/capturing).
    """
    check_layout(kv_layout)
    k_cache, v_cache = unpack_paged_cache(paged_kv_cache, kv_layout)
    dev = k_cache.device
    heads, dim = k_cache.shape[2:]
    check_tensor("append_key", append_key, dtypes=(k_cache.dtype,), ndim=3, device=dev)
    nnz = append_key.shape[0]
    check_tensor("append_key", append_key, shape=(nnz, heads, dim))
    check_tensor("append_value", append_value, dtypes=KV_DTYPES, shape=(nnz, heads, dim),
                 device=dev)
    if append_value.dtype != k_cache.dtype:
        raise ValueError(f"append_value must be {k_cache.dtype}, got {append_value.dtype}")
    for name, t, shape in (("batch_indices", batch_indices, (nnz,)), ("positions", positions, (nnz,)),
                           ("kv_indices", kv_indices, None), ("kv_indptr", kv_indptr, None)):
        check_tensor(name, t, dtypes=INDEX_DTYPES, ndim=1, shape=shape, device=dev)
    check_tensor("kv_last_page_len", kv_last_page_len, dtypes=INDEX_DTYPES,
                 shape=(kv_indptr.shape[0] - 1,), device=dev)
    if host_checks_enabled() and not k_cache.is_meta:  # meta: nothing is read or written
        page_size = k_cache.shape[1]
        _check_append_targets(batch_indices, positions, kv_indices, kv_indptr, kv_last_page_len,
                              page_size, k_cache.shape[0])
    # The cache views of the halves (strided for HND) are passed as [pages, page_size|H, ...]
    # in storage order so that the op mutates the caller's tensors.
    if kv_layout == "HND":
        k_store, v_store = k_cache.transpose(1, 2), v_cache.transpose(1, 2)
    else:
        k_store, v_store = k_cache, v_cache
    eager_or_op(_append_op, _append_impl)(append_key, append_value, batch_indices, positions,
                                        k_store, v_store, kv_indices, kv_indptr,
                                        kv_layout == "HND")
