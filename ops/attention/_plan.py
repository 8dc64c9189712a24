"""Shared machinery of the attention wrappers: input checks, the host-side plan, and the one
custom op (flashkit::attention_run) that every decode/prefill run launches through."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from .._common.backends import resolve_backend
from .._common.checks import INT32_DTYPES, check_int, check_tensor
from .._common.custom_op import custom_op, eager_or_op
from . import reference
from .variants import AttentionVariant

KV_DTYPES = (torch.float16, torch.bfloat16)
FP8_KV_DTYPES = (torch.float8_e4m3fn,)  # decode's KV cache only, with run(k_scale=, v_scale=)
DECODE_KV_DTYPES = KV_DTYPES + FP8_KV_DTYPES
INDEX_DTYPES = INT32_DTYPES


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
    for name, t in (("k", k), ("v", v)):
        check_tensor(name, t, dtypes=(q.dtype,) + tuple(kv_dtypes), ndim=3, device=q.device,
                     last_dim_contiguous=True)
    if v.dtype != k.dtype:
        raise ValueError(f"v must have k's dtype {k.dtype}, got {v.dtype}")
    if v.shape != k.shape:
        raise ValueError(f"v must have k's shape {tuple(k.shape)}, got {tuple(v.shape)}")
    kv_len, num_kv_heads = k.shape[:2] if kv_layout == "NHD" else (k.shape[1], k.shape[0])
    if k.shape[2] != dim:
        raise ValueError(f"k must have head_dim {dim} (q's), got {k.shape[2]}")
    if heads % num_kv_heads:
        raise ValueError(f"k's num_kv_heads ({num_kv_heads}) must divide q's num_qo_heads "
                         f"({heads})")
    return kv_len, num_kv_heads


def kv_views(k: torch.Tensor, v: torch.Tensor, kv_layout: str):
    """Single-request k/v ([kv_len, H, D] NHD or [H, kv_len, D] HND) as 4-D
    [1, kv_len, H, D] views (one page holding every token), the kernels' paged form."""
    if kv_layout == "HND":
        k, v = k.transpose(0, 1), v.transpose(0, 1)
    return k[None], v[None]


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


def check_page_table(indptr, indices, last_page_len, page_size: int, names=("indptr", "indices",
                     "last_page_len")) -> tuple[np.ndarray, int]:
    """Host checks of a CSR page table; returns (kv_lens int64 [batch], max page index or -1).
    A request without pages is empty (its last_page_len may be 0)."""
    n_ptr, n_idx, n_last = names
    check_tensor(n_ptr, indptr, dtypes=INDEX_DTYPES, ndim=1)
    check_tensor(n_idx, indices, dtypes=INDEX_DTYPES, ndim=1)
    check_tensor(n_last, last_page_len, dtypes=INDEX_DTYPES, ndim=1)
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
        raise ValueError(f"{n_ptr}[-1] ({int(ptr[-1])}) exceeds the {idx.size} entries of {n_idx}")
    if last.size != ptr.size - 1:
        raise ValueError(f"{n_last} must have batch = {ptr.size - 1} entries, got {last.size}")
    pages = np.diff(ptr)
    bad = (pages > 0) & ((last < 1) | (last > page_size)) | (pages == 0) & ((last < 0) | (last > page_size))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{n_last}[{i}] must be in [1, page_size={page_size}], got {int(last[i])}")
    used = idx[:ptr[-1]]
    if used.size and used.min() < 0:
        raise ValueError(f"{n_idx} must be non-negative page numbers, got {int(used.min())}")
    kv_lens = np.where(pages > 0, (pages - 1) * page_size + last, 0)
    return kv_lens, int(used.max()) if used.size else -1


def check_indptr(name, indptr, n_rows: int | None = None) -> np.ndarray:
    check_tensor(name, indptr, dtypes=INDEX_DTYPES, ndim=1)
    ptr = indptr.cpu().numpy().astype(np.int64)
    if ptr.size < 1 or ptr[0] != 0:
        raise ValueError(f"{name} must start at 0 and have batch + 1 entries")
    if np.any(np.diff(ptr) < 0):
        raise ValueError(f"{name} must be non-decreasing, got a drop at index "
                         f"{int(np.argmax(np.diff(ptr) < 0))}")
    return ptr


