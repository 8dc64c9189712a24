"""transformers' ExpertsInterface hook served by flashkit.fused_moe.

The model routes (router logits, top-k, normalisation are its own); this hook gets the tokens,
their experts and weights and runs the experts as fused_moe's two grouped GEMMs. transformers'
expert layout is fused_moe's without a copy: ``gate_up_proj`` [E, 2*ffn, hidden] (gate rows,
then up rows) is w1 and ``down_proj`` [E, hidden, ffn] is w2; a transposed layout
(``is_transposed``: [E, hidden, 2*ffn] and [E, ffn, hidden]) is passed as transposed views,
which fused_moe's kernels read by their strides. No weight is copied, per call or once.
"""
from __future__ import annotations

import torch

from . import _state

__all__ = ["experts_forward"]

# transformers' activation names -> fused_moe's (GELU: the exact erf form only).
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu"}


def _unsupported(what: str) -> ValueError:
    return ValueError(f"experts_implementation='fkit' does not support {what}; use "
                      f"experts_implementation='grouped_mm' or 'eager' for this model")


def _activation(experts) -> str:
    if getattr(type(experts), "_apply_gate", None) is not _default_gate():
        raise _unsupported(f"{type(experts).__name__}'s own gating (_apply_gate)")
    config = getattr(experts, "config", None)
    name = getattr(config, "hidden_act", None)
    if name not in _ACTIVATIONS:
        raise _unsupported(f"hidden_act={name!r} (fused_moe applies {sorted(_ACTIVATIONS)})")
    return _ACTIVATIONS[name]


def _default_gate():
    from transformers.integrations.moe import _default_apply_gate

    return _default_apply_gate


def expert_weights(experts) -> tuple[torch.Tensor, torch.Tensor]:
    """(w1 [E, 2*ffn, hidden], w2 [E, hidden, ffn]) as views of the module's parameters."""
    for flag, ok, what in (("has_gate", True, "experts without a gate (up_proj only)"),
                           ("has_bias", False, "expert biases"),
                           ("is_concatenated", True, "interleaved gate/up rows"),
                           ("has_post_expert_norm", False, "a post-expert norm"),
                           ("_is_expert_parallel", False, "expert parallelism")):
        if bool(getattr(experts, flag, ok)) != ok:
            raise _unsupported(what)
    w1, w2 = experts.gate_up_proj, experts.down_proj
    if getattr(experts, "is_transposed", False):
        w1, w2 = w1.transpose(1, 2), w2.transpose(1, 2)
    return w1, w2


def experts_forward(self: torch.nn.Module, hidden_states: torch.Tensor,
                    top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
    """ExpertsInterface hook: hidden_states [tokens, hidden], top_k_index [tokens, k] int,
    top_k_weights [tokens, k] -> [tokens, hidden] (the weighted sum over each token's experts)."""
    import flashkit

    if torch.is_grad_enabled() and (hidden_states.requires_grad or self.gate_up_proj.requires_grad):
        raise _unsupported("backward (fused_moe is forward only; run under torch.no_grad())")
    activation = _activation(self)
    w1, w2 = expert_weights(self)
    backend = _state.backend()
    out = flashkit.fused_moe(hidden_states=hidden_states.contiguous(), w1=w1, w2=w2,
                             topk_weights=top_k_weights, topk_ids=top_k_index,
                             activation=activation, backend="triton" if backend == "cuda"
                             else backend)
    return out.to(hidden_states.dtype)
