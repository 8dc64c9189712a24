"""transformers' attention hooks served by flashkit's attention ops.

``attention_forward`` is what ``AttentionInterface`` calls for ``attn_implementation="fkit"``
and ``padding_mask`` what ``AttentionMaskInterface`` calls to build that implementation's mask.
The mask is FlashAttention's: None, or the 2-D boolean padding mask of the layer's KV columns;
causality, the sliding window and the soft cap come from the call's keywords, as in
transformers' own flash_attention_2 path.

Every call becomes a batch of requests over the KV that transformers hands in:

- ``cu_seq_lens_q/k`` (packed sequences, continuous batching) or packed ``position_ids`` ->
  BatchPrefillWithRaggedKVCacheWrapper over the [1, H, tokens, D] q/k/v;
- one query token per row (a decode step against the cache) -> BatchDecodeWithPagedKVCacheWrapper;
- anything else (prefill, chunked prefill, left padding) -> BatchPrefillWithPagedKVCacheWrapper;
- a 4-D boolean mask -> the paged prefill wrapper with that mask as ``custom_mask``.

The paged wrappers read the model's [batch, kv_heads, kv_len, head_dim] KV in place: page_size 1
and a page stride equal to the token stride make token t of row b page ``b * m + t`` (``m`` the
row stride over the token stride), so the page table lists exactly the unpadded tokens of each
row and nothing is copied. Only the query rows of a padded batch are gathered.

fp16/bf16 run flashkit's kernels (Triton on CUDA, the torch backend on CPU). flashkit's attention
kernels take no float32: a float32 model on the CPU runs flashkit's float32 reference
(``naive_batch_attention``) on the same page table; on CUDA it raises.
"""
from __future__ import annotations

import itertools
import math

import torch

from . import _state

__all__ = ["attention_forward", "padding_mask"]

MAX_HEAD_DIM = 512  # the attention plans' bound on head_dim (ops/attention/_plan.py)
_WORKSPACE_BYTES = {"cuda": 128 << 20, "cpu": 8 << 20}  # FlashInfer's default is 128 MiB
_workspaces: dict = {}
_MAX_PLANS = 8  # a forward needs one per mask type (full / sliding): a few steps' worth
_plans: dict = {}


def _unsupported(what: str, instead: str = "'sdpa' or 'eager'") -> ValueError:
    return ValueError(f"attn_implementation='fkit' does not support {what}; use "
                      f"attn_implementation={instead} for this model or call")


def padding_mask(batch_size: int, q_length: int, kv_length: int, q_offset=0, kv_offset: int = 0,
                 mask_function=None, attention_mask: torch.Tensor | None = None, **kwargs):
    """AttentionMaskInterface hook: None (no padding) or a bool [batch, kv_length] mask of the
    layer's KV columns (True: a real token).

    Custom mask functions (``or_mask_function`` / ``and_mask_function``, which transformers
    marks with ``use_vmap=True``) change the pattern per element: they cannot be expressed as
    causal + window + padding and raise instead of being dropped.
    """
    if kwargs.get("use_vmap"):
        raise _unsupported("custom mask functions (or_mask_function / and_mask_function)")
    if attention_mask is None:
        # A static cache holds more KV slots than tokens seen: those past the query are empty.
        seen = q_offset + q_length - int(kv_offset)
        if isinstance(seen, int) and seen >= int(kv_length):
            return None
        cols = torch.arange(int(kv_length), device=kwargs.get("device", "cpu"))
        return (cols[None, :] < seen).expand(batch_size, -1)
    if attention_mask.dim() != 2:
        raise _unsupported(f"a {attention_mask.dim()}-D attention_mask in the mask hook")
    mask = attention_mask.to(torch.bool)
    end = int(kv_offset) + int(kv_length)
    if mask.shape[1] < end:  # static caches: slots not yet written are not attended to
        mask = torch.nn.functional.pad(mask, (0, end - mask.shape[1]), value=False)
    mask = mask[:, int(kv_offset):end]
    return None if bool(mask.all()) else mask