@dataclasses.dataclass(eq=False)
class AttentionPlan:
    """What plan() computed on the host, with its index tensors already on the device.

    items int32 [6, n_items_pad]: request, q_start, q_end, kv_start, kv_end, output row.
    Decode items write partial states at rows 0..n_items-1 of the workspace, merged per request
    over ``merge_indptr``; prefill items write the output rows directly.

    ``num_items`` (int32 [1] on the device) marks a CUDA-graph plan: run() launches the fixed
    grid of ``items.shape[1]`` programs and those at or past ``num_items[0]`` exit at once.
    """

    decode: bool
    paged: bool
    batch: int
    nnz_qo: int
    num_qo_heads: int
    num_kv_heads: int
    head_dim: int
    page_size: int
    causal: bool
    window_left: int
    soft_cap: float
    sm_scale: float
    q_dtype: torch.dtype | None
    kv_dtype: torch.dtype | None
    n_items: int
    max_page: int  # highest page (paged) or token (ragged) index the page table reads
    items: torch.Tensor
    qo_indptr: torch.Tensor
    kv_indptr: torch.Tensor
    kv_indices: torch.Tensor
    kv_lens: torch.Tensor
    merge_indptr: torch.Tensor
    mask: torch.Tensor | None = None
    mask_indptr: torch.Tensor | None = None
    variant: AttentionVariant | None = None
    num_items: torch.Tensor | None = None

    @property
    def n_programs(self) -> int:
        """The attention kernel's grid (x KV heads): the fixed capacity of a CUDA-graph plan,
        the real item count otherwise."""
        return self.items.shape[1] if self.num_items is not None else self.n_items

    def workspace_bytes(self) -> int:
        """Partial outputs and LSEs of the split-KV items (float32)."""
        if not self.decode:
            return 0
        return self.items.shape[1] * self.num_qo_heads * (self.head_dim + 1) * 4


def items_tensor(cols: list[np.ndarray], device, pad_to: int | None = None) -> torch.Tensor:
    n = cols[0].size
    width = max(n, pad_to or 0, 1)
    arr = np.zeros((6, width), dtype=np.int32)
    for r, c in enumerate(cols):
        arr[r, :n] = c
    return torch.from_numpy(arr).to(device, non_blocking=True)


def int32(x, device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.int32)).to(device, non_blocking=True)


# ----------------------------------------------------------------------------- the custom op
_VARIANTS: dict[str, AttentionVariant] = {}


class PlannedWrapper:
    """What every batch wrapper holds: the workspace (whose device is the wrapper's), the KV
    layout, the backend, the current plan, and the fixed buffers of use_cuda_graph=True."""

    def _init_wrapper(self, float_workspace_buffer: torch.Tensor, kv_layout: str, backend: str,
                      decode: bool = False) -> None:
        check_tensor("float_workspace_buffer", float_workspace_buffer)
        check_layout(kv_layout)
        self._workspace = float_workspace_buffer
        self._kv_layout = kv_layout
        self._backend = attn_backend(backend, float_workspace_buffer.device, decode=decode)
        self._plan: AttentionPlan | None = None
        self._graph = None

    @property
    def is_cuda_graph_enabled(self) -> bool:
        return self._graph is not None

    @property
    def device(self) -> torch.device:
        return self._workspace.device


def variant_key(variant: AttentionVariant | None) -> str:
    if variant is None:
        return ""
    key = f"{variant.name}:{hash(variant)}"
    _VARIANTS[key] = variant
    return key


def _torch_run(q, k, v, out, lse, qo_indptr, kv_indptr, kv_indices, kv_lens, mask, mask_indptr,
               variant_args, paged, causal, window_left, soft_cap, sm_scale, variant, k_scale,
               v_scale):
    num_kv_heads = k.shape[2]
    qo = qo_indptr.tolist()
    ptr, idx, lens = kv_indptr.tolist(), kv_indices.tolist(), kv_lens.tolist()
    mptr = mask_indptr.tolist() if mask is not None else None
    logits_fn = None
    if variant is not None and variant.torch_fn is not None:
        def logits_fn(lg, keep, qp, kp, h):
            return variant.torch_fn(lg, keep, qp, kp, h, *variant_args)
    for i in range(len(qo) - 1):
        if paged:
            pages = idx[ptr[i]:ptr[i + 1]]
            kk = k[pages].flatten(0, 1)[:lens[i]]
            vv = v[pages].flatten(0, 1)[:lens[i]]
        else:
            kk = k[0, ptr[i]:ptr[i] + lens[i]]
            vv = v[0, ptr[i]:ptr[i] + lens[i]]
        qo_len = qo[i + 1] - qo[i]
        m = None
        if mask is not None:
            m = mask[mptr[i]:mptr[i] + qo_len * lens[i]].view(qo_len, lens[i])
        o_i, lse_i = reference.naive_single_attention(
            q[qo[i]:qo[i + 1]], kk.reshape(-1, num_kv_heads, k.shape[-1]),
            vv.reshape(-1, num_kv_heads, v.shape[-1]), causal=causal, custom_mask=m,
            window_left=window_left, logits_soft_cap=soft_cap or None, sm_scale=sm_scale,
            logits_fn=_wrap_logits_fn(logits_fn),
            k_scale=k_scale if k_scale != 1.0 else None, v_scale=v_scale if v_scale != 1.0 else None)
        out[qo[i]:qo[i + 1]] = o_i
        lse[qo[i]:qo[i + 1]] = lse_i
    # Rows past the planned ones (a CUDA-graph plan run with padded q): empty, as the kernels.
    out[qo[-1]:] = 0
    lse[qo[-1]:] = float("-inf")


