"""Triton launchers of the token-by-token SSM kernels (templates/ssm/recurrent.py.j2)."""
from __future__ import annotations

import torch

from flashkit import jit

from .._common.specs import memoized_spec
from .._common.triton import pow2


@memoized_spec
def recurrent_triton_spec(dstate: int) -> jit.KernelSpec:
    return jit.KernelSpec.create(f"ssm_recurrent_triton_ds{dstate}", "triton", "ssm/recurrent.py.j2",
                                 {"dstate": dstate, "block_n": pow2(dstate)})


def shipped_triton_specs() -> list[jit.KernelSpec]:
    """Mamba-1 (dstate 16) and Mamba-2 (64, 128)."""
    return [recurrent_triton_spec(n) for n in (16, 64, 128)]


def _block_p(headdim: int, dstate: int) -> int:
    # 4096 state elements per program (32 float32 a thread at 4 warps): Mamba-2's 64 x 128 head
    # in 2 programs, Mamba-1's dim in blocks of 256 x 16.
    return max(1, min(pow2(headdim), 4096 // pow2(dstate)))


def selective_state_update_triton(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, slots,
                                  y) -> None:
    """state [nslots, nheads, headdim, dstate] (Mamba-1: [nslots, dim, dstate]), updated in
    place; y written like x. Validated by the caller."""
    mamba1 = state.dim() == 3
    batch = x.shape[0]
    if mamba1:
        nheads, (headdim, dstate), ngroups = 1, state.shape[1:], 1
        # One head: x/z/y [b, dim]; dt [b, dim]; A [dim, dstate]; D, dt_bias [dim]; B/C [b, N].
        st = (state.stride(0), 0, state.stride(1))
        sx, sz, sy = (x.stride(0), 0), (None if z is None else (z.stride(0), 0)), (y.stride(0), 0)
        sdt = (dt.stride(0), 0, dt.stride(1))
        sA = (0, A.stride(0), A.stride(1))
        sB, sC = (B.stride(0), 0), (C.stride(0), 0)
        sD = None if D is None else (0, D.stride(0))
        sdb = None if dt_bias is None else (0, dt_bias.stride(0))
    else:
        nheads, headdim, dstate = state.shape[1:]
        ngroups = B.shape[1]
        st = (state.stride(0), state.stride(1), state.stride(2))
        sx, sy = (x.stride(0), x.stride(1)), (y.stride(0), y.stride(1))
        sz = None if z is None else (z.stride(0), z.stride(1))
        sdt = (dt.stride(0), dt.stride(1), 0)
        sA = (A.stride(0), 0, 0)
        sB, sC = (B.stride(0), B.stride(1)), (C.stride(0), C.stride(1))
        sD = None if D is None else (D.stride(0), D.stride(1) if D.dim() == 2 else 0)
        sdb = None if dt_bias is None else (dt_bias.stride(0), 0)
    if batch == 0:
        return
    kernel = jit.load(recurrent_triton_spec(dstate))._selective_state_update_kernel
    block_p = _block_p(headdim, dstate)
    kernel[(batch, nheads, -(-headdim // block_p))](
        state, x, dt, A, B, C, D if D is not None else A, z if z is not None else x,
        dt_bias if dt_bias is not None else A, slots if slots is not None else x, y,
        headdim, nheads // ngroups,
        *st, *sx, *sdt, *sA, *sB, *sC, *(sD or (0, 0)), *(sz or (0, 0)), *(sdb or (0, 0)), *sy,
        HAS_SLOTS=slots is not None, HAS_D=D is not None, HAS_Z=z is not None,
        HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=bool(dt_softplus), BLOCK_P=block_p)


def selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                          positions, y, last_state, checkpoint_states) -> None:
    """u/delta [batch, dim, seqlen] -> y (like u), last_state [batch, dim, dstate] float32 and,
    with positions (int64 [batch, K] on the CPU), checkpoint_states [batch, K, dim, dstate]
    float32 (rows at -1 are zeroed here). Validated by the caller."""
    batch, dim, seqlen = u.shape
    ngroups, dstate = B.shape[1], B.shape[2]
    if batch == 0 or dim == 0:
        return
    kernel = jit.load(recurrent_triton_spec(dstate))._selective_scan_kernel
    dev = u.device
    if positions is not None and positions.shape[1]:
        sorted_pos, cols = positions.sort(dim=1, stable=True)
        num_k = positions.shape[1]
        pos_t, cols_t = sorted_pos.to(torch.int32).to(dev), cols.to(torch.int32).to(dev)
        ckpt = checkpoint_states
        ckpt.masked_fill_((positions < 0).to(dev)[:, :, None, None], 0.0)
    else:
        num_k, pos_t, cols_t, ckpt = 0, last_state, last_state, last_state
    init = (initial_state.to(torch.float32).contiguous() if initial_state is not None
            else last_state)
    # The state lives in registers for the whole sequence: BLOCK_D x dstate float32 per program.
    block_d = max(1, min(pow2(dim), 2048 // pow2(dstate)))
    zz = z if z is not None else u
    kernel[(batch, -(-dim // block_d))](
        u, delta, A, B, C, D if D is not None else A, zz,
        delta_bias if delta_bias is not None else A, init, pos_t, cols_t, y, last_state, ckpt,
        dim, seqlen, dim // ngroups, num_k,
        u.stride(0), u.stride(1), u.stride(2), delta.stride(0), delta.stride(1),
        delta.stride(2), A.stride(0), B.stride(0), B.stride(1), B.stride(2), B.stride(3),
        C.stride(0), C.stride(1), C.stride(2), C.stride(3), zz.stride(0), zz.stride(1),
        zz.stride(2), y.stride(0), y.stride(1), y.stride(2),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_DT_BIAS=delta_bias is not None,
        DT_SOFTPLUS=bool(delta_softplus), HAS_INITIAL=initial_state is not None,
        BLOCK_D=block_d)
