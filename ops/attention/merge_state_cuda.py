"""CUDA (NVRTC) launchers of merge_state / merge_states (templates/attention/merge_state.cu.j2,
csrc/attention/merge_state.cuh).

The launchers assume the public layer validated their inputs: CUDA tensors on one device, shapes
consistent, v's last dimension contiguous, s float32. Outputs may be the inputs (in place).
"""
from __future__ import annotations

import ctypes
import math

import torch

from flashkit import jit

from .._common.specs import memoized_spec
from .._common.triton import dtype_tag

__all__ = ["merge_state_spec", "shipped_cuda_specs", "device_arch", "merge_state_cuda",
           "merge_states_cuda"]

_CTYPES = {torch.float16: "flashkit::half_t", torch.bfloat16: "flashkit::bf16_t",
           torch.float32: "float"}
SHIPPED_HEAD_DIMS = (64, 128, 256)

# Threads per block when a row needs fewer: 4 warps keep up to 16 blocks resident per SM (2048
# threads) while small problems still spread over many SMs. A row needing more threads (vec 1,
# head_dim 256: 256 threads) gets a block of its own; the kernel's bound is 1024.
_BLOCK_THREADS = 128
_MAX_VEC_BYTES = 16  # one LDG.E.128 / STG.E.128 per vector


def _full_vec(dtype: torch.dtype, head_dim: int) -> int:
    """The widest vector head_dim allows: a power of two, at most 16 bytes."""
    g = math.gcd(_MAX_VEC_BYTES // dtype.itemsize, head_dim)
    return g & -g


@memoized_spec
def merge_state_spec(dtype: torch.dtype, head_dim: int, vec: int, arch: str) -> jit.KernelSpec:
    """The spec of merge_state_kernel and merge_states_kernel for one dtype, head_dim, vector
    width (elements per thread) and arch (``"sm_90"``)."""
    if dtype not in _CTYPES:
        raise ValueError(f"dtype must be one of {list(_CTYPES)}, got {dtype}")
    elem = dtype.itemsize
    if vec < 1 or vec & (vec - 1) or head_dim % vec or vec * elem > _MAX_VEC_BYTES:
        raise ValueError(f"vec must be a power of two dividing head_dim={head_dim} with at most "
                         f"{_MAX_VEC_BYTES} bytes, got {vec}")
    if not 1 <= head_dim // vec <= 1024:
        raise ValueError(f"head_dim / vec must be in [1, 1024] (threads of one row), got "
                         f"{head_dim} / {vec}")
    name = f"merge_state_cuda_{dtype_tag(dtype)}_hd{head_dim}_v{vec}_{arch.replace('_', '')}"
    return jit.KernelSpec.create(name, "nvrtc", "attention/merge_state.cu.j2",
                                 {"dtype": _CTYPES[dtype], "head_dim": head_dim, "vec": vec},
                                 target=arch)


def shipped_cuda_specs(arch: str) -> list[jit.KernelSpec]:
    """fp16/bf16/fp32 x head_dim 64/128/256 at the full (16-byte) vector width."""
    return [merge_state_spec(dtype, d, _full_vec(dtype, d), arch)
            for dtype in _CTYPES for d in SHIPPED_HEAD_DIMS]


def device_arch(device) -> str:
    """``"sm_90"`` for an H100: the NVRTC target of ``device``."""
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


def _vec_width(head_dim: int, tensors) -> int:
    """The widest vector every v tensor allows: a power of two dividing head_dim, 16 bytes, every
    stride but the last (1) of a dimension longer than 1, and every base address in elements.
    A view sliced at an odd offset still runs, with narrower accesses (down to vec 1)."""
    elem = tensors[0].element_size()
    g = math.gcd(_MAX_VEC_BYTES // elem, head_dim)
    for t in tensors:
        g = math.gcd(g, t.data_ptr() // elem)
        for size, stride in zip(t.shape[:-1], t.stride()[:-1]):
            if size > 1:
                g = math.gcd(g, stride)
    return g & -g


def _launch(kernel: str, v: torch.Tensor, vec: int, rows: int, args) -> None:
    head_dim = v.shape[-1]
    spec = merge_state_spec(v.dtype, head_dim, vec, device_arch(v.device))
    threads_per_row = head_dim // vec
    rows_per_block = max(1, _BLOCK_THREADS // threads_per_row)
    grid = (-(-rows // rows_per_block),)
    stream = torch.cuda.current_stream(v.device).cuda_stream
    jit.load(spec).launch(kernel, grid, (threads_per_row, rows_per_block), args,
                          device=v.device.index, stream=stream)


def _strides(t: torch.Tensor, dims) -> list[ctypes.c_int64]:
    return [ctypes.c_int64(t.stride(d)) for d in dims]


def merge_state_cuda(v_a, s_a, v_b, s_b, v_out, s_out, mask=None) -> None:
    """v_out, s_out = merge of (v_a, s_a) and (v_b, s_b); rows whose mask[seq] is false are left
    untouched. v_*: [seq, heads, dim] (fp16/bf16/fp32), s_*: [seq, heads] float32, mask: [seq]
    bool or uint8. v_out / s_out may be v_a / s_a."""
    seq, heads, dim = v_a.shape
    if seq == 0 or heads == 0 or dim == 0:
        return
    vec = _vec_width(dim, (v_a, v_b, v_out))
    mask_arg = ctypes.c_void_p(0) if mask is None else mask.contiguous()
    args = [v_a, s_a, v_b, s_b, v_out, s_out, mask_arg, seq, heads,
            *_strides(v_a, (0, 1)), *_strides(s_a, (0, 1)), *_strides(v_b, (0, 1)),
            *_strides(s_b, (0, 1)), *_strides(v_out, (0, 1)), *_strides(s_out, (0, 1))]
    _launch("merge_state_kernel", v_a, vec, seq * heads, args)


def merge_states_cuda(v, s, v_out, s_out) -> None:
    """v_out, s_out = merge of the num_states states of each (seq, head). v: [seq, num_states,
    heads, dim] (fp16/bf16/fp32), s: [seq, num_states, heads] float32, v_out: [seq, heads, dim],
    s_out: [seq, heads]. num_states = 0 gives v_out = 0, s_out = -inf."""
    seq, num_states, heads, dim = v.shape
    if seq == 0 or heads == 0 or dim == 0:
        return
    vec = _vec_width(dim, (v, v_out))
    args = [v, s, v_out, s_out, seq, num_states, heads,
            *_strides(v, (0, 1, 2)), *_strides(s, (0, 1, 2)),
            *_strides(v_out, (0, 1)), *_strides(s_out, (0, 1))]
    _launch("merge_states_kernel", v, vec, seq * heads, args)
