"""attn_implementation="fkit" on real transformers model classes against their eager path:
logits of a left-padded batch, greedy generation (prefill, then decode steps against the
DynamicCache), packed sequences, the ops' kernels (torch backend and Triton interpreter) in
bf16, and the errors for what flashkit does not serve."""
import pytest
import torch

from .hf_common import (SMALL, TOL, VOCAB, assert_generate_equal, assert_logits_equal, fk_hf,
                        interpreter_only, padded_batch, transformers, twins)

ATTN = dict(attn_implementation=fk_hf.NAME)

# sliding_window 4 < the 12-token prompts, so the window cuts keys in prefill and decode.
CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(**SMALL),
    "qwen3": lambda: transformers.Qwen3Config(**SMALL, use_sliding_window=True, sliding_window=4,
                                              max_window_layers=1),
    "mistral": lambda: transformers.MistralConfig(**SMALL, sliding_window=4),
    "gemma2": lambda: transformers.Gemma2Config(**SMALL, sliding_window=4,
                                                attn_logit_softcapping=2.0,
                                                final_logit_softcapping=30.0),
}


@pytest.fixture(autouse=True)
def _torch_backend():
    yield
    fk_hf.register(backend="auto")


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_padded_logits_and_generate(family):
    eager, ours = twins(CONFIGS[family](), **ATTN)
    ids, mask = padded_batch()
    assert_logits_equal(eager, ours, ids, mask)
    assert_generate_equal(eager, ours, ids, mask, 32)


def test_packed_positions_match_each_sequence_alone():
    eager, ours = twins(CONFIGS["mistral"](), **ATTN)
    a, b = torch.randint(1, VOCAB, (1, 9)), torch.randint(1, VOCAB, (1, 6))
    packed = torch.cat([a, b], 1)
    pos = torch.cat([torch.arange(9), torch.arange(6)])[None]
    with torch.no_grad():
        got = ours(packed, position_ids=pos).logits[0]
        want = torch.cat([eager(a).logits[0], eager(b).logits[0]])
    torch.testing.assert_close(got, want, **TOL[torch.float32])


def test_cu_seq_lens_kwargs_take_the_ragged_path(monkeypatch):
    import flashkit.ops.attention as ops_attention

    seen = []
    monkeypatch.setattr(ops_attention, "naive_batch_attention",
                        _spy(ops_attention.naive_batch_attention, seen))
    eager, ours = twins(CONFIGS["llama"](), **ATTN)
    a, b = torch.randint(1, VOCAB, (1, 5)), torch.randint(1, VOCAB, (1, 8))
    cu = torch.tensor([0, 5, 13], dtype=torch.int32)
    with torch.no_grad():
        got = ours(torch.cat([a, b], 1), position_ids=torch.cat(
            [torch.arange(5), torch.arange(8)])[None], cu_seq_lens_q=cu, cu_seq_lens_k=cu,
            max_length_q=8, max_length_k=8).logits[0]
        want = torch.cat([eager(a).logits[0], eager(b).logits[0]])
    torch.testing.assert_close(got, want, **TOL[torch.float32])
    assert seen and all(qo.tolist() == [0, 5, 13] for qo in seen)


def _spy(fn, seen):
    def wrapped(q, qo_indptr, kv, **kw):
        seen.append(qo_indptr)
        return fn(q, qo_indptr, kv, **kw)
    return wrapped


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=interpreter_only)])
def test_bf16_runs_the_wrappers(backend, monkeypatch):
    """bf16 goes through flashkit's wrappers (prefill, then decode steps); Triton under the
    interpreter on a 1-layer Gemma2 (soft cap + window)."""
    import flashkit

    calls = []
    for name in ("BatchPrefillWithPagedKVCacheWrapper", "BatchDecodeWithPagedKVCacheWrapper"):
        cls = getattr(flashkit, name)
        monkeypatch.setattr(flashkit, name, _counting(cls, calls))
    fk_hf.register(backend=backend)
    cfg = CONFIGS["gemma2"]()
    cfg.num_hidden_layers = 1 if backend == "triton" else 2
    eager, ours = twins(cfg, dtype=torch.bfloat16, **ATTN)
    ids, mask = padded_batch(lens=(6, 4))
    # eager rounds the softmax weights to bf16 before p @ v; flashkit keeps them in float32:
    # up to 3e-2 apart on these logits (|logit| < 4), twice the bf16 row of the table.
    with torch.no_grad():
        want = eager(ids, attention_mask=mask).logits.float()
        got = ours(ids, attention_mask=mask).logits.float()
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=4e-2, rtol=4e-2)
    # Decode steps too: greedy tokens equal and each step's logits within the same bound.
    kw = dict(attention_mask=mask, max_new_tokens=2, do_sample=False, pad_token_id=0,
              output_logits=True, return_dict_in_generate=True)
    want, got = eager.generate(ids, **kw), ours.generate(ids, **kw)
    assert torch.equal(got.sequences, want.sequences)
    for g, w in zip(got.logits, want.logits):
        torch.testing.assert_close(g.float(), w.float(), atol=4e-2, rtol=4e-2)
    assert {("BatchPrefillWithPagedKVCacheWrapper", backend),
            ("BatchDecodeWithPagedKVCacheWrapper", backend)} <= set(calls)


def _counting(cls, calls):
    class Counting(cls):
        def plan(self, *args, **kwargs):
            calls.append((cls.__name__, self._backend))
            return super().plan(*args, **kwargs)
    return Counting


