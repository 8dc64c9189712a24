"""Cost model of a hybrid (attention + Mamba-2 + MLP) model for prefix caching.

Formulas (L tokens, D = d_model, N = d_state, d_inner = expand * D, b = bytes per element):

* KV bytes per token = ``2 * n_attn * kv_dim * k`` (K and V of every attention layer; k = bytes
  per KV element, ``kv_dtype_bytes``, b unless given).
* SSM state bytes per checkpoint = ``n_ssm * d_inner * N * s`` (Mamba-2: nheads * headdim = d_inner;
  s = bytes per state element, ``state_dtype_bytes``, b unless given: a scan that keeps its
  state in float32 under bf16 weights, as flashkit's does, holds s = 4).
* conv state bytes per checkpoint = ``n_ssm * (d_inner + 2 * n_groups * N) * (d_conv - 1) * b``
  (the last ``d_conv - 1`` inputs of the depthwise conv over x, B and C).
* forward FLOPs of an L-token prefill, per layer (Marconi, section 4):
  attention ``8 L D^2 + 4 L^2 D``, MLP ``16 L D^2``, Mamba ``12 L D^2 + 16 L D N + 10 L D``.
  A hit of length L saves exactly ``prefill_flops(L)``; a radix node spanning tokens [a, b)
  saves ``prefill_flops(b) - prefill_flops(a)`` more than its parent.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HybridModelConfig"]


@dataclass(frozen=True)
class HybridModelConfig:
    """Layer counts and widths of a hybrid model; defaults are Marconi's 7B hybrid
    (24 SSM, 4 attention, 28 MLP layers, D=4096, N=128, fp16)."""

    n_ssm: int = 24
    n_attn: int = 4
    n_mlp: int = 28
    d_model: int = 4096
    d_state: int = 128
    dtype_bytes: int = 2
    expand: int = 2
    d_conv: int = 4
    n_groups: int = 1
    kv_dim: int | None = None  # n_kv_heads * head_dim; d_model (multi-head attention) by default
    state_dtype_bytes: int | None = None  # SSM state element bytes; dtype_bytes by default
    kv_dtype_bytes: int | None = None  # KV element bytes; dtype_bytes by default

    def __post_init__(self):
        for name in ("kv_dim", "state_dtype_bytes", "kv_dtype_bytes"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive int or None, got {v!r}")
        for name in ("n_ssm", "n_attn", "n_mlp", "d_model", "d_state", "dtype_bytes", "expand",
                     "d_conv", "n_groups"):
            v = getattr(self, name)
            low = 0 if name in ("n_ssm", "n_attn", "n_mlp") else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be a non-negative int (positive for widths), "
                                 f"got {v!r}")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.n_attn * (self.kv_dim or self.d_model) * (self.kv_dtype_bytes
                                                                  or self.dtype_bytes)

    @property
    def ssm_state_bytes(self) -> int:
        return self.n_ssm * self.d_inner * self.d_state * (self.state_dtype_bytes
                                                            or self.dtype_bytes)

    @property
    def conv_state_bytes(self) -> int:
        conv_dim = self.d_inner + 2 * self.n_groups * self.d_state
        return self.n_ssm * conv_dim * (self.d_conv - 1) * self.dtype_bytes

    @property
    def state_bytes(self) -> int:
        """Bytes of one checkpoint: the SSM and conv states of every SSM layer."""
        return self.ssm_state_bytes + self.conv_state_bytes

    def prefill_flops(self, length: int) -> float:
        """Forward FLOPs of prefilling ``length`` tokens from scratch (= FLOPs a hit saves)."""
        L, D, N = float(length), float(self.d_model), float(self.d_state)
        return (self.n_attn * (8 * L * D * D + 4 * L * L * D) + self.n_mlp * 16 * L * D * D
                + self.n_ssm * (12 * L * D * D + 16 * L * D * N + 10 * L * D))

    def flops_between(self, start: int, end: int) -> float:
        """FLOPs saved by a hit at ``end`` beyond one at ``start``."""
        return self.prefill_flops(end) - self.prefill_flops(start)
