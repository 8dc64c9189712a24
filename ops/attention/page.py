"""Paged KV cache writes: append_paged_kv_cache and get_batch_indices_positions (FlashInfer's).

Plain torch indexing, vectorized on the device (no host sync): one gather of each token's page
and one scatter of its k/v row; registered as a custom op that mutates the cache.
"""
from __future__ import annotations

import torch

from .._common.checks import check_tensor
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
    nnz : int, ``append_indptr[-1]`` (given so that no host sync is needed)
    batch_indices, positions : optional int32 [nnz] outputs, written in place (FlashInfer's)

    Returns
    -------
    batch_indices, positions : int32 [nnz]; token j of request i sits at position
    ``seq_lens[i] - append_len_i + j``.
    """
    check_tensor("append_indptr", append_indptr, dtypes=INDEX_DTYPES, ndim=1)
    check_tensor("seq_lens", seq_lens, dtypes=INDEX_DTYPES, shape=(append_indptr.shape[0] - 1,),
                 device=append_indptr.device)
    if isinstance(nnz, bool) or not isinstance(nnz, int) or nnz < 0:
        raise ValueError(f"nnz must be an int >= 0, got {nnz!r}")
    for name, buf in (("batch_indices", batch_indices), ("positions", positions)):
        if buf is not None:
            check_tensor(name, buf, dtypes=(torch.int32,), shape=(nnz,),
                         device=append_indptr.device)
    counts = (append_indptr[1:] - append_indptr[:-1]).long()
    batch = torch.repeat_interleave(torch.arange(counts.shape[0], device=counts.device), counts,
                                    output_size=nnz)
    j = torch.arange(nnz, device=counts.device) - append_indptr.long()[batch]
    pos = seq_lens.long()[batch] - counts[batch] + j
    outs = []
    for value, buf in ((batch, batch_indices), (pos, positions)):
        outs.append(value.to(torch.int32) if buf is None else buf.copy_(value))
    return outs[0], outs[1]


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

    A position outside a request's pages is not detected (that would need a host sync): it
    writes into whichever page the table names next, or fails the index bound on the device.
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
    # The cache views of the halves (strided for HND) are passed as [pages, page_size|H, ...]
    # in storage order so that the op mutates the caller's tensors.
    if kv_layout == "HND":
        k_store, v_store = k_cache.transpose(1, 2), v_cache.transpose(1, 2)
    else:
        k_store, v_store = k_cache, v_cache
    eager_or_op(_append_op, _append_impl)(append_key, append_value, batch_indices, positions,
                                        k_store, v_store, kv_indices, kv_indptr,
                                        kv_layout == "HND")