def _wrap_logits_fn(fn):
    if fn is None:
        return None

    def wrapped(logits, q_pos, k_pos, heads):
        keep = torch.ones(logits.shape, dtype=torch.bool, device=logits.device)
        return fn(logits, keep, q_pos, k_pos, heads)
    return wrapped


def _attention_run_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                        lse: torch.Tensor, workspace: torch.Tensor, items: torch.Tensor,
                        qo_indptr: torch.Tensor, kv_indptr: torch.Tensor,
                        kv_indices: torch.Tensor, kv_lens: torch.Tensor,
                        merge_indptr: torch.Tensor, mask: torch.Tensor | None,
                        mask_indptr: torch.Tensor | None, variant_args: list[torch.Tensor],
                        num_items: torch.Tensor | None, n_programs: int, page_size: int,
                        decode: bool, paged: bool, causal: bool, window_left: int,
                        soft_cap: float, sm_scale: float, k_scale: float, v_scale: float,
                        variant: str, backend: str) -> None:
    var = _VARIANTS.get(variant) if variant else None
    if backend == "torch":
        _torch_run(q, k, v, out, lse, qo_indptr, kv_indptr, kv_indices, kv_lens, mask,
                   mask_indptr, variant_args, paged, causal, window_left, soft_cap, sm_scale, var,
                   k_scale, v_scale)
        return
    # The kernels take the dequantization folded in: k_scale into the logits' scale (as
    # FlashInfer does), v_scale into the merge (linear in v).
    sm_scale = sm_scale * k_scale
    from .attention_triton import attention_fwd_triton, merge_varlen_triton

    if backend == "cuda":
        if not decode or var is not None or num_items is not None:
            raise ValueError("backend='cuda' runs decode without a variant or CUDA-graph plan only")
        from .decode_cuda import batch_decode_cuda

        heads, dim = q.shape[1], q.shape[2]
        n_pad = items.shape[1]
        ws = workspace.view(torch.float32)
        part_v = ws[:n_pad * heads * dim].view(n_pad, heads, dim)
        part_s = ws[n_pad * heads * dim:n_pad * heads * (dim + 1)].view(n_pad, heads)
        batch_decode_cuda(q, k, v, part_v, part_s, items, n_pad, n_programs, qo_indptr,
                          kv_indptr, kv_indices, kv_lens, num_kv_heads=k.shape[2],
                          page_size=page_size, paged=paged, window_left=window_left,
                          soft_cap=soft_cap, sm_scale=sm_scale)
        merge_varlen_triton(part_v, part_s, merge_indptr, out, lse, v_scale)
        return

    kw = dict(num_kv_heads=k.shape[2], page_size=page_size, paged=paged, causal=causal,
              window_left=window_left, soft_cap=soft_cap, sm_scale=sm_scale, decode=decode,
              variant=var, variant_args=tuple(variant_args), num_items=num_items)
    n_pad = items.shape[1]
    if not decode:
        if v_scale != 1.0:
            raise ValueError("v_scale is decode only")
        attention_fwd_triton(q, k, v, out, lse, items, n_pad, n_programs, qo_indptr, kv_indptr,
                             kv_indices, kv_lens, mask, mask_indptr, **kw)
        return
    heads, dim = q.shape[1], q.shape[2]
    ws = workspace.view(torch.float32)
    part_v = ws[:n_pad * heads * dim].view(n_pad, heads, dim)
    part_s = ws[n_pad * heads * dim:n_pad * heads * (dim + 1)].view(n_pad, heads)
    attention_fwd_triton(q, k, v, part_v, part_s, items, n_pad, n_programs, qo_indptr,
                         kv_indptr, kv_indices, kv_lens, None, None, **kw)
    merge_varlen_triton(part_v, part_s, merge_indptr, out, lse, v_scale)


attention_run_op = custom_op("attention_run", _attention_run_impl,
                             mutates_args=("out", "lse", "workspace"))


@attention_run_op.register_fake
def _(q, k, v, out, lse, workspace, items, qo_indptr, kv_indptr, kv_indices, kv_lens,
      merge_indptr, mask, mask_indptr, variant_args, num_items, n_programs, page_size, decode,
      paged, causal, window_left, soft_cap, sm_scale, k_scale, v_scale, variant, backend):
    return None


def launch(plan: AttentionPlan, q, k, v, out, lse, workspace, backend: str, variant_args=(), *,
           k_scale: float = 1.0, v_scale: float = 1.0):
    """Run ``plan`` through the custom op (the implementation itself in eager mode).
    ``k_scale``/``v_scale``: the KV cache's dequantization scales (fp8; decode only)."""
    fn = eager_or_op(attention_run_op, _attention_run_impl)
    fn(q, k, v, out, lse, workspace, plan.items, plan.qo_indptr, plan.kv_indptr,
       plan.kv_indices, plan.kv_lens, plan.merge_indptr, plan.mask, plan.mask_indptr,
       list(variant_args), plan.num_items, plan.n_programs, plan.page_size, plan.decode,
       plan.paged, plan.causal, plan.window_left, plan.soft_cap, plan.sm_scale, float(k_scale),
       float(v_scale), variant_key(plan.variant), backend)
