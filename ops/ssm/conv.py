"""causal_conv1d, causal_conv1d_update: the depthwise causal convolution before an SSM scan.

Layouts follow Dao-AILab/causal-conv1d (x [batch, dim, seqlen], weight [dim, width]); x may be
a channel-last view (stride 1 on dim). Registered as torch.library ops
``flashkit::causal_conv1d`` and ``flashkit::causal_conv1d_update`` (mutating ``conv_state``).
"""
from __future__ import annotations

import torch

from .._common.custom_op import custom_op, eager_or_op
from . import reference
from ._checks import check_cu_seqlens, check_float, check_slot_indices, ssm_backend
from .spans import sequence_spans

__all__ = ["causal_conv1d", "causal_conv1d_update"]

_ACTIVATIONS = (None, "silu")


def _causal_conv1d_impl(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        activation: str | None, initial_states: torch.Tensor | None,
                        return_final_states: bool, cu_seqlens: torch.Tensor | None,
                        backend: str, cu_seqlens_host: list[int] | None = None,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    # cu_seqlens_host: as in chunk_ssd_scan, the eager caller's host copy of cu_seqlens.
    spans = sequence_spans(x.shape[0], x.shape[2], cu_seqlens_host if cu_seqlens_host is not None
                           else cu_seqlens)
    if backend == "torch":
        out, final = reference.naive_causal_conv1d(x, weight, bias, activation, initial_states,
                                                   cu_seqlens)
        final = final.to(x.dtype) if return_final_states else x.new_empty(0)
        return out.to(x.dtype), final
    from .conv_triton import causal_conv1d_fwd_triton

    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    final = (x.new_empty(len(spans), x.shape[1], weight.shape[1] - 1) if return_final_states
             else x.new_empty(0))
    causal_conv1d_fwd_triton(x, weight, bias, activation, initial_states, spans, out,
                             final if return_final_states else None)
    return out, final


_causal_conv1d_op = custom_op("causal_conv1d", _causal_conv1d_impl)


@_causal_conv1d_op.register_fake
def _(x, weight, bias, activation, initial_states, return_final_states, cu_seqlens, backend,
      cu_seqlens_host=None):
    num_seqs = x.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1
    final = (x.new_empty(num_seqs, x.shape[1], weight.shape[1] - 1) if return_final_states
             else x.new_empty(0))
    return torch.empty_like(x, memory_format=torch.contiguous_format), final


def _causal_conv1d_update_impl(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                               bias: torch.Tensor | None, activation: str | None,
                               conv_state_indices: torch.Tensor | None,
                               backend: str) -> torch.Tensor:
    if backend == "torch":
        out, new = reference.naive_causal_conv1d_update(x, conv_state, weight, bias, activation,
                                                        conv_state_indices)
        conv_state.copy_(new)
        return out.to(x.dtype)
    from .conv_triton import causal_conv1d_update_triton

    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    x3, out3 = (x[:, :, None], out[:, :, None]) if x.dim() == 2 else (x, out)
    causal_conv1d_update_triton(x3, conv_state, weight, bias, activation, conv_state_indices,
                                out3)
    return out


_causal_conv1d_update_op = custom_op("causal_conv1d_update", _causal_conv1d_update_impl,
                                     mutates_args=("conv_state",))


@_causal_conv1d_update_op.register_fake
def _(x, conv_state, weight, bias, activation, conv_state_indices, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _check_weight(weight, bias, dim, dev):
    check_float("weight", weight, ndim=2, device=dev)
    if weight.shape[0] != dim or weight.shape[1] < 1:
        raise ValueError(f"weight must have shape ({dim}, width), got {tuple(weight.shape)}")
    check_float("bias", bias, shape=(dim,), device=dev, optional=True)


def _check_activation(activation):
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  activation: str | None = None, initial_states: torch.Tensor | None = None,
                  return_final_states: bool = False, cu_seqlens: torch.Tensor | None = None, *,
                  backend: str = "auto"):
    """Depthwise causal convolution: ``out[:, d, t] = act(bias[d] + sum_k weight[d, k] *
    xp[:, d, t + k])``, ``xp`` being each sequence prefixed by its ``width - 1`` initial inputs.

    Parameters
    ----------
    x : [batch, dim, seqlen], fp16/bf16/fp32, any strides (a channel-last view is fine)
    weight : [dim, width], last dim contiguous;  bias : [dim], optional
    activation : None or "silu"
    initial_states : [num_seqs, dim, width - 1], last dim contiguous; zeros by default
    return_final_states : also return each sequence's last ``width - 1`` inputs (the conv
        state to decode from)
    cu_seqlens : int32/int64 [num_seqs + 1], packed sequences (batch must be 1)
    backend : "auto" (Triton on CUDA, the torch reference on CPU) | "triton" | "torch"

    Returns
    -------
    out : like x (x's dtype), or ``(out, final_states [num_seqs, dim, width - 1])`` in x's dtype.

    Example
    -------
    >>> xBC, conv_state = causal_conv1d(xBC, w, b, "silu", return_final_states=True)
    """
    check_float("x", x, ndim=3, contiguous_last=False)
    batch, dim, seqlen = x.shape
    dev = x.device
    _check_weight(weight, bias, dim, dev)
    _check_activation(activation)
    cu = check_cu_seqlens(cu_seqlens, batch, seqlen, dev)  # the call's one device-to-host read
    num_seqs = batch if cu_seqlens is None else cu_seqlens.shape[0] - 1
    check_float("initial_states", initial_states, shape=(num_seqs, dim, weight.shape[1] - 1),
                device=dev, optional=True)
    backend = ssm_backend(backend, dev)
    out, final = eager_or_op(_causal_conv1d_op, _causal_conv1d_impl, cu_seqlens_host=cu)(
        x, weight, bias, activation, initial_states, bool(return_final_states), cu_seqlens,
        backend)
    return (out, final) if return_final_states else out


def causal_conv1d_update(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None = None, activation: str | None = None,
                         conv_state_indices: torch.Tensor | None = None, *,
                         backend: str = "auto") -> torch.Tensor:
    """Decode steps of the causal convolution; ``conv_state`` is shifted in place.

    Parameters
    ----------
    x : [batch, dim] (one token) or [batch, dim, seqlen] (seqlen new tokens), fp16/bf16/fp32
    conv_state : [nslots, dim, state_len >= width - 1], last dim contiguous: each slot's last
        ``state_len`` inputs, oldest first
    weight : [dim, width];  bias : [dim];  activation : None or "silu"
    conv_state_indices : int32/int64 [batch], the slot of each row (default: row i uses slot
        i); -1 marks a padding row (output zeros, no slot touched). No slot twice.
    backend : "auto" | "triton" | "torch"

    Returns
    -------
    out : like x (x's dtype)
    """
    check_float("x", x, device=None, contiguous_last=False)
    if x.dim() not in (2, 3):
        raise ValueError(f"x must be [batch, dim] or [batch, dim, seqlen], got {tuple(x.shape)}")
    batch, dim = x.shape[:2]
    dev = x.device
    check_float("conv_state", conv_state, ndim=3, device=dev)
    _check_weight(weight, bias, dim, dev)
    if conv_state.shape[1] != dim or conv_state.shape[2] < weight.shape[1] - 1:
        raise ValueError(f"conv_state must have shape (nslots, {dim}, >= {weight.shape[1] - 1}),"
                         f" got {tuple(conv_state.shape)}")
    _check_activation(activation)
    check_slot_indices("conv_state_indices", conv_state_indices, batch, conv_state.shape[0], dev)
    backend = ssm_backend(backend, dev)
    return eager_or_op(_causal_conv1d_update_op, _causal_conv1d_update_impl)(
        x, conv_state, weight, bias, activation, conv_state_indices, backend)

