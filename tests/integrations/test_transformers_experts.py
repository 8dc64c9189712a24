"""experts_implementation="fkit" (fused_moe on the model's own expert weights) on Mixtral and
Qwen3-MoE against their eager experts."""
import pytest
import torch

from .hf_common import (SMALL, assert_generate_equal, assert_logits_equal, fk_hf,
                        interpreter_only, padded_batch, transformers, twins)

IMPL = dict(attn_implementation=fk_hf.NAME, experts_implementation=fk_hf.NAME)
MOE = dict(num_local_experts=4, num_experts_per_tok=2)
CONFIGS = {
    "mixtral": lambda: transformers.MixtralConfig(**SMALL, **MOE),
    "qwen3_moe": lambda: transformers.Qwen3MoeConfig(
        **SMALL, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
        decoder_sparse_step=1),
}


@pytest.fixture(autouse=True)
def _auto_backend():
    yield
    fk_hf.register(backend="auto")


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_experts_logits_and_generate(family, monkeypatch):
    import flashkit

    seen = []
    real = flashkit.fused_moe

    def spy(**kw):
        seen.append((kw["w1"].data_ptr(), kw["w2"].data_ptr()))
        return real(**kw)

    monkeypatch.setattr(flashkit, "fused_moe", spy)
    eager, ours = twins(CONFIGS[family](), **IMPL)
    ids, mask = padded_batch()
    assert_logits_equal(eager, ours, ids, mask)
    assert_generate_equal(eager, ours, ids, mask, 32)
    experts = [m for m in ours.modules() if hasattr(m, "gate_up_proj")]
    ptrs = {(e.gate_up_proj.data_ptr(), e.down_proj.data_ptr()) for e in experts}
    assert seen and set(seen) <= ptrs  # fused_moe read the parameters themselves: no copy


@interpreter_only
def test_triton_interpreter_mixtral(monkeypatch):
    import flashkit

    backends, real = [], flashkit.fused_moe
    monkeypatch.setattr(flashkit, "fused_moe",
                        lambda **kw: (backends.append(kw["backend"]), real(**kw))[1])
    fk_hf.register(backend="triton")
    cfg = CONFIGS["mixtral"]()
    cfg.num_hidden_layers = 1
    eager, ours = twins(cfg, dtype=torch.float32, experts_implementation=fk_hf.NAME)
    ids, mask = padded_batch(lens=(5, 3))
    assert_logits_equal(eager, ours, ids, mask)
    assert backends and set(backends) == {"triton"}


def test_transposed_layout_is_a_view():
    from flashkit.integrations.transformers.experts import expert_weights

    m = torch.nn.Module()
    m.gate_up_proj = torch.nn.Parameter(torch.randn(3, 8, 12))  # [E, hidden, 2 * ffn]
    m.down_proj = torch.nn.Parameter(torch.randn(3, 6, 8))     # [E, ffn, hidden]
    m.is_transposed = True
    w1, w2 = expert_weights(m)
    assert w1.shape == (3, 12, 8) and w2.shape == (3, 8, 6)
    assert w1.data_ptr() == m.gate_up_proj.data_ptr() and w2.data_ptr() == m.down_proj.data_ptr()


def test_unsupported_activation_raises():
    cfg = CONFIGS["mixtral"]()
    cfg.hidden_act = "relu"
    cfg.num_hidden_layers = 1
    _, ours = twins(cfg, experts_implementation=fk_hf.NAME)
    with torch.no_grad(), pytest.raises(ValueError, match="hidden_act='relu'.*grouped_mm"):
        ours(torch.randint(1, 90, (1, 4)))
