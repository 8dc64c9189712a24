"""FusedMoE: a MoE layer (router + experts) as an nn.Module over the public ops."""
from __future__ import annotations

import torch
from torch import nn

from .._common.backends import TABLE
from .._common.checks import FLOAT_DTYPES
from . import reference
from .fused_moe import fused_moe
from .routing import check_routing, fused_topk

__all__ = ["FusedMoE"]


class FusedMoE(nn.Module):
    """Router and experts of one MoE layer.

    Parameters
    ----------
    num_experts, topk, hidden_size, ffn_size : E, experts per token, model dim, expert FFN dim
    activation : "silu" | "gelu" (gated: ``act(gate) * up``)
    scoring, renormalize, num_expert_groups, topk_group : routing, as in ``fused_topk``
    correction_bias : own a [E] ``e_score_correction_bias`` buffer (DeepSeek-V3)
    backend : passed to the ops ("auto": Triton on CUDA, the reference on CPU)

    Weights: ``gate.weight`` [E, hidden] (the router, a bias-free Linear), ``w1`` [E, 2*ffn, hidden]
    (gate then up rows), ``w2`` [E, hidden, ffn]. ``forward(x)`` takes [..., hidden] and returns
    the same shape; routing runs in float32.

    Example
    -------
    >>> moe = FusedMoE(8, 2, 4096, 14336, dtype=torch.bfloat16, device="cuda")  # Mixtral
    >>> y = moe(x)
    """

    def __init__(self, num_experts: int, topk: int, hidden_size: int, ffn_size: int, *,
                 activation: str = "silu", scoring: str = "softmax", renormalize: bool = True,
                 num_expert_groups: int | None = None, topk_group: int | None = None,
                 correction_bias: bool = False, backend: str = "auto",
                 dtype: torch.dtype | None = None, device=None):
        super().__init__()
        for name, v in (("num_experts", num_experts), ("topk", topk),
                        ("hidden_size", hidden_size), ("ffn_size", ffn_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if activation not in reference.ACTIVATIONS:
            raise ValueError(f"activation must be one of {reference.ACTIVATIONS}, got {activation!r}")
        # Everything forward() would refuse is refused here, before any weight is allocated.
        check_routing(num_experts, topk, scoring, num_expert_groups, topk_group)
        if not isinstance(renormalize, bool):
            raise ValueError(f"renormalize must be a bool, got {renormalize!r}")
        if not isinstance(correction_bias, bool):
            raise ValueError(f"correction_bias must be a bool (own the buffer or not), got "
                             f"{correction_bias!r}")
        if backend not in TABLE["moe"].choices:
            raise ValueError(f"backend must be one of {TABLE['moe'].choices}, got {backend!r}")
        if dtype is not None and dtype not in FLOAT_DTYPES:
            raise ValueError(f"dtype must be None or one of {FLOAT_DTYPES}, got {dtype!r}")
        self.num_experts, self.topk = num_experts, topk
        self.hidden_size, self.ffn_size = hidden_size, ffn_size
        self.activation, self.scoring, self.renormalize = activation, scoring, renormalize
        self.num_expert_groups, self.topk_group = num_expert_groups, topk_group
        self.backend = backend
        kw = dict(dtype=dtype, device=device)
        self.gate = nn.Linear(hidden_size, num_experts, bias=False, **kw)
        self.w1 = nn.Parameter(torch.empty(num_experts, 2 * ffn_size, hidden_size, **kw))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden_size, ffn_size, **kw))
        self.register_buffer("e_score_correction_bias",
                             torch.zeros(num_experts, dtype=torch.float32, device=device)
                             if correction_bias else None)
        self.reset_parameters()

    def reset_parameters(self):
        # Each expert as two Linear layers (uniform, fan-in scaled).
        nn.init.uniform_(self.w1, -self.hidden_size ** -0.5, self.hidden_size ** -0.5)
        nn.init.uniform_(self.w2, -self.ffn_size ** -0.5, self.ffn_size ** -0.5)
        self.gate.reset_parameters()

    def route(self, x2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[tokens, hidden] -> (topk_weights float32, topk_ids int32), each [tokens, topk]."""
        logits = self.gate(x2d).float()
        return fused_topk(logits, self.topk, self.renormalize, self.scoring,
                          self.e_score_correction_bias, self.num_expert_groups, self.topk_group,
                          backend=self.backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.hidden_size:
            raise ValueError(f"x must end in hidden_size={self.hidden_size}, got {tuple(x.shape)}")
        x2d = x.reshape(-1, self.hidden_size)
        weights, ids = self.route(x2d)
        out = fused_moe(x2d.contiguous(), self.w1, self.w2, weights, ids, self.activation,
                        backend=self.backend)
        return out.view(x.shape)

    def extra_repr(self) -> str:
        return (f"num_experts={self.num_experts}, topk={self.topk}, hidden={self.hidden_size}, "
                f"ffn={self.ffn_size}, activation={self.activation}, scoring={self.scoring}")
