"""Input checks of the attention ops (decode, prefill, page, cascade): dtypes, layouts, scalars,
page tables and run() inputs; each failure is a ValueError naming the argument."""
from __future__ import annotations

import math

import numpy as np
import torch

from .._common.backends import resolve_backend
from .._common.checks import INT32_DTYPES, check_int, check_readable, check_tensor
from .plan import AttentionPlan

KV_DTYPES = (torch.float16, torch.bfloat16)
FP8_KV_DTYPES = (torch.float8_e4m3fn,)  # decode's KV cache only, with run(k_scale=, v_scale=)
DECODE_KV_DTYPES = KV_DTYPES + FP8_KV_DTYPES
INDEX_DTYPES = INT32_DTYPES
MAX_HEAD_DIM = 512  # the Triton kernels keep a [tile, head_dim] block in registers
_DTYPE_NAMES = {"float16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16,
                "float8_e4m3fn": torch.float8_e4m3fn, "e4m3": torch.float8_e4m3fn}


def as_dtype(name: str, value, default=None, allowed=KV_DTYPES) -> torch.dtype:
    if value is None and default is not None:
        return default
    value = _DTYPE_NAMES.get(value, value) if isinstance(value, str) else value
    if value not in allowed:
        names = " or ".join(f"torch.{str(d).split('.')[-1]}" for d in allowed)
        raise ValueError(f"{name} must be {names}, got {value!r}")
    return value


def attn_backend(backend: str, device: torch.device, *, decode: bool = False) -> str:
    """The attention_decode or attention_prefill row of the backend table
    (ops/_common/backends.py)."""
    return resolve_backend("attention_decode" if decode else "attention_prefill", backend, device)


def check_layout(kv_layout):
    if kv_layout not in ("NHD", "HND"):
        raise ValueError(f"kv_layout must be 'NHD' or 'HND', got {kv_layout!r}")


def check_scalars(window_left, logits_soft_cap, sm_scale, head_dim):
    """(window_left, soft_cap or 0.0, sm_scale) checked, with the sm_scale default 1/sqrt(D)."""
    window_left = check_int("window_left", window_left, -1)
    if logits_soft_cap is not None:
        if isinstance(logits_soft_cap, bool) or not isinstance(logits_soft_cap, (int, float)) \
                or not math.isfinite(logits_soft_cap) or logits_soft_cap < 0:
            raise ValueError(f"logits_soft_cap must be None or a finite float >= 0, got "
                             f"{logits_soft_cap!r}")
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(head_dim)
    elif isinstance(sm_scale, bool) or not isinstance(sm_scale, (int, float)) \
            or not math.isfinite(sm_scale):
        raise ValueError(f"sm_scale must be None or a finite float, got {sm_scale!r}")
    return window_left, float(logits_soft_cap or 0.0), float(sm_scale)


def check_heads(num_qo_heads, num_kv_heads):
    check_int("num_qo_heads", num_qo_heads, 1)
    check_int("num_kv_heads", num_kv_heads, 1)
    if num_qo_heads % num_kv_heads:
        raise ValueError(f"num_kv_heads ({num_kv_heads}) must divide num_qo_heads "
                         f"({num_qo_heads})")


def check_single_kv(q: torch.Tensor, k, v, kv_layout: str, kv_dtypes=()) -> tuple[int, int]:
    """A single request's k/v against q ([..., num_qo_heads, head_dim]): 3-D, q's dtype (or one
    of ``kv_dtypes``, the same for both), equal shapes, q's head_dim, num_kv_heads dividing
    num_qo_heads. Returns (kv_len, num_kv_heads)."""
    heads, dim = q.shape[-2], q.shape[-1]
    # The wrappers' bounds (check_heads, head_dim in plan()): 0 heads or head_dim 0 would divide
    # by zero in the GQA group and 1/sqrt(head_dim).
    if heads < 1:
        raise ValueError(f"q must have num_qo_heads >= 1, got shape {tuple(q.shape)}")
    if not 1 <= dim <= MAX_HEAD_DIM:
        raise ValueError(f"q's head_dim must be in [1, {MAX_HEAD_DIM}], got shape "
                         f"{tuple(q.shape)}")
    for name, t in (("k", k), ("v", v)):
        check_tensor(name, t, dtypes=(q.dtype,) + tuple(kv_dtypes), ndim=3, device=q.device,
                     last_dim_contiguous=True)
    if v.dtype != k.dtype:
        raise ValueError(f"v must have k's dtype {k.dtype}, got {v.dtype}")
    if v.shape != k.shape:
        raise ValueError(f"v must have k's shape {tuple(k.shape)}, got {tuple(v.shape)}")
    kv_len, num_kv_heads = k.shape[:2] if kv_layout == "NHD" else (k.shape[1], k.shape[0])
    if num_kv_heads < 1:
        raise ValueError(f"k must have num_kv_heads >= 1, got shape {tuple(k.shape)} "
                         f"({kv_layout})")
    if k.shape[2] != dim:
        raise ValueError(f"k must have head_dim {dim} (q's), got {k.shape[2]}")
    if heads % num_kv_heads:
        raise ValueError(f"k's num_kv_heads ({num_kv_heads}) must divide q's num_qo_heads "
                         f"({heads})")
    return kv_len, num_kv_heads


