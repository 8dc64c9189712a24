"""Triton launchers of merge_state / merge_states (templates/attention/merge_state.py.j2)."""
from __future__ import annotations

import torch

from flashkit import jit
from .._common.specs import memoized_spec
from .._common.triton import pow2

# 2048 fp32 accumulators per program: 16 per thread at 4 warps, enough bytes in flight per program
# while keeping the grid (tokens x head blocks) large.
_MAX_BLOCK_ELEMS = 2048



@memoized_spec
def merge_state_triton_spec(head_dim: int) -> jit.KernelSpec:
    return jit.KernelSpec.create(f"merge_state_triton_hd{head_dim}", "triton",
                                 "attention/merge_state.py.j2",
                                 {"head_dim": head_dim, "block_d": pow2(head_dim)})


def shipped_triton_specs() -> list[jit.KernelSpec]:
    return [merge_state_triton_spec(d) for d in (64, 128, 256)]


def _block_h(heads: int, head_dim: int) -> int:
    return max(1, min(pow2(heads), _MAX_BLOCK_ELEMS // pow2(head_dim)))


def _grid(seq: int, heads: int, block_h: int):
    return (seq, -(-heads // block_h))


def merge_state_triton(v_a, s_a, v_b, s_b, v_out, s_out, mask=None) -> None:
    seq, heads, dim = v_a.shape
    if seq == 0 or heads == 0:
        return
    kernel = jit.load(merge_state_triton_spec(dim))._merge_state_kernel
    block_h = _block_h(heads, dim)
    mask_arg = mask if mask is not None else s_a  # never read when HAS_MASK is false
    if mask is not None and mask.dtype == torch.bool:
        mask_arg = mask.view(torch.uint8)
    kernel[_grid(seq, heads, block_h)](
        v_a, s_a, v_b, s_b, v_out, s_out, mask_arg, heads,
        v_a.stride(0), v_a.stride(1), s_a.stride(0), s_a.stride(1),
        v_b.stride(0), v_b.stride(1), s_b.stride(0), s_b.stride(1),
        v_out.stride(0), v_out.stride(1), s_out.stride(0), s_out.stride(1),
        HAS_MASK=mask is not None, BLOCK_H=block_h,
    )


def merge_states_triton(v, s, v_out, s_out) -> None:
    seq, num_states, heads, dim = v.shape
    if seq == 0 or heads == 0:
        return
    kernel = jit.load(merge_state_triton_spec(dim))._merge_states_kernel
    block_h = _block_h(heads, dim)
    kernel[_grid(seq, heads, block_h)](
        v, s, v_out, s_out, heads, num_states,
        v.stride(0), v.stride(1), v.stride(2), s.stride(0), s.stride(1), s.stride(2),
        v_out.stride(0), v_out.stride(1), s_out.stride(0), s_out.stride(1),
        BLOCK_H=block_h,
    )
