"""CUDA (NVRTC) paged split-KV decode (templates/attention/decode_cuda.cu.j2,
csrc/attention/decode_cuda.cuh).

The kernel writes the float32 partial states (o, base-2 lse) of every split-KV work item into
the workspace rows the Triton path uses; ``merge_varlen_triton`` then combines them per request
over ``merge_indptr``. One CTA per (work item, KV head, block of its q heads).

backend="auto" keeps choosing Triton for attention until this kernel has passed its GPU tests
(docs/status.md); it runs only with an explicit backend="cuda".
"""
from __future__ import annotations

import ctypes
import torch

from flashkit import jit

from .merge_state_cuda import device_arch
from .._common.specs import memoized_spec
from .._common.triton import dtype_tag, pow2

__all__ = ["decode_cuda_spec", "shipped_cuda_specs", "decode_geometry", "check_cuda_decode",
           "batch_decode_cuda"]

_CTYPES = {torch.float16: "flashkit::half_t", torch.bfloat16: "flashkit::bf16_t"}
SHIPPED_HEAD_DIMS = (64, 128, 256)
SUPPORTED_HEAD_DIMS = (64, 128, 256)  # D / 8 lanes per row must be a power of two (csrc Config)
KV_LAYOUTS = ("NHD", "HND")
_VEC = 8  # elements per 16-byte access


@memoized_spec
def decode_cuda_spec(dtype: torch.dtype, head_dim: int, kv_layout: str,
                     arch: str) -> jit.KernelSpec:
    """The spec of batch_decode_kernel for one dtype, head_dim, KV layout and arch
    (``"sm_90"``). "HND" assumes a token stride of head_dim; "NHD" takes any token stride."""
    if dtype not in _CTYPES:
        raise ValueError(f"dtype must be float16 or bfloat16, got {dtype}")
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head_dim must be one of {SUPPORTED_HEAD_DIMS} for the CUDA decode "
                         f"kernel, got {head_dim}")
    if kv_layout not in KV_LAYOUTS:
        raise ValueError(f"kv_layout must be 'NHD' or 'HND', got {kv_layout!r}")
    name = (f"decode_cuda_{dtype_tag(dtype)}_hd{head_dim}_{kv_layout.lower()}_"
            f"{arch.replace('_', '')}")
    return jit.KernelSpec.create(name, "nvrtc", "attention/decode_cuda.cu.j2",
                                 {"dtype": _CTYPES[dtype], "head_dim": head_dim,
                                  "kv_layout": kv_layout}, target=arch)


def shipped_cuda_specs(arch: str) -> list[jit.KernelSpec]:
    """fp16/bf16 x head_dim 64/128/256 x NHD/HND."""
    return [decode_cuda_spec(dtype, d, layout, arch)
            for dtype in _CTYPES for d in SHIPPED_HEAD_DIMS for layout in KV_LAYOUTS]



def decode_geometry(head_dim: int, group: int) -> dict:
    """Mirror of csrc Config: threads, rows, and how a GQA group maps onto the rows
    (heads_per_cta q heads x rows / heads_per_cta token slices; head_blocks CTAs per KV head)."""
    lanes = head_dim // _VEC
    rows = 8 if lanes * 8 >= 128 else 128 // lanes
    heads_per_cta = min(pow2(group), rows)
    return dict(threads=rows * lanes, rows=rows, heads_per_cta=heads_per_cta,
                head_blocks=-(-group // heads_per_cta))


def _aligned(t: torch.Tensor) -> bool:
    if t.data_ptr() % 16:
        return False
    return all(stride % _VEC == 0 for size, stride in zip(t.shape[:-1], t.stride()[:-1])
               if size > 1)


def check_cuda_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """What the CUDA kernel needs beyond the public checks, raised before any launch."""
    if q.device.type != "cuda":
        raise ValueError(f"backend='cuda' needs CUDA tensors, got {q.device}")
    if q.dtype not in _CTYPES or k.dtype != q.dtype:
        raise ValueError(f"the CUDA decode kernel takes fp16/bf16 q and KV of one dtype, got "
                         f"q {q.dtype}, kv {k.dtype}")
    dim = q.shape[-1]
    if dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"the CUDA decode kernel supports head_dim {SUPPORTED_HEAD_DIMS}, got "
                         f"{dim}; use backend='triton'")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not _aligned(t):
            raise ValueError(f"the CUDA decode kernel reads {name} in 16-byte vectors: its base "
                             f"must be 16-byte aligned and its strides {tuple(t.stride())} "
                             f"multiples of 8 (but the last); use backend='triton'")


def _i64(x: int) -> ctypes.c_int64:
    return ctypes.c_int64(int(x))


def batch_decode_cuda(q, k, v, part_v, part_s, items, n_items_pad, n_items, qo_indptr,
                      kv_indptr, kv_indices, kv_lens, *, num_kv_heads, page_size, paged,
                      window_left, soft_cap, sm_scale) -> None:
    """q [nnz, Hq, D]; k/v [pages, page_size, Hk, D]-like views (any page/token/head strides,
    last dim contiguous; non-paged: [1, tokens, Hk, D]); part_v [n_items_pad, Hq, D] and
    part_s [n_items_pad, Hq] float32 (the workspace). Writes rows 0..n_items-1."""
    if n_items == 0 or num_kv_heads == 0:
        return
    check_cuda_decode(q, k, v)
    if part_v.data_ptr() % 16 or part_v.stride(-1) != 1 or part_v.stride(1) % 4 \
            or part_v.stride(0) % 4:
        raise ValueError("the partial outputs must be 16-byte aligned float32 rows")
    heads, dim = q.shape[1], q.shape[2]
    group = heads // num_kv_heads
    geo = decode_geometry(dim, group)
    s_k, s_v = k.stride(), v.stride()
    hnd = s_k[1] == dim and s_v[1] == dim  # tokens contiguous within (page, head)
    spec = decode_cuda_spec(q.dtype, dim, "HND" if hnd else "NHD", device_arch(q.device))
    grid = (n_items, num_kv_heads * geo["head_blocks"])
    args = [q, k, v, part_v, part_s, items, int(n_items_pad), qo_indptr, kv_indptr, kv_indices,
            kv_lens, int(bool(paged)), int(page_size), int(group), geo["heads_per_cta"],
            geo["head_blocks"], float(sm_scale), float(soft_cap or 0.0), int(window_left),
            _i64(q.stride(0)), _i64(q.stride(1)), _i64(s_k[0]), _i64(s_k[1]), _i64(s_k[2]),
            _i64(s_v[0]), _i64(s_v[1]), _i64(s_v[2]), _i64(part_v.stride(0)),
            _i64(part_v.stride(1)), _i64(part_s.stride(0)), _i64(part_s.stride(1))]
    stream = torch.cuda.current_stream(q.device).cuda_stream
    jit.load(spec).launch("batch_decode_kernel", grid, (geo["threads"],), args,
                          device=q.device.index, stream=stream)
