"""chunk_ssd_scan: the Mamba-2 (SSD) scan in chunks, with states at any requested position.

Prefix caching for hybrid models needs the SSM state after a chosen number of tokens; the scan
returns it (``checkpoint_positions``) along with the final state, and resumes from given
``initial_states``. Registered as the torch.library op ``flashkit::chunk_ssd_scan`` with a fake
implementation, so it traces under torch.compile.
"""
from __future__ import annotations

import torch

from .._common.custom_op import custom_op, eager_or_op
from . import reference
from ._checks import (FLOAT_DTYPES, check_cu_seqlens, check_float, check_groups, check_per_head,
                      check_positions, check_same_dtype, ssm_backend)
from .spans import sequence_spans

__all__ = ["chunk_ssd_scan"]


def _chunk_ssd_scan_impl(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                         C: torch.Tensor, chunk_size: int, D: torch.Tensor | None,
                         z: torch.Tensor | None, dt_bias: torch.Tensor | None, dt_softplus: bool,
                         initial_states: torch.Tensor | None, cu_seqlens: torch.Tensor | None,
                         positions: torch.Tensor | None, return_final_states: bool, backend: str,
                         cu_seqlens_host: list[int] | None = None,
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # cu_seqlens_host: cu_seqlens as the eager caller already read it (None while tracing, where
    # a list would be baked into the graph); read here otherwise.
    batch, seqlen, nheads, headdim = x.shape
    spans = sequence_spans(batch, seqlen, cu_seqlens_host if cu_seqlens_host is not None
                           else cu_seqlens)

    def empty():  # a distinct tensor per unrequested output: outputs may not alias
        return x.new_empty(0, dtype=torch.float32)

    if backend == "torch":
        y, final, ckpt = reference.naive_ssd_scan(
            x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
            initial_states=initial_states, cu_seqlens=cu_seqlens, checkpoint_positions=positions)
        return (y.to(x.dtype), final.float() if return_final_states else empty(),
                ckpt.float() if ckpt is not None else empty())
    from .chunk_triton import chunk_ssd_scan_fwd

    dstate = B.shape[3]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    final = (torch.empty(len(spans), nheads, headdim, dstate, dtype=torch.float32,
                         device=x.device) if return_final_states else None)
    ckpt = (torch.empty(len(spans), positions.shape[1], nheads, headdim, dstate,
                        dtype=torch.float32, device=x.device) if positions is not None else None)
    chunk_ssd_scan_fwd(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, initial_states,
                       spans, positions, y, final, ckpt)
    return y, final if final is not None else empty(), ckpt if ckpt is not None else empty()


_chunk_ssd_scan_op = custom_op("chunk_ssd_scan", _chunk_ssd_scan_impl)


@_chunk_ssd_scan_op.register_fake
def _(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, initial_states, cu_seqlens,
      positions, return_final_states, backend, cu_seqlens_host=None):
    batch, _, nheads, headdim = x.shape
    num_seqs = batch if cu_seqlens is None else cu_seqlens.shape[0] - 1
    dstate = B.shape[3]
    final = (x.new_empty(num_seqs, nheads, headdim, dstate, dtype=torch.float32)
             if return_final_states else x.new_empty(0, dtype=torch.float32))
    ckpt = (x.new_empty(num_seqs, positions.shape[1], nheads, headdim, dstate,
                        dtype=torch.float32) if positions is not None
            else x.new_empty(0, dtype=torch.float32))
    return torch.empty_like(x, memory_format=torch.contiguous_format), final, ckpt


def chunk_ssd_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                   C: torch.Tensor, chunk_size: int = 256, D: torch.Tensor | None = None,
                   z: torch.Tensor | None = None, dt_bias: torch.Tensor | None = None,
                   dt_softplus: bool = False, initial_states: torch.Tensor | None = None,
                   cu_seqlens: torch.Tensor | None = None, checkpoint_positions=None,
                   return_final_states: bool = False, *, backend: str = "auto"):
    """Mamba-2 SSD scan (forward, for inference).

    Per head h (of group ``h // (nheads // ngroups)``), with ``dt <- softplus(dt + dt_bias)``:
    ``S_t = exp(dt_t A_h) S_{t-1} + dt_t x_t B_t^T``  (S: [headdim, dstate]),
    ``y_t = (S_t C_t + D_h x_t) * silu(z_t)``.

    Parameters
    ----------
    x : [batch, seqlen, nheads, headdim], fp16/bf16/fp32
    dt : [batch, seqlen, nheads], fp16/bf16/fp32
    A : [nheads], float (negative for a decaying state)
    B, C : [batch, seqlen, ngroups, dstate], x's dtype; ngroups divides nheads
    chunk_size : power of two in [16, 256]; tokens scanned as one quadratic block
    D : [nheads] or [nheads, headdim], optional skip connection
    z : like x, optional gate: y *= silu(z)
    dt_bias : [nheads], optional; dt_softplus : apply softplus to dt (+ bias)
    initial_states : [num_seqs, nheads, headdim, dstate], any float dtype; zeros by default
    cu_seqlens : int32/int64 [num_seqs + 1], packed sequences (batch must be 1); every
        sequence has its own initial state, final state and checkpoints
    checkpoint_positions : ints [K] (the same for every sequence) or [num_seqs, K] (tensor or
        list), each in [0, its sequence's length], or -1 for an unused slot (zeros). The state
        at position p is the state after the sequence's first p tokens: p = 0 is the initial
        state, p = length the final one.
    return_final_states : also return the state after each sequence's last token
    backend : "auto" (Triton on CUDA, the torch reference on CPU) | "triton" | "torch"

    Returns
    -------
    y : like x (x's dtype), or a tuple ``(y, final_states?, checkpoint_states?)`` with
    final_states [num_seqs, nheads, headdim, dstate] float32 when ``return_final_states`` and
    checkpoint_states [num_seqs, K, nheads, headdim, dstate] float32 when checkpoints are asked.
    num_seqs is batch, or ``len(cu_seqlens) - 1``.

    Example
    -------
    >>> y, last, ckpt = chunk_ssd_scan(x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias,
    ...                                dt_softplus=True, checkpoint_positions=[512, 1024],
    ...                                return_final_states=True)
    >>> y2 = chunk_ssd_scan(x2, dt2, A, B2, C2, initial_states=ckpt[:, 1], ...)  # resume
    """
    check_float("x", x, ndim=4)
    batch, seqlen, nheads, headdim = x.shape
    dev = x.device
    check_float("dt", dt, shape=(batch, seqlen, nheads), device=dev)
    check_float("A", A, shape=(nheads,), device=dev, dtypes=FLOAT_DTYPES + (torch.float64,))
    check_float("B", B, ndim=4, device=dev)
    ngroups, dstate = B.shape[2], B.shape[3]
    if tuple(B.shape[:2]) != (batch, seqlen):
        raise ValueError(f"B must have shape ({batch}, {seqlen}, ngroups, dstate), "
                         f"got {tuple(B.shape)}")
    check_groups("B", nheads, ngroups)
    check_same_dtype("B", B, "x", x)
    check_float("C", C, shape=B.shape, device=dev)
    check_same_dtype("C", C, "x", x)
    if not isinstance(chunk_size, int) or chunk_size < 16 or chunk_size > 256 or (
            chunk_size & (chunk_size - 1)):
        raise ValueError(f"chunk_size must be a power of two in [16, 256], got {chunk_size!r}")
    check_per_head("D", D, nheads, headdim, dev)
    check_float("z", z, shape=x.shape, device=dev, optional=True)
    check_same_dtype("z", z, "x", x)
    check_float("dt_bias", dt_bias, shape=(nheads,), device=dev, optional=True,
                dtypes=FLOAT_DTYPES + (torch.float64,))
    cu = check_cu_seqlens(cu_seqlens, batch, seqlen, dev)  # the call's one device-to-host read
    spans = sequence_spans(batch, seqlen, cu)
    num_seqs = len(spans)
    check_float("initial_states", initial_states, shape=(num_seqs, nheads, headdim, dstate),
                device=dev, optional=True, dtypes=FLOAT_DTYPES + (torch.float64,),
                contiguous_last=False)
    positions = check_positions(checkpoint_positions, [e - s for _, s, e in spans])
    backend = ssm_backend(backend, dev)
    args = (x, dt, A, B, C, chunk_size, D, z, dt_bias, bool(dt_softplus), initial_states,
            cu_seqlens, positions, bool(return_final_states), backend)
    y, final, ckpt = eager_or_op(_chunk_ssd_scan_op, _chunk_ssd_scan_impl,
                                 cu_seqlens_host=cu)(*args)
    extra = ((final,) if return_final_states else ()) + ((ckpt,) if positions is not None else ())
    return (y, *extra) if extra else y
