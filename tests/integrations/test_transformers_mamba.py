"""Mamba-2 and two hybrids (Bamba, FalconH1) through the kernel hub: flashkit's chunk_ssd_scan,
selective_state_update, causal_conv1d and causal_conv1d_update under the names the models ask
for, against the models' own torch path. kernelize swaps functions shared by every model of a
class, so each test takes the eager result first and restores the originals after."""
import pytest
import torch

from .hf_common import TOL, VOCAB, fk_hf, interpreter_only, padded_batch, transformers, twins

pytest.importorskip("kernels")

CONFIGS = {
    "mamba2": lambda: transformers.Mamba2Config(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, state_size=16, expand=2,
        head_dim=16, num_heads=8, n_groups=2, chunk_size=16, conv_kernel=4),
    "bamba": lambda: transformers.BambaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, attn_layer_indices=[1], mamba_n_heads=8,
        mamba_d_head=16, mamba_n_groups=1, mamba_d_state=16, mamba_chunk_size=16,
        mamba_expand=2, max_position_embeddings=128),
    "falcon_h1": lambda: transformers.FalconH1Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, mamba_d_ssm=128,
        mamba_n_heads=8, mamba_d_head=16, mamba_n_groups=1, mamba_d_state=16,
        mamba_chunk_size=16, mamba_expand=2, max_position_embeddings=128),
}


def _kernel_funcs(model):
    return {id(f): f for m in model.modules() for f in getattr(m, "_kernel_funcs", {}).values()}


@pytest.fixture
def restore():
    """Undo kernelize (it sets ``forward`` on the shared function modules)."""
    touched = []
    yield touched
    for fn in touched:
        fn.__dict__.pop("forward", None)
    fk_hf.register(backend="auto")


def _run(model, ids, mask, tokens):
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
    out = model.generate(ids, attention_mask=mask, max_new_tokens=tokens, min_new_tokens=tokens,
                         do_sample=False, pad_token_id=0)
    return logits, out


@pytest.mark.parametrize("family, backend, tokens", [
    ("mamba2", "torch", 32), ("bamba", "torch", 32), ("falcon_h1", "torch", 32),
    pytest.param("mamba2", "triton", 2, marks=interpreter_only)])
def test_logits_and_generate(family, backend, tokens, restore, monkeypatch):
    import flashkit

    calls = []
    for name in ("chunk_ssd_scan", "selective_state_update", "causal_conv1d",
                 "causal_conv1d_update"):
        real = getattr(flashkit, name)
        monkeypatch.setattr(flashkit, name, lambda *a, _r=real, _n=name, **k: (
            calls.append((_n, k["backend"])), _r(*a, **k))[1])
    cfg = CONFIGS[family]()
    if backend == "triton":
        cfg.num_hidden_layers = 1
    impl = dict(attn_implementation=fk_hf.NAME) if family != "mamba2" else {}
    eager, ours = twins(cfg, **impl) if impl else twins(cfg, attn_implementation="eager")
    # The hybrids run left-padded (the models zero the pad tokens' SSM inputs on both paths).
    ids, mask = padded_batch(lens=(12, 12) if family == "mamba2" else (12, 9))
    want_logits, want = _run(eager, ids, mask, tokens)
    fk_hf.register(backend=backend)
    restore.extend(_kernel_funcs(ours).values())
    fk_hf.kernelize(ours)
    got_logits, got = _run(ours, ids, mask, tokens)
    real = mask.bool()
    torch.testing.assert_close(got_logits[real], want_logits[real], **TOL[torch.float32])
    assert torch.equal(got, want)
    assert {"chunk_ssd_scan", "selective_state_update", "causal_conv1d",
            "causal_conv1d_update"} <= {n for n, _ in calls}
    assert {b for _, b in calls} == {backend}


def test_dt_limit_and_seq_idx_semantics():
    """mamba_ssm's dt_limit (clamp after softplus) and seq_idx (packed sequences) against
    flashkit's reference run per sequence."""
    from flashkit.integrations.transformers.mamba import mamba_chunk_scan_combined
    from flashkit.ops.ssm import naive_ssd_scan

    g = torch.Generator().manual_seed(3)
    L, H, P, G, N = 20, 4, 8, 2, 8
    x = torch.randn(1, L, H, P, generator=g)
    dt = torch.randn(1, L, H, generator=g)
    A = -torch.rand(H, generator=g)
    B, C = torch.randn(1, L, G, N, generator=g), torch.randn(1, L, G, N, generator=g)
    D, bias = torch.randn(H, generator=g), torch.randn(H, generator=g)
    seq_idx = torch.tensor([[0] * 12 + [1] * 8], dtype=torch.int32)
    y, last = mamba_chunk_scan_combined(x, dt, A, B, C, 16, D=D, dt_bias=bias, dt_softplus=True,
                                        dt_limit=(0.1, 0.9), return_final_states=True,
                                        seq_idx=seq_idx)
    dt_c = torch.nn.functional.softplus(dt + bias).clamp(0.1, 0.9)
    for s, e in ((0, 12), (12, 20)):
        ref = naive_ssd_scan(x[:, s:e], dt_c[:, s:e], A, B[:, s:e], C[:, s:e], D=D)
        torch.testing.assert_close(y[:, s:e], ref[0], **TOL[torch.float32])
    torch.testing.assert_close(last, ref[1].float(), **TOL[torch.float32])


def test_unsupported_raises():
    from flashkit.integrations.transformers.mamba import causal_conv1d_fn, selective_state_update

    with pytest.raises(ValueError, match="activation='relu'"):
        causal_conv1d_fn(torch.randn(1, 4, 6), torch.randn(4, 3), activation="relu")
    state = torch.zeros(1, 2, 3, 4)
    dt = torch.randn(1, 2, 3)  # varies over headdim: flashkit's Mamba-2 step has one per head
    with pytest.raises(ValueError, match="dt that varies over headdim"):
        selective_state_update(state, torch.randn(1, 2, 3), dt, -torch.rand(2),
                               torch.randn(1, 1, 4), torch.randn(1, 1, 4))


def test_kernelize_refuses_a_kernels_version_transformers_disables(monkeypatch):
    from transformers.utils import import_utils

    monkeypatch.setattr(import_utils, "is_kernels_available", lambda: False)
    with pytest.raises(RuntimeError, match="disables its kernel hub"):
        fk_hf.kernelize(torch.nn.Linear(2, 2))