def unpack_paged_cache(paged_kv_cache, kv_layout: str, kv_dtypes=KV_DTYPES):
    """(k, v) as [max_pages, page_size, H, D] views of the cache (strided for HND)."""
    if isinstance(paged_kv_cache, (tuple, list)):
        if len(paged_kv_cache) != 2:
            raise ValueError(f"paged_kv_cache as a tuple must be (k_cache, v_cache), got "
                             f"{len(paged_kv_cache)} items")
        k, v = paged_kv_cache
        check_tensor("paged_kv_cache[0]", k, dtypes=kv_dtypes, ndim=4, last_dim_contiguous=True)
        check_tensor("paged_kv_cache[1]", v, dtypes=(k.dtype,), shape=k.shape, device=k.device,
                     last_dim_contiguous=True)
    else:
        check_tensor("paged_kv_cache", paged_kv_cache, dtypes=kv_dtypes, ndim=5,
                     last_dim_contiguous=True)
        if paged_kv_cache.shape[1] != 2:
            raise ValueError(f"paged_kv_cache must be [max_pages, 2, ...] (k and v), got shape "
                             f"{tuple(paged_kv_cache.shape)}")
        k, v = paged_kv_cache[:, 0], paged_kv_cache[:, 1]
    if kv_layout == "HND":
        k, v = k.transpose(1, 2), v.transpose(1, 2)
    return k, v


def check_indptr(name, indptr, n_rows: int | None = None) -> np.ndarray:
    check_tensor(name, indptr, dtypes=INDEX_DTYPES, ndim=1)
    check_readable(name, indptr)
    ptr = indptr.cpu().numpy().astype(np.int64)
    if ptr.size < 1 or ptr[0] != 0:
        raise ValueError(f"{name} must start at 0 and have batch + 1 entries")
    if np.any(np.diff(ptr) < 0):
        raise ValueError(f"{name} must be non-decreasing, got a drop at index "
                         f"{int(np.argmax(np.diff(ptr) < 0))}")
    return ptr


def check_run_inputs(plan: AttentionPlan, q, paged_kv_cache, kv_layout, device, q_shape,
                     kv_dtypes=KV_DTYPES):
    check_tensor("q", q, dtypes=(plan.q_dtype,), shape=q_shape, device=device,
                 last_dim_contiguous=True)
    k, v = unpack_paged_cache(paged_kv_cache, kv_layout, kv_dtypes)
    if k.dtype != plan.kv_dtype or k.device != device:
        raise ValueError(f"paged_kv_cache must be {plan.kv_dtype} on {device} (as planned), got "
                         f"{k.dtype} on {k.device}")
    want = (plan.page_size, plan.num_kv_heads, plan.head_dim)
    if tuple(k.shape[1:]) != want:
        raise ValueError(f"paged_kv_cache must hold pages of (page_size, num_kv_heads, head_dim) = "
                         f"{want} in {kv_layout} order (as planned), got {tuple(k.shape[1:])}")
    if plan.max_page >= k.shape[0]:
        raise ValueError(f"indices reach page {plan.max_page} but paged_kv_cache has only "
                         f"{k.shape[0]} pages")
    return k, v


def check_outputs(plan: AttentionPlan, q, out, lse):
    shape = (q.shape[0], plan.num_qo_heads, plan.head_dim)
    o_dtype = plan.o_dtype or q.dtype
    if out is None:
        out = torch.empty(shape, dtype=o_dtype, device=q.device)
    else:
        check_tensor("out", out, dtypes=(o_dtype,), shape=shape, device=q.device,
                     last_dim_contiguous=True)
    if lse is None:
        lse = torch.empty(shape[:2], dtype=torch.float32, device=q.device)
    else:
        check_tensor("lse", lse, dtypes=(torch.float32,), shape=shape[:2], device=q.device)
    return out, lse


def check_mask(custom_mask, qo_ptr, kv_lens, device):
    """custom_mask: bool, flattened per request ([qo_len_i, kv_len_i] row-major, concatenated).
    Returns (the mask as flat uint8, its per-request offsets int64 [batch + 1]) or Nones."""
    if custom_mask is None:
        return None, None
    sizes = np.diff(qo_ptr) * kv_lens
    check_tensor("custom_mask", custom_mask, dtypes=(torch.bool,), device=device)
    if custom_mask.numel() != int(sizes.sum()):
        raise ValueError(f"custom_mask must hold sum(qo_len * kv_len) = {int(sizes.sum())} "
                         f"booleans, got {custom_mask.numel()}")
    # A copy, as the page table's: run() reads what plan() was given, not the caller's tensor.
    return custom_mask.reshape(-1).view(torch.uint8).clone(), np.cumsum([0, *sizes])