def _workspace(device: torch.device) -> torch.Tensor:
    key = (device.type, device.index)
    if key not in _workspaces:
        size = _WORKSPACE_BYTES.get(device.type, _WORKSPACE_BYTES["cpu"])
        _workspaces[key] = torch.empty(size, dtype=torch.uint8, device=device)
    return _workspaces[key]


def _paged_view(t: torch.Tensor):
    """[B, H, L, D] -> ([pages, 1, H, D] view, m): token t of row b is page b * m + t."""
    batch, heads, length, dim = t.shape
    st = t.stride(2)
    if t.stride(3) != 1 or st <= 0 or (batch > 1 and t.stride(0) % st):
        t = t.contiguous()
        st = t.stride(2)
    m = t.stride(0) // st if batch > 1 else 0
    pages = (batch - 1) * m + length
    view = t.as_strided((pages, 1, heads, dim), (st, st, t.stride(1), 1), t.storage_offset())
    return view, m


def _page_table(valid: torch.Tensor, m: int):
    """valid bool [B, L] -> (indptr, indices, last_page_len) int32 over page size 1."""
    counts = valid.sum(1)
    indptr = torch.zeros(valid.shape[0] + 1, dtype=torch.int32, device=valid.device)
    indptr[1:] = counts.cumsum(0)
    rows, toks = valid.nonzero(as_tuple=True)
    indices = (rows * m + toks).to(torch.int32)
    return indptr, indices, (counts > 0).to(torch.int32)


def _check_call(module, query, key, value, dropout, kwargs):
    if dropout and dropout > 0:
        raise _unsupported(f"attention dropout ({dropout})", "'eager' or 'sdpa' (training)")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
        raise _unsupported("backward (flashkit's attention kernels are forward only)",
                           "'sdpa' for training, or run under torch.no_grad()")
    if kwargs.get("cache") is not None:
        # Continuous batching passes its PagedAttentionCache here for the implementation to
        # update and read; this hook never does, so it would attend to the new tokens only.
        raise _unsupported("transformers' continuous batching (PagedAttentionCache; "
                           "docs/integrations.md says why)", "'sdpa' or 'paged|eager'")
    for name in ("s_aux", "position_bias"):
        if kwargs.get(name) is not None:
            raise _unsupported(f"`{name}`")
    if getattr(module, "sinks", None) is not None:
        raise _unsupported("attention sinks")
    if value.shape[-1] != query.shape[-1]:
        raise _unsupported(f"a value head_dim ({value.shape[-1]}) unlike the query's "
                           f"({query.shape[-1]})")
    if not 1 <= query.shape[-1] <= MAX_HEAD_DIM:
        raise _unsupported(f"head_dim {query.shape[-1]} (flashkit serves 1..{MAX_HEAD_DIM})")
    if query.shape[1] % key.shape[1]:
        raise _unsupported(f"{query.shape[1]} query heads over {key.shape[1]} KV heads")
    if query.dtype in (torch.float16, torch.bfloat16):
        return False
    if query.dtype == torch.float32 and query.device.type == "cpu":
        return True  # flashkit's float32 reference (see the module docstring)
    raise _unsupported(f"{query.dtype} on {query.device.type} (flashkit's attention kernels take "
                       f"float16/bfloat16: load the model with dtype=torch.bfloat16)")


def _options(module, is_causal, sliding_window, softcap, scaling, head_dim):
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    config = getattr(module, "config", None)
    causal = bool(causal) and getattr(config, "is_causal", True) is not False
    window_left = -1
    if sliding_window is not None:
        if not causal:
            raise _unsupported("a bidirectional sliding window (flashkit's window is causal)")
        window_left = int(sliding_window) - 1  # transformers keeps kv > q - sliding_window
    return dict(causal=causal, window_left=window_left,
                logits_soft_cap=float(softcap) if softcap else None,
                sm_scale=float(scaling) if scaling is not None else 1.0 / math.sqrt(head_dim))


def attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                      value: torch.Tensor, attention_mask: torch.Tensor | None,
                      dropout: float = 0.0, scaling: float | None = None,
                      is_causal: bool | None = None, sliding_window: int | None = None,
                      softcap: float | None = None, **kwargs):
    """AttentionInterface hook.

    Parameters
    ----------
    query : [batch, num_heads, q_len, head_dim];  key, value : [batch, kv_heads, kv_len, head_dim]
    attention_mask : None, bool [batch, kv_len] (from :func:`padding_mask`) or bool
        [batch, 1 | heads, q_len, kv_len]
    dropout, scaling, is_causal, sliding_window, softcap : transformers' keywords
    cu_seq_lens_q, cu_seq_lens_k, max_length_q, max_length_k, position_ids : packed sequences

    Returns
    -------
    (out [batch, q_len, num_heads, head_dim], None)
    """
    reference = _check_call(module, query, key, value, dropout, kwargs)
    opts = _options(module, is_causal, sliding_window, softcap, scaling, query.shape[-1])
    batch, heads, q_len, dim = query.shape
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if cu_q is None and attention_mask is None and q_len == key.shape[2]:
        cu_q = cu_k = _packed_from_positions(kwargs.get("position_ids"), batch, q_len)
    if cu_q is not None or cu_k is not None:
        if cu_q is None or cu_k is None or batch != 1:
            raise _unsupported("cu_seq_lens_q without cu_seq_lens_k, or packed rows in a batch "
                               "of more than one")
        out = _ragged(query, key, value, cu_q, cu_k, opts, reference)
        return out.view(1, -1, heads, dim), None
    if attention_mask is not None and attention_mask.dim() == 4:
        return _custom_mask(query, key, value, attention_mask, opts, reference), None
    if attention_mask is not None and attention_mask.dim() != 2:
        raise _unsupported(f"a {attention_mask.dim()}-D attention_mask")
    return _padded(query, key, value, attention_mask, opts, reference), None


def _packed_from_positions(position_ids, batch, q_len):
    """cu_seqlens of the sequences packed in one row (positions restart), or None."""
    if position_ids is None or q_len < 2:
        return None
    pos = position_ids.reshape(-1, position_ids.shape[-1])
    starts = torch.diff(pos, dim=-1) != 1
    if not bool(starts.any()):
        return None
    if batch != 1 or pos.shape[0] != 1:
        raise _unsupported("packed sequences in a batch of more than one row (pack into one row)")
    idx = starts[0].nonzero().flatten() + 1
    edges = [torch.zeros(1, dtype=idx.dtype, device=idx.device), idx,
             torch.full((1,), q_len, dtype=idx.dtype, device=idx.device)]
    return torch.cat(edges).to(torch.int32)


def _ragged(query, key, value, cu_q, cu_k, opts, reference):
    import flashkit

    q = query[0].transpose(0, 1)  # [tokens, H, D] views of the [1, H, tokens, D] inputs
    k, v = key[0].transpose(0, 1), value[0].transpose(0, 1)
    cu_q, cu_k = cu_q.to(torch.int32), cu_k.to(torch.int32)
    if reference:
        from flashkit.ops.attention import naive_batch_attention

        ptr = cu_k.tolist()
        kv = [(k[a:b], v[a:b]) for a, b in itertools.pairwise(ptr)]
        return naive_batch_attention(q, cu_q, kv, **opts)[0]
    w = flashkit.BatchPrefillWithRaggedKVCacheWrapper(
        float_workspace_buffer=_workspace(q.device), kv_layout="NHD",
        backend=_state.attention_backend())
    w.plan(qo_indptr=cu_q, kv_indptr=cu_k, num_qo_heads=q.shape[1], num_kv_heads=k.shape[1],
           head_dim_qk=q.shape[2], q_data_type=q.dtype, kv_data_type=k.dtype, **opts)
    return w.run(q=q, k=k, v=v)


