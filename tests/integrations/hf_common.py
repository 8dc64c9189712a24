"""Shared builders of the transformers integration tests: tiny random models (nothing is
downloaded), an eager twin with the same weights, and a left-padded batch."""
import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from flashkit.integrations import transformers as fk_hf  # noqa: E402

from ..helpers import TOL  # noqa: E402

# The Triton cases run the models on CPU tensors under the interpreter (tests/conftest.py sets
# it without a GPU); on a GPU machine test_transformers_gpu.py runs the kernels instead.
interpreter_only = pytest.mark.skipif(torch.cuda.is_available(),
                                      reason="Triton on CPU tensors needs the interpreter")

VOCAB = 96
SMALL = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=16,
             max_position_embeddings=128)


def twins(config, dtype=torch.float32, **impl):
    """(eager model, flashkit model) with the same random weights; ``impl``: the
    *_implementation keywords of the flashkit one ("fkit")."""
    fk_hf.register()
    torch.manual_seed(0)
    eager = transformers.AutoModelForCausalLM.from_config(
        copy.deepcopy(config), **{k: "eager" for k in impl}).eval().to(dtype)
    ours = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(config), **impl)
    ours.load_state_dict(eager.state_dict())
    return eager, ours.eval().to(dtype)


def padded_batch(seed=1, lens=(12, 7), vocab=VOCAB):
    """Token ids [2, max(lens)] left-padded, and the attention mask."""
    g = torch.Generator().manual_seed(seed)
    width = max(lens)
    ids = torch.randint(1, vocab, (len(lens), width), generator=g)
    mask = torch.zeros(len(lens), width, dtype=torch.long)
    for i, n in enumerate(lens):
        mask[i, width - n:] = 1
        ids[i, :width - n] = 0
    return ids, mask


def assert_logits_equal(eager, ours, ids, mask, dtype=torch.float32):
    with torch.no_grad():
        want = eager(ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask).logits
    real = mask.bool()  # padded positions' outputs are undefined (eager: a uniform average)
    torch.testing.assert_close(got[real].float(), want[real].float(), **TOL[dtype])


def assert_generate_equal(eager, ours, ids, mask, tokens):
    kw = dict(attention_mask=mask, max_new_tokens=tokens, min_new_tokens=tokens,
              do_sample=False, pad_token_id=0)
    want = eager.generate(ids, **kw)
    got = ours.generate(ids, **kw)
    assert torch.equal(got, want)
