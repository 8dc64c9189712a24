"""Ready placement rules: HF LLaMA/Qwen names, stacked MoE experts, flashkit's hybrid model."""
from __future__ import annotations

from .layout import Rule

__all__ = ["llama_rules", "moe_rules", "hybrid_rules", "hybrid_state_dict"]

_L = r"model\.layers\.\d+\."


def _check_pos(**kw):
    for k, v in kw.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{k} must be an int >= 1, got {v!r}")


def llama_rules(head_dim: int) -> list[Rule]:
    """Megatron-style TP for HF LLaMA/Qwen state dicts ([out, in] weights).

    q/k/v (and their biases) split by heads, o_proj by heads along its input dim, gate/up by
    ffn rows, down by ffn columns, embedding and LM head by vocab; norms replicated (Qwen3's
    per-head q_norm/k_norm too). The embedding lives on the first stage, the final norm and the
    LM head on the last (untied embeddings).
    """
    _check_pos(head_dim=head_dim)
    return [
        Rule(r"model\.embed_tokens\.weight", "vocab", what="vocab", stage="first"),
        Rule(_L + r"self_attn\.q_proj\.(weight|bias)", "column", granule=head_dim, what="heads"),
        Rule(_L + r"self_attn\.[kv]_proj\.(weight|bias)", "column", granule=head_dim,
             what="kv heads"),
        Rule(_L + r"self_attn\.o_proj\.weight", "row", granule=head_dim, what="heads"),
        Rule(_L + r"self_attn\.o_proj\.bias", "replicated"),
        Rule(_L + r"self_attn\.[qk]_norm\.weight", "replicated"),
        Rule(_L + r"mlp\.(gate|up)_proj\.weight", "column", what="ffn"),
        Rule(_L + r"mlp\.down_proj\.weight", "row", what="ffn"),
        Rule(_L + r"(input|post_attention)_layernorm\.weight", "replicated"),
        Rule(r"model\.norm\.weight", "replicated", stage="last"),
        Rule(r"lm_head\.weight", "vocab", what="vocab", stage="last"),
    ]


def moe_rules(head_dim: int) -> list[Rule]:
    """llama_rules plus expert parallelism over the TP ranks for stacked experts.

    ``mlp.experts.<name>`` tensors of shape [num_experts, ...] (HF's stacked gate_up_proj /
    down_proj, or w13/w2) split by experts; the router (``mlp.gate.weight``) is replicated;
    a shared expert (``mlp.shared_expert.*``) is split like a dense MLP.
    """
    return [
        Rule(_L + r"mlp\.experts\.[A-Za-z0-9_]+", "expert", what="experts"),
        Rule(_L + r"mlp\.gate\.weight", "replicated"),
        Rule(_L + r"mlp\.shared_expert\.(gate|up)_proj\.weight", "column", what="shared ffn"),
        Rule(_L + r"mlp\.shared_expert\.down_proj\.weight", "row", what="shared ffn"),
        Rule(_L + r"mlp\.shared_expert_gate\.weight", "replicated"),
        *llama_rules(head_dim),
    ]


def hybrid_rules(*, d_model: int, d_inner: int, d_state: int, headdim: int,
                 attn_head_dim: int) -> list[Rule]:
    """TP for flashkit's hybrid model (TinyHybrid: x @ W weights, so [in, out] storage).

    Mamba-2 mixers split by SSM heads: in_proj's output packs [z (d_inner) | x (d_inner) |
    B (d_state) | C (d_state) | dt (nheads)], of which z, x and dt split by heads and B, C (one
    group) are replicated; conv1d over [x | B | C] likewise; A, D, dt_bias by heads; out_proj
    by heads along its input dim. Attention's packed qkv splits q, k and v by heads separately.
    Names are those of ``hybrid_state_dict``.
    """
    _check_pos(d_model=d_model, d_inner=d_inner, d_state=d_state, headdim=headdim,
               attn_head_dim=attn_head_dim)
    nh = d_inner // headdim
    m, a = r"layers\.\d+\.mixer\.", r"layers\.\d+\.attn\."
    return [
        Rule(r"embed", "vocab", what="vocab", stage="first"),
        Rule(r"head", "vocab", dim=1, what="vocab", stage="last"),
        Rule(m + r"in_proj", "column", dim=1, what="mamba heads",
             segments=((d_inner, headdim), (d_inner, headdim), (d_state, 0), (d_state, 0),
                       (nh, 1))),
        Rule(m + r"conv_[wb]", "column", dim=0, what="mamba heads",
             segments=((d_inner, headdim), (d_state, 0), (d_state, 0))),
        Rule(m + r"(A|D|dt_bias)", "column", what="mamba heads"),
        Rule(m + r"out", "row", dim=0, granule=headdim, what="mamba heads"),
        Rule(a + r"qkv", "column", dim=1, what="attention heads",
             segments=((d_model, attn_head_dim),) * 3),
        Rule(a + r"out", "row", dim=0, granule=attn_head_dim, what="attention heads"),
        Rule(r"layers\.\d+\.mlp\.w1", "column", dim=1, what="ffn"),
        Rule(r"layers\.\d+\.mlp\.w2", "row", dim=0, what="ffn"),
    ]


def hybrid_state_dict(model) -> dict:
    """Name TinyHybrid's tensors (``embed``, ``head``, ``layers.{i}.mixer.*`` for Mamba-2,
    ``layers.{i}.attn.qkv|out`` for attention, ``layers.{i}.mlp.w1|w2``) so that hybrid_rules
    can place them. The tensors are the model's own (no copies)."""
    sd = {"embed": model.embed, "head": model.head}
    for i, (kind, mix, (w1, w2)) in enumerate(model.params):
        for k, v in mix.items():
            sd[f"layers.{i}.{'mixer' if kind == 's' else 'attn'}.{k}"] = v
        sd[f"layers.{i}.mlp.w1"], sd[f"layers.{i}.mlp.w2"] = w1, w2
    return sd