def _padded(query, key, value, mask, opts, reference):
    batch, heads, q_len, dim = query.shape
    k_pages, m = _paged_view(key)
    v_pages, _ = _paged_view(value)
    # Every layer of a forward (of one mask type) plans the same batch: plan once, run per layer.
    plan_key = (batch, q_len, key.shape[2], m, heads, key.shape[1], dim, query.dtype, key.dtype,
                query.device, tuple(sorted(opts.items())), _state.attention_backend(), reference,
                id(mask), getattr(mask, "_version", 0))
    hit = _plans.get(plan_key)
    if hit is None or hit[0] is not mask:
        q_valid, table = _padded_table(query, key, mask, opts, m)
        hit = (mask, q_valid, _planned(q_valid, table, k_pages.shape[2], heads, dim, query.dtype,
                                       key.dtype, q_len == 1, opts, reference))
        _plans[plan_key] = hit
        while len(_plans) > _MAX_PLANS:
            _plans.pop(next(iter(_plans)))
    _, q_valid, run = hit
    o = run(query.transpose(1, 2)[q_valid], k_pages, v_pages)  # the real query tokens only
    out = query.new_zeros(batch, q_len, heads, dim)
    out[q_valid] = o
    return out


def _padded_table(query, key, mask, opts, m):
    """(q_valid bool [batch, q_len], (qo_indptr, indptr, indices, last_page_len))."""
    batch, _, q_len, _ = query.shape
    kv_len = key.shape[2]
    kv_valid = (torch.ones(batch, kv_len, dtype=torch.bool, device=query.device) if mask is None
                else mask.to(device=query.device, dtype=torch.bool))
    if tuple(kv_valid.shape) != (batch, kv_len):
        raise _unsupported(f"a padding mask of shape {tuple(kv_valid.shape)} for KV of "
                           f"{kv_len} tokens")
    if opts["window_left"] >= 0 and mask is not None:
        _check_contiguous_runs(kv_valid)
    if not opts["causal"]:  # queries need not be KV tokens (cross-attention): all rows run
        q_valid = torch.ones(batch, q_len, dtype=torch.bool, device=query.device)
    elif q_len > kv_len:
        raise _unsupported(f"more query tokens ({q_len}) than KV tokens ({kv_len})")
    elif q_len < kv_len and not bool(kv_valid[:, -1].all()):
        # The queries are taken as the newest KV tokens; a static cache's empty tail slots
        # would put them elsewhere.
        raise _unsupported("KV with empty slots after the query (a StaticCache); use the "
                           "default DynamicCache")
    else:
        q_valid = kv_valid[:, kv_len - q_len:]
    qo_indptr = torch.zeros(batch + 1, dtype=torch.int32, device=query.device)
    qo_indptr[1:] = q_valid.sum(1).cumsum(0)
    return q_valid, (qo_indptr, *_page_table(kv_valid, m))


def _check_contiguous_runs(valid: torch.Tensor):
    """A window counts tokens: dropping padding keeps distances only if each row's real tokens
    are one run (left or right padding)."""
    v = valid.to(torch.int8)
    runs = (torch.diff(v, dim=1, prepend=torch.zeros_like(v[:, :1])) == 1).sum(1)
    if bool((runs > 1).any()):
        raise _unsupported("a sliding window over a padding mask with holes (padding inside a "
                           "row)")