def test_register_is_idempotent_and_detects_a_conflict():
    fk_hf.register()
    fk_hf.register()
    assert fk_hf.is_registered()
    held = transformers.AttentionInterface._global_mapping[fk_hf.NAME]
    transformers.AttentionInterface.register(fk_hf.NAME, lambda *a, **k: None)
    try:
        with pytest.raises(RuntimeError, match="already holds a different 'fkit'"):
            fk_hf.register()
        assert not fk_hf.is_registered()
    finally:
        transformers.AttentionInterface.register(fk_hf.NAME, held)


def _call(**overrides):
    from flashkit.integrations.transformers.attention import attention_forward

    module = torch.nn.Module()
    module.is_causal = True
    q = torch.randn(1, 4, 5, 16)
    k = v = torch.randn(1, 2, 5, 16)
    args = dict(module=module, query=q, key=k, value=v, attention_mask=None)
    args.update(overrides)
    with torch.no_grad():
        return attention_forward(**args)


@pytest.mark.parametrize("overrides, match", [
    (dict(dropout=0.1), "does not support attention dropout"),
    (dict(attention_mask=torch.zeros(1, 1, 5, 5)), "4-D torch.float32 .additive."),
    (dict(query=torch.randn(1, 4, 5, 640), key=torch.randn(1, 2, 5, 640),
          value=torch.randn(1, 2, 5, 640)), "head_dim 640"),
    (dict(query=torch.randn(1, 4, 5, 16).double()), "torch.float64"),
    (dict(value=torch.randn(1, 2, 5, 8)), "value head_dim"),
    (dict(sliding_window=3, is_causal=False), "bidirectional sliding window"),
    (dict(cache=object()), "continuous batching .PagedAttentionCache"),
])
def test_unsupported_raises_naming_it_and_the_alternative(overrides, match):
    with pytest.raises(ValueError, match=match) as err:
        _call(**overrides)
    assert "attn_implementation=" in str(err.value)


def test_backward_raises():
    q = torch.randn(1, 4, 5, 16, requires_grad=True)
    from flashkit.integrations.transformers.attention import attention_forward

    module = torch.nn.Module()
    with pytest.raises(ValueError, match="backward"):
        attention_forward(module, q, torch.randn(1, 2, 5, 16), torch.randn(1, 2, 5, 16), None)


def test_bidirectional_and_4d_bool_mask_match_the_reference():
    from flashkit.ops.attention import naive_single_attention

    q, k, v = torch.randn(2, 4, 5, 16), torch.randn(2, 2, 5, 16), torch.randn(2, 2, 5, 16)
    keep = torch.rand(2, 1, 5, 5) > 0.3
    keep[..., 0] = True
    for mask, causal in ((None, False), (keep, True)):
        out, _ = _call(query=q, key=k, value=v, attention_mask=mask, is_causal=causal)
        for b in range(2):
            want, _ = naive_single_attention(
                q[b].transpose(0, 1), k[b].transpose(0, 1), v[b].transpose(0, 1),
                causal=False, custom_mask=None if mask is None else keep[b, 0])
            torch.testing.assert_close(out[b], want, **TOL[torch.float32])


def test_custom_mask_functions_raise():
    from flashkit.integrations.transformers.attention import padding_mask

    with pytest.raises(ValueError, match="custom mask functions"):
        padding_mask(1, 4, 4, use_vmap=True)


def test_static_cache_raises_instead_of_reading_empty_slots():
    _, ours = twins(CONFIGS["llama"](), **ATTN)
    ids, mask = padded_batch()
    with pytest.raises(ValueError, match="StaticCache"):
        ours.generate(ids, attention_mask=mask, max_new_tokens=2, do_sample=False,
                      pad_token_id=0, cache_implementation="static")


def test_cross_attention_with_encoder_padding():
    """Non-causal, 3 queries over 7 keys of which row 1 has 4: every query row attends to its
    row's real keys (the mask says nothing about the queries)."""
    from flashkit.ops.attention import naive_single_attention

    q, k, v = torch.randn(2, 4, 3, 16), torch.randn(2, 2, 7, 16), torch.randn(2, 2, 7, 16)
    keep = torch.ones(2, 7, dtype=torch.bool)
    keep[1, 4:] = False
    out, _ = _call(query=q, key=k, value=v, attention_mask=keep, is_causal=False)
    for b, n in ((0, 7), (1, 4)):
        want, _ = naive_single_attention(q[b].transpose(0, 1), k[b, :, :n].transpose(0, 1),
                                         v[b, :, :n].transpose(0, 1))
        torch.testing.assert_close(out[b], want, **TOL[torch.float32])


def test_padding_mask_slices_the_layers_kv_columns():
    from flashkit.integrations.transformers.attention import padding_mask

    m = torch.tensor([[0, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1]], dtype=torch.long)
    assert padding_mask(2, 1, 6, attention_mask=m).tolist() == m.bool().tolist()
    # a sliding-window cache layer holding the last 3 of 6 tokens: no padding left in them
    assert padding_mask(2, 1, 3, kv_offset=3, attention_mask=m) is None
    # a static cache of 8 slots: the 2 never written are not attended to
    assert padding_mask(2, 1, 8, attention_mask=m)[:, 6:].any().item() is False
    # no mask, a static cache: the slots past the tokens seen are masked
    assert padding_mask(2, 1, 8, q_offset=5, attention_mask=None)[0].tolist() == [True] * 6 + [
        False] * 2
    assert padding_mask(2, 4, 4, q_offset=0, attention_mask=None) is None
