"""A tiny LLaMA-shaped model (HF LlamaForCausalLM's math and names) and its single-process
reference run, the oracle for the sharded engine.

Weights and activations are fp32; attention runs through flashkit's ops, which take fp16/bf16:
q, k and v are rounded to fp16 (the KV cache's dtype) and the output comes back to fp32.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import flashkit

__all__ = ["TinyLlamaConfig", "random_llama_state", "rms_norm", "rope", "TinyLlama",
           "to_hf_config"]

KV_DTYPE = torch.float16


@dataclass(frozen=True)
class TinyLlamaConfig:
    vocab: int = 64
    hidden: int = 32
    layers: int = 4
    heads: int = 4
    kv_heads: int = 4
    ffn: int = 64
    rope_theta: float = 10000.0
    eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def random_llama_state(cfg: TinyLlamaConfig, seed: int = 0) -> dict:
    """HF-named random fp32 weights (``model.embed_tokens.weight`` ... ``lm_head.weight``)."""
    g = torch.Generator().manual_seed(seed)

    def w(*shape, scale=None):
        return torch.randn(*shape, generator=g) * (shape[-1] ** -0.5 if scale is None else scale)

    d, hd = cfg.hidden, cfg.head_dim
    sd = {"model.embed_tokens.weight": w(cfg.vocab, d, scale=1.0)}
    for i in range(cfg.layers):
        p = f"model.layers.{i}."
        sd |= {p + "self_attn.q_proj.weight": w(cfg.heads * hd, d),
               p + "self_attn.k_proj.weight": w(cfg.kv_heads * hd, d),
               p + "self_attn.v_proj.weight": w(cfg.kv_heads * hd, d),
               p + "self_attn.o_proj.weight": w(d, cfg.heads * hd),
               p + "mlp.gate_proj.weight": w(cfg.ffn, d),
               p + "mlp.up_proj.weight": w(cfg.ffn, d),
               p + "mlp.down_proj.weight": w(d, cfg.ffn),
               p + "input_layernorm.weight": 1 + 0.1 * torch.randn(d, generator=g),
               p + "post_attention_layernorm.weight": 1 + 0.1 * torch.randn(d, generator=g)}
    sd["model.norm.weight"] = 1 + 0.1 * torch.randn(d, generator=g)
    sd["lm_head.weight"] = w(cfg.vocab, d)
    return sd


def to_hf_config(cfg: TinyLlamaConfig):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=cfg.vocab, hidden_size=cfg.hidden, intermediate_size=cfg.ffn,
                       num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                       num_key_value_heads=cfg.kv_heads, rms_norm_eps=cfg.eps,
                       rope_theta=cfg.rope_theta, max_position_embeddings=4096,
                       tie_word_embeddings=False, attention_bias=False, mlp_bias=False)


def rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rope(x, positions, theta):
    """HF's rotate-half RoPE: x [T, heads, head_dim], positions int64 [T]."""
    hd = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd)
    ang = positions.float()[:, None] * inv[None]
    cos, sin = torch.cat([ang, ang], -1).cos()[:, None], torch.cat([ang, ang], -1).sin()[:, None]
    x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


class TinyLlama:
    """The whole model in one process: ``prefill(tokens)`` then ``decode(token)`` steps, each
    returning fp32 logits; the KV of one request is kept contiguous (NHD)."""

    def __init__(self, cfg: TinyLlamaConfig, state: dict):
        self.cfg, self.sd = cfg, state
        self.k = [None] * cfg.layers
        self.v = [None] * cfg.layers

    def _layer(self, i, x, pos, decode):
        c, p = self.cfg, f"model.layers.{i}."
        w = lambda n: self.sd[p + n]  # noqa: E731
        h = rms_norm(x, w("input_layernorm.weight"), c.eps)
        T = x.shape[0]
        q = rope((h @ w("self_attn.q_proj.weight").T).view(T, c.heads, c.head_dim), pos,
                 c.rope_theta)
        k = rope((h @ w("self_attn.k_proj.weight").T).view(T, c.kv_heads, c.head_dim), pos,
                 c.rope_theta)
        v = (h @ w("self_attn.v_proj.weight").T).view(T, c.kv_heads, c.head_dim)
        k, v = k.to(KV_DTYPE), v.to(KV_DTYPE)
        self.k[i] = k if self.k[i] is None else torch.cat([self.k[i], k])
        self.v[i] = v if self.v[i] is None else torch.cat([self.v[i], v])
        if decode:
            o = flashkit.single_decode_with_kv_cache(q=q[0].to(KV_DTYPE), k=self.k[i],
                                                     v=self.v[i])[None]
        else:
            o = flashkit.single_prefill_with_kv_cache(q=q.to(KV_DTYPE), k=self.k[i], v=self.v[i],
                                                      causal=True)
        x = x + o.float().reshape(T, -1) @ w("self_attn.o_proj.weight").T
        h = rms_norm(x, w("post_attention_layernorm.weight"), c.eps)
        act = torch.nn.functional.silu(h @ w("mlp.gate_proj.weight").T) * (
            h @ w("mlp.up_proj.weight").T)
        return x + act @ w("mlp.down_proj.weight").T

    def _run(self, tokens, decode):
        start = 0 if self.k[0] is None else self.k[0].shape[0]
        pos = torch.arange(start, start + len(tokens))
        x = self.sd["model.embed_tokens.weight"][tokens]
        for i in range(self.cfg.layers):
            x = self._layer(i, x, pos, decode)
        return rms_norm(x, self.sd["model.norm.weight"], self.cfg.eps) @ self.sd["lm_head.weight"].T

    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens int64 [T] -> logits [T, vocab] (a fresh request)."""
        self.k = [None] * self.cfg.layers
        self.v = [None] * self.cfg.layers
        return self._run(tokens, decode=False)

    def decode(self, token: int) -> torch.Tensor:
        """One more token -> logits [vocab]."""
        return self._run(torch.tensor([token]), decode=True)[0]
