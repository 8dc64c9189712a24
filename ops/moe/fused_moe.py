"""fused_moe: the experts of a MoE layer as two grouped GEMMs (activation fused into the first,
routing weight into the second) and a reduction over each token's top-k.

Registered as torch.library custom ops (flashkit::fused_moe, flashkit::fused_moe_inplace) with
fake implementations.
"""
from __future__ import annotations

import torch

from .._common.backends import resolve_backend
from .._common.checks import FLOAT_DTYPES, INDEX_DTYPES, check_tensor
from .._common.custom_op import custom_op, eager_or_op
from . import reference, tuning
from .routing import _align_impl, check_ids_in_range

__all__ = ["fused_moe"]


def _run(hidden_states, w1, w2, topk_weights, topk_ids, activation, config, backend, out):
    if backend == "torch":
        out.copy_(reference.naive_fused_moe(hidden_states, w1, w2, topk_weights, topk_ids,
                                            activation))
        return
    from .fused_moe_triton import fused_moe_triton

    if config is None:  # looked up here, inside the op: torch.compile does not trace file reads
        table = tuning.get_config(hidden_states.shape[0], w2.shape[0], w2.shape[2], w2.shape[1],
                                  topk_ids.shape[1], hidden_states.device)
        config = [table[k] for k in tuning.CONFIG_KEYS]
    fused_moe_triton(hidden_states, w1, w2, topk_weights, topk_ids, activation, config, out,
                     _align_impl)


def _fused_moe_impl(hidden_states: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                    topk_weights: torch.Tensor, topk_ids: torch.Tensor, activation: str,
                    config: list[int] | None, backend: str) -> torch.Tensor:
    out = torch.empty(hidden_states.shape, dtype=hidden_states.dtype, device=hidden_states.device)
    _run(hidden_states, w1, w2, topk_weights, topk_ids, activation, config, backend, out)
    return out


_fused_moe_op = custom_op("fused_moe", _fused_moe_impl)


@_fused_moe_op.register_fake
def _(hidden_states, w1, w2, topk_weights, topk_ids, activation, config, backend):
    return torch.empty_like(hidden_states, memory_format=torch.contiguous_format)


def _fused_moe_inplace_impl(hidden_states: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                            topk_weights: torch.Tensor, topk_ids: torch.Tensor, activation: str,
                            config: list[int] | None, backend: str) -> None:
    _run(hidden_states, w1, w2, topk_weights, topk_ids, activation, config, backend, hidden_states)


_fused_moe_inplace_op = custom_op("fused_moe_inplace", _fused_moe_inplace_impl,
                                  mutates_args=("hidden_states",))


@_fused_moe_inplace_op.register_fake
def _(hidden_states, w1, w2, topk_weights, topk_ids, activation, config, backend):
    return None


def _check(hidden_states, w1, w2, topk_weights, topk_ids, activation):
    check_tensor("hidden_states", hidden_states, dtypes=FLOAT_DTYPES, ndim=2,
                 last_dim_contiguous=True)
    dev, dtype = hidden_states.device, hidden_states.dtype
    tokens, hidden = hidden_states.shape
    check_tensor("w1", w1, dtypes=FLOAT_DTYPES, ndim=3, device=dev)
    check_tensor("w2", w2, dtypes=FLOAT_DTYPES, ndim=3, device=dev)
    for name, w in (("w1", w1), ("w2", w2)):
        if w.dtype != dtype:
            raise ValueError(f"{name} must have hidden_states' dtype ({dtype}), got {w.dtype}")
    num_experts, two_ffn, k = w1.shape
    if two_ffn % 2 or k != hidden:
        raise ValueError(f"w1 must be [num_experts, 2*ffn, hidden={hidden}] (gate rows then up "
                         f"rows), got {tuple(w1.shape)}")
    if tuple(w2.shape) != (num_experts, hidden, two_ffn // 2):
        raise ValueError(f"w2 must have shape {(num_experts, hidden, two_ffn // 2)} "
                         f"([num_experts, hidden, ffn] matching w1), got {tuple(w2.shape)}")
    check_tensor("topk_ids", topk_ids, dtypes=INDEX_DTYPES, ndim=2, device=dev)
    if topk_ids.shape[0] != tokens:
        raise ValueError(f"topk_ids must have {tokens} rows (one per token of hidden_states), "
                         f"got shape {tuple(topk_ids.shape)}")
    check_tensor("topk_weights", topk_weights, dtypes=FLOAT_DTYPES, shape=topk_ids.shape,
                 device=dev)
    if activation not in reference.ACTIVATIONS:
        raise ValueError(f"activation must be one of {reference.ACTIVATIONS}, got {activation!r}")
    check_ids_in_range("topk_ids", topk_ids, num_experts)


def fused_moe(hidden_states: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
              topk_weights: torch.Tensor, topk_ids: torch.Tensor, activation: str = "silu",
              inplace: bool = False, *, config: dict | None = None,
              backend: str = "auto") -> torch.Tensor:
    """The experts of a MoE layer: ``sum_j w_j * w2[e_j] @ (act(gate_e_j x) * up_e_j x)``.

    Parameters
    ----------
    hidden_states : [tokens, hidden], fp16/bf16/fp32, last dim contiguous
    w1 : [num_experts, 2*ffn, hidden], hidden_states' dtype: gate rows, then up rows
    w2 : [num_experts, hidden, ffn], hidden_states' dtype
    topk_weights : [tokens, topk] routing weights (float32 from fused_topk; any float dtype)
    topk_ids : [tokens, topk] int32/int64 experts, in [0, num_experts)
    activation : "silu" (SwiGLU) or "gelu" (GeGLU, exact erf GELU) applied to the gate
    inplace : write the result into ``hidden_states`` (and return it)
    config : the grouped GEMMs' block config (``tuning.CONFIG_KEYS``); default: the stored
        config for (E, ffn, hidden, device) nearest this token count, else ``default_config``
    backend : "auto" | "triton" | "torch" | "cuda" (auto: Triton on CUDA, the float32 reference
        on CPU; "cuda" means the family's GPU kernels, which are Triton)

    Returns
    -------
    [tokens, hidden] in hidden_states' dtype (hidden_states itself when ``inplace``).
    GEMM1 accumulates in float32 and stores act(gate)*up in the input dtype, as vLLM does; the
    top-k sum accumulates in float32.

    Example
    -------
    >>> w, ids = flashkit.fused_topk(router(x), topk=2)
    >>> y = flashkit.fused_moe(x, w1, w2, w, ids)
    """
    _check(hidden_states, w1, w2, topk_weights, topk_ids, activation)
    if not isinstance(inplace, bool):
        raise ValueError(f"inplace must be a bool, got {inplace!r}")
    backend = resolve_backend("moe", backend, hidden_states.device)
    cfg = None if config is None else [tuning.check_config(dict(config))[k]
                                       for k in tuning.CONFIG_KEYS]
    args = (hidden_states, w1, w2, topk_weights, topk_ids, activation, cfg, backend)
    if inplace:
        eager_or_op(_fused_moe_inplace_op, _fused_moe_inplace_impl)(*args)
        return hidden_states
    return eager_or_op(_fused_moe_op, _fused_moe_impl)(*args)
