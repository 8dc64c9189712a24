"""Token-by-token SSM ops: selective_scan (Mamba-1, with state checkpoints) and
selective_state_update (one decode step, in place on a pool of cache slots; both layouts).

Registered as torch.library ops ``flashkit::selective_scan`` and
``flashkit::selective_state_update`` (mutating ``state``) with fake implementations, so they trace
under torch.compile and the decode step is captured by CUDA graphs.
"""
from __future__ import annotations

import torch

from .._common.custom_op import custom_op, eager_or_op
from . import reference
from ._checks import (FLOAT_DTYPES, check_float, check_groups, check_per_head, check_positions,
                      check_same_dtype, check_slot_indices, ssm_backend)

__all__ = ["selective_scan", "selective_state_update"]

_PARAM_DTYPES = FLOAT_DTYPES + (torch.float64,)


def _selective_state_update_impl(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor,
                                 A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                                 D: torch.Tensor | None, z: torch.Tensor | None,
                                 dt_bias: torch.Tensor | None, dt_softplus: bool,
                                 state_batch_indices: torch.Tensor | None,
                                 backend: str) -> torch.Tensor:
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if backend == "torch":
        out, new = reference.naive_selective_state_update(
            state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
            state_batch_indices=state_batch_indices)
        state.copy_(new)
        y.copy_(out)
        return y
    from .recurrent_triton import selective_state_update_triton

    selective_state_update_triton(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus,
                                  state_batch_indices, y)
    return y


_selective_state_update_op = custom_op("selective_state_update", _selective_state_update_impl,
                                       mutates_args=("state",))


