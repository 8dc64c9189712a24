"""The same models on a GPU: bf16, backend "auto" (flashkit's Triton kernels), against eager."""
import pytest
import torch

from .hf_common import SMALL, fk_hf, padded_batch, transformers, twins

pytestmark = pytest.mark.gpu

# eager rounds the softmax weights to bf16 before p @ v, flashkit keeps them in float32; the
# CPU bf16 case (test_bf16_runs_the_wrappers) saw up to 3e-2 on |logits| < 4.
BF16_LOGITS = dict(atol=4e-2, rtol=4e-2)


def _compare(eager, ours, ids, mask):
    with torch.no_grad():
        want = eager(ids, attention_mask=mask).logits.float()
        got = ours(ids, attention_mask=mask).logits.float()
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], **BF16_LOGITS)


@pytest.mark.parametrize("family", ["gemma2", "mixtral"])
def test_attention_and_experts_on_cuda(family):
    moe = family == "mixtral"
    cfg = (transformers.MixtralConfig(**SMALL, num_local_experts=4, num_experts_per_tok=2) if moe
           else transformers.Gemma2Config(**SMALL, sliding_window=4, attn_logit_softcapping=2.0))
    impl = dict(attn_implementation=fk_hf.NAME)
    if moe:
        impl["experts_implementation"] = fk_hf.NAME
    eager, ours = twins(cfg, dtype=torch.bfloat16, **impl)
    eager, ours = eager.cuda(), ours.cuda()
    ids, mask = (t.cuda() for t in padded_batch())
    _compare(eager, ours, ids, mask)
    kw = dict(attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert ours.generate(ids, **kw).shape == (2, 16)


def test_mamba2_on_cuda():
    cfg = transformers.Mamba2Config(vocab_size=96, hidden_size=64, num_hidden_layers=2,
                                    state_size=16, expand=2, head_dim=16, num_heads=8, n_groups=2,
                                    chunk_size=16, conv_kernel=4)
    eager, ours = twins(cfg, dtype=torch.bfloat16, attn_implementation="eager")
    eager, ours = eager.cuda(), ours.cuda()
    ids, mask = (t.cuda() for t in padded_batch(lens=(12, 12)))
    with torch.no_grad():
        want = eager(ids, attention_mask=mask).logits.float()
    funcs = {id(f): f for m in ours.modules() for f in getattr(m, "_kernel_funcs", {}).values()}
    fk_hf.kernelize(ours)
    try:
        with torch.no_grad():
            got = ours(ids, attention_mask=mask).logits.float()
    finally:
        for f in funcs.values():
            f.__dict__.pop("forward", None)
    torch.testing.assert_close(got, want, **BF16_LOGITS)
