"""Triton launchers of the causal depthwise conv1d (templates/ssm/causal_conv1d.py.j2)."""
from __future__ import annotations

import torch

from flashkit import jit
from .._common.specs import memoized_spec
from .._common.triton import pow2



@memoized_spec
def causal_conv1d_triton_spec(width: int) -> jit.KernelSpec:
    return jit.KernelSpec.create(f"causal_conv1d_triton_w{width}", "triton", "ssm/causal_conv1d.py.j2",
                                 {"width": width})


def shipped_triton_specs() -> list[jit.KernelSpec]:
    """Mamba-1/2 and their hybrids use width 4 (some 2-3)."""
    return [causal_conv1d_triton_spec(w) for w in (2, 3, 4)]


# 64 channels x 64 tokens per program: 4096 float32 accumulators, each input read WIDTH times
# from L1/L2 rather than staged in shared memory.
_BLOCK_D, _BLOCK_T = 64, 64


def causal_conv1d_fwd_triton(x, weight, bias, activation, initial_states, spans, out,
                             final_states=None) -> None:
    """x [batch, dim, seqlen] -> out (like x); final_states [num_seqs, dim, width - 1] when
    given. spans: (batch index, start, end) per sequence. Validated by the caller."""
    dim, width = weight.shape
    mod = jit.load(causal_conv1d_triton_spec(width))
    dev = x.device
    block_d = min(_BLOCK_D, pow2(dim))
    tiles = [(b, s, t0, e - s, i) for i, (b, s, e) in enumerate(spans)
             for t0 in range(0, e - s, _BLOCK_T)]
    init = initial_states if initial_states is not None else x
    s_init = (init.stride(0), init.stride(1)) if initial_states is not None else (0, 0)
    if tiles:
        tiles_t = torch.tensor(tiles, dtype=torch.int32, device=dev)
        mod._causal_conv1d_fwd_kernel[(len(tiles), -(-dim // block_d))](
            x, weight, bias if bias is not None else weight, init, tiles_t, out, dim,
            x.stride(0), x.stride(1), x.stride(2), weight.stride(0), *s_init,
            out.stride(0), out.stride(1), out.stride(2),
            HAS_BIAS=bias is not None, HAS_INITIAL=initial_states is not None,
            SILU=activation == "silu", BLOCK_D=block_d, BLOCK_T=_BLOCK_T, num_warps=8)
    if final_states is not None and spans and width > 1:
        seqs = torch.tensor([(b, s, e - s) for b, s, e in spans], dtype=torch.int32, device=dev)
        mod._causal_conv1d_final_state_kernel[(len(spans), -(-dim // block_d))](
            x, init, seqs, final_states, dim, x.stride(0), x.stride(1), x.stride(2), *s_init,
            HAS_INITIAL=initial_states is not None, BLOCK_D=block_d,
            BLOCK_W=pow2(max(1, width - 1)))


def causal_conv1d_update_triton(x, conv_state, weight, bias, activation, slots, out) -> None:
    """x [batch, dim, seqlen]; conv_state [nslots, dim, state_len] shifted in place; out like x."""
    batch, dim, seqlen = x.shape
    if batch == 0:
        return
    width = weight.shape[1]
    state_len = conv_state.shape[2]
    block_d = min(_BLOCK_D, pow2(dim))
    kernel = jit.load(causal_conv1d_triton_spec(width))._causal_conv1d_update_kernel
    kernel[(batch, -(-dim // block_d))](
        x, conv_state, weight, bias if bias is not None else weight,
        slots if slots is not None else x, out, dim, seqlen, state_len,
        x.stride(0), x.stride(1), x.stride(2), conv_state.stride(0), conv_state.stride(1),
        weight.stride(0), out.stride(0), out.stride(1), out.stride(2),
        HAS_BIAS=bias is not None, HAS_SLOTS=slots is not None, SILU=activation == "silu",
        BLOCK_D=block_d, BLOCK_T=pow2(seqlen), BLOCK_S=pow2(state_len))