@_selective_state_update_op.register_fake
def _(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def selective_state_update(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor,
                           A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                           D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                           dt_bias: torch.Tensor | None = None, dt_softplus: bool = False,
                           state_batch_indices: torch.Tensor | None = None, *,
                           backend: str = "auto") -> torch.Tensor:
    """One decode step of a Mamba-2 or Mamba-1 layer; ``state`` is updated in place.

    ``dt <- softplus(dt + dt_bias)``; ``S = exp(dt A) S + dt x B^T``; ``y = (S C + D x) silu(z)``.

    Parameters (Mamba-2 layout, chosen by a 4-D ``state``)
    ----------
    state : [nslots, nheads, headdim, dstate], fp16/bf16/fp32 (float32 recommended), last dim
        contiguous; a pool of cache slots
    x : [batch, nheads, headdim], fp16/bf16/fp32;  z : like x, optional gate
    dt : [batch, nheads];  A : [nheads];  dt_bias : [nheads]
    B, C : [batch, ngroups, dstate] (ngroups divides nheads)
    D : [nheads] or [nheads, headdim]

    Parameters (Mamba-1 layout, a 3-D ``state``)
    ----------
    state : [nslots, dim, dstate];  x, z, dt : [batch, dim];  A : [dim, dstate]
    B, C : [batch, dstate];  D, dt_bias : [dim]

    state_batch_indices : int32/int64 [batch], the slot of each row (default: row i uses
        slot i); -1 marks a padding row (output zeros, no slot touched). No slot twice.
    backend : "auto" (Triton on CUDA, the torch reference on CPU) | "triton" | "torch"

    Returns
    -------
    y : like x (x's dtype)

    Example
    -------
    >>> y = selective_state_update(ssm_cache, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias,
    ...                            dt_softplus=True, state_batch_indices=slot_ids)
    """
    check_float("state", state, device=None)
    if state.dim() not in (3, 4):
        raise ValueError(f"state must be 4-D [nslots, nheads, headdim, dstate] (Mamba-2) or 3-D "
                         f"[nslots, dim, dstate] (Mamba-1), got shape {tuple(state.shape)}")
    dev = state.device
    nslots, dstate = state.shape[0], state.shape[-1]
    if state.dim() == 4:
        nheads, headdim = state.shape[1:3]
        check_float("x", x, ndim=3, device=dev)
        batch = x.shape[0]
        check_float("x", x, shape=(batch, nheads, headdim))
        check_float("dt", dt, shape=(batch, nheads), device=dev, dtypes=_PARAM_DTYPES)
        check_float("A", A, shape=(nheads,), device=dev, dtypes=_PARAM_DTYPES)
        check_float("B", B, ndim=3, device=dev)
        if B.shape[0] != batch or B.shape[2] != dstate:
            raise ValueError(f"B must have shape ({batch}, ngroups, {dstate}), "
                             f"got {tuple(B.shape)}")
        check_groups("B", nheads, B.shape[1])
        check_per_head("D", D, nheads, headdim, dev)
        check_float("dt_bias", dt_bias, shape=(nheads,), device=dev, optional=True,
                    dtypes=_PARAM_DTYPES)
    else:
        dim = state.shape[1]
        check_float("x", x, ndim=2, device=dev)
        batch = x.shape[0]
        check_float("x", x, shape=(batch, dim))
        check_float("dt", dt, shape=(batch, dim), device=dev, dtypes=_PARAM_DTYPES)
        check_float("A", A, shape=(dim, dstate), device=dev, dtypes=_PARAM_DTYPES)
        check_float("B", B, shape=(batch, dstate), device=dev)
        check_float("D", D, shape=(dim,), device=dev, optional=True, dtypes=_PARAM_DTYPES)
        check_float("dt_bias", dt_bias, shape=(dim,), device=dev, optional=True,
                    dtypes=_PARAM_DTYPES)
    check_float("C", C, shape=B.shape, device=dev)
    check_same_dtype("C", C, "B", B)
    check_float("z", z, shape=x.shape, device=dev, optional=True)
    check_same_dtype("z", z, "x", x)
    check_slot_indices("state_batch_indices", state_batch_indices, batch, nslots, dev)
    backend = ssm_backend(backend, dev)
    return eager_or_op(_selective_state_update_op, _selective_state_update_impl)(
        state, x, dt, A, B, C, D, z, dt_bias, bool(dt_softplus), state_batch_indices, backend)


def _selective_scan_impl(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                         C: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None,
                         delta_bias: torch.Tensor | None, delta_softplus: bool,
                         initial_state: torch.Tensor | None, positions: torch.Tensor | None,
                         backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if backend == "torch":
        y, last, ckpt = reference.naive_selective_scan(
            u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
            initial_state=initial_state, checkpoint_positions=positions)
        return (y.to(u.dtype), last.float(),
                ckpt.float() if ckpt is not None else u.new_empty(0, dtype=torch.float32))
    from .recurrent_triton import selective_scan_triton

    batch, dim, _ = u.shape
    dstate = A.shape[1]
    y = torch.empty(u.shape, dtype=u.dtype, device=u.device)
    last = u.new_empty(batch, dim, dstate, dtype=torch.float32)
    ckpt = (u.new_empty(batch, positions.shape[1], dim, dstate, dtype=torch.float32)
            if positions is not None else u.new_empty(0, dtype=torch.float32))
    selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                          positions, y, last, ckpt if positions is not None else None)
    return y, last, ckpt


_selective_scan_op = custom_op("selective_scan", _selective_scan_impl)


@_selective_scan_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, positions, backend):
    batch, dim, _ = u.shape
    dstate = A.shape[1]
    ckpt = (u.new_empty(batch, positions.shape[1], dim, dstate, dtype=torch.float32)
            if positions is not None else u.new_empty(0, dtype=torch.float32))
    return (torch.empty_like(u, memory_format=torch.contiguous_format),
            u.new_empty(batch, dim, dstate, dtype=torch.float32), ckpt)


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                   C: torch.Tensor, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                   delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                   initial_state: torch.Tensor | None = None, checkpoint_positions=None,
                   return_last_state: bool = False, *, backend: str = "auto"):
    """Mamba-1 selective scan (forward, for inference), with states at requested positions.

    Per channel d (of group ``d // (dim // ngroups)``), ``delta <- softplus(delta + bias)``:
    ``h_t = exp(delta_t A_d) h_{t-1} + delta_t u_t B_t``  (h: [dstate]),
    ``y_t = (h_t . C_t + D_d u_t) * silu(z_t)``.

    Parameters
    ----------
    u, delta : [batch, dim, seqlen], fp16/bf16/fp32, any strides
    A : [dim, dstate], last dim contiguous
    B, C : [batch, ngroups, dstate, seqlen], u's dtype, any strides; ngroups divides dim
    D : [dim];  z : like u, optional gate;  delta_bias : [dim];  delta_softplus : bool
    initial_state : [batch, dim, dstate], any float dtype; zeros by default
    checkpoint_positions : ints [K] or [batch, K] (tensor or list) in [0, seqlen], or -1 for
        an unused slot (zeros). The state at p is the state after the first p tokens.
    return_last_state : also return the state after the last token
    backend : "auto" (Triton on CUDA, the torch reference on CPU) | "triton" | "torch"

    Returns
    -------
    y : [batch, dim, seqlen] (u's dtype), or ``(y, last_state?, checkpoint_states?)`` with
    last_state [batch, dim, dstate] float32 and checkpoint_states [batch, K, dim, dstate] float32.

    Example
    -------
    >>> y, last, ckpt = selective_scan(u, delta, A, B, C, D, z, delta_bias, True,
    ...                                checkpoint_positions=[256], return_last_state=True)
    """
    check_float("u", u, ndim=3, contiguous_last=False)
    batch, dim, seqlen = u.shape
    dev = u.device
    check_float("delta", delta, shape=u.shape, device=dev, contiguous_last=False)
    check_float("A", A, ndim=2, device=dev, dtypes=_PARAM_DTYPES)
    if A.shape[0] != dim:
        raise ValueError(f"A must have shape ({dim}, dstate), got {tuple(A.shape)}")
    dstate = A.shape[1]
    check_float("B", B, ndim=4, device=dev, contiguous_last=False)
    if B.shape[0] != batch or B.shape[2:] != (dstate, seqlen):
        raise ValueError(f"B must have shape ({batch}, ngroups, {dstate}, {seqlen}), "
                         f"got {tuple(B.shape)}")
    check_groups("B", dim, B.shape[1], "dim")
    check_same_dtype("B", B, "u", u)
    check_float("C", C, shape=B.shape, device=dev, contiguous_last=False)
    check_same_dtype("C", C, "u", u)
    check_float("D", D, shape=(dim,), device=dev, optional=True, dtypes=_PARAM_DTYPES)
    check_float("z", z, shape=u.shape, device=dev, optional=True, contiguous_last=False)
    check_float("delta_bias", delta_bias, shape=(dim,), device=dev, optional=True,
                dtypes=_PARAM_DTYPES)
    check_float("initial_state", initial_state, shape=(batch, dim, dstate), device=dev,
                optional=True, dtypes=_PARAM_DTYPES, contiguous_last=False)
    positions = check_positions(checkpoint_positions, [seqlen] * batch)
    backend = ssm_backend(backend, dev)
    y, last, ckpt = eager_or_op(_selective_scan_op, _selective_scan_impl)(
        u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), initial_state, positions,
        backend)
    extra = ((last,) if return_last_state else ()) + ((ckpt,) if positions is not None else ())
    return (y, *extra) if extra else y