def _planned(q_valid, table, num_kv_heads, heads, dim, q_dtype, kv_dtype, decode, opts,
             reference):
    """run(q_rows, k_pages, v_pages) -> o over a page table planned once."""
    import flashkit

    qo_indptr, indptr, indices, last = table
    if reference:
        from flashkit.ops.attention import naive_batch_attention, naive_gather_paged_kv

        def run_reference(q, k_pages, v_pages):
            kv = naive_gather_paged_kv((k_pages, v_pages), indptr, indices, last)
            return naive_batch_attention(q, qo_indptr, kv, **opts)[0]
        return run_reference
    common = dict(num_qo_heads=heads, num_kv_heads=num_kv_heads, page_size=1,
                  q_data_type=q_dtype, kv_data_type=kv_dtype, window_left=opts["window_left"],
                  logits_soft_cap=opts["logits_soft_cap"], sm_scale=opts["sm_scale"])
    ws = _workspace(qo_indptr.device)
    if decode and bool(q_valid.all()):
        w = flashkit.BatchDecodeWithPagedKVCacheWrapper(
            float_workspace_buffer=ws, kv_layout="NHD", backend=_state.attention_backend())
        w.plan(indptr=indptr, indices=indices, last_page_len=last, head_dim=dim, **common)
    else:
        w = flashkit.BatchPrefillWithPagedKVCacheWrapper(
            float_workspace_buffer=ws, kv_layout="NHD", backend=_state.attention_backend())
        w.plan(qo_indptr=qo_indptr, paged_kv_indptr=indptr, paged_kv_indices=indices,
               paged_kv_last_page_len=last, head_dim_qk=dim, causal=opts["causal"], **common)
    return lambda q, k_pages, v_pages: w.run(q=q, paged_kv_cache=(k_pages, v_pages))


def _custom_mask(query, key, value, mask, opts, reference):
    """A prepared 4-D mask: exact, through ``custom_mask`` (which replaces causal and window)."""
    import flashkit

    if mask.dtype != torch.bool:
        raise _unsupported(f"a 4-D {mask.dtype} (additive) attention_mask; pass a boolean one")
    batch, heads, q_len, dim = query.shape
    kv_len = key.shape[2]
    if mask.shape[1] != 1 or tuple(mask.shape[2:]) != (q_len, kv_len):
        raise _unsupported(f"a 4-D mask of shape {tuple(mask.shape)} (want [batch, 1, {q_len}, "
                           f"{kv_len}])")
    mask = mask.expand(batch, 1, q_len, kv_len)[:, 0]
    opts = dict(opts, window_left=-1)
    q = query.transpose(1, 2).reshape(batch * q_len, heads, dim)
    qo_indptr = torch.arange(0, (batch + 1) * q_len, q_len, dtype=torch.int32,
                             device=query.device)
    k_pages, m = _paged_view(key)
    v_pages, _ = _paged_view(value)
    indptr, indices, last = _page_table(torch.ones(batch, kv_len, dtype=torch.bool,
                                                   device=query.device), m)
    if reference:
        from flashkit.ops.attention import naive_batch_attention, naive_gather_paged_kv

        kv = naive_gather_paged_kv((k_pages, v_pages), indptr, indices, last)
        o = naive_batch_attention(q, qo_indptr, kv, custom_masks=list(mask),
                                  **dict(opts, causal=False))[0]
    else:
        w = flashkit.BatchPrefillWithPagedKVCacheWrapper(
            float_workspace_buffer=_workspace(q.device), kv_layout="NHD",
            backend=_state.attention_backend())
        w.plan(qo_indptr=qo_indptr, paged_kv_indptr=indptr, paged_kv_indices=indices,
               paged_kv_last_page_len=last, num_qo_heads=heads, num_kv_heads=key.shape[1],
               head_dim_qk=dim, page_size=1, causal=False, custom_mask=mask.reshape(-1),
               q_data_type=q.dtype, kv_data_type=key.dtype, **{k: opts[k] for k in (
                   "window_left", "logits_soft_cap", "sm_scale")})
        o = w.run(q=q, paged_kv_cache=(k_pages, v_pages))
    return o.view(batch, q_len, heads, dim)
