"""Custom variants (a Triton snippet rendered into the attention template) against their torch
references: the two worked examples of docs/attention.md."""
import pytest
import torch

import flashkit.ops.attention as A
from flashkit.ops.attention.attention_triton import attention_triton_spec
from tests.helpers import device, kernel_backends

from .attn_common import check_attn, make_paged, ref_paged, ref_single

BACKENDS = [b for b in kernel_backends() if b != "cuda"]

# Example 1 (docs/attention.md): ALiBi, a per-head linear bias on the key distance.
ALIBI = A.AttentionVariant(
    "alibi",
    triton="""
        slope = tl.load(slopes + qo_head)
        logits = logits + slope * (k_pos - q_pos).to(tl.float32)
    """,
    params=("slopes",),
    torch_fn=lambda logits, keep, q_pos, k_pos, qo_head, slopes:
        (logits + slopes[qo_head] * (k_pos - q_pos), keep))

# Example 2: a sigmoid-squashed logit with a learned temperature, attending to every other key.
SIGMOID = A.AttentionVariant(
    "sigmoid_stride2",
    triton="""
        logits = tl.load(temperature) * tl.sigmoid(logits)
        keep = keep & ((q_pos - k_pos) % 2 == 0)
    """,
    params=("temperature",),
    torch_fn=lambda logits, keep, q_pos, k_pos, qo_head, temperature:
        (temperature * torch.sigmoid(logits), keep & ((q_pos - k_pos) % 2 == 0)))


def _slopes(h):
    return torch.tensor([2.0 ** (-8.0 * (i + 1) / h) for i in range(h)]).to(device())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", [ALIBI, SIGMOID], ids=lambda v: v.name)
def test_single_prefill_variant(variant, backend):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(9, 4, 64, generator=g).half().to(device())
    k, v = (torch.randn(30, 2, 64, generator=g).half().to(device()) for _ in range(2))
    args = (_slopes(4),) if variant is ALIBI else (torch.tensor([6.0], device=device()),)
    o, lse = A.single_prefill_with_kv_cache(q, k, v, causal=True, return_lse=True,
                                            backend=backend, variant=variant, variant_args=args)
    ref_o, ref_lse = ref_single(q, k, v, causal=True, logits_fn=_fn(variant, args))
    check_attn(o, lse, ref_o, ref_lse, torch.float16)


def _fn(variant, args):
    def fn(logits, q_pos, k_pos, heads):
        keep = torch.ones(logits.shape, dtype=torch.bool, device=logits.device)
        return variant.torch_fn(logits, keep, q_pos, k_pos, heads, *args)
    return fn


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_decode_alibi(backend):
    dtype = torch.bfloat16
    lens = (0, 45, 130)
    cache, indptr, indices, last = make_paged(lens, 16, 2, 64, dtype, "HND", 5)
    q = torch.randn(3, 8, 64, generator=torch.Generator().manual_seed(2)).to(dtype).to(device())
    w = A.BatchDecodeWithPagedKVCacheWrapper(torch.empty(1 << 20, dtype=torch.uint8,
                                                         device=device()), "HND", backend=backend)
    w.plan(indptr, indices, last, 8, 2, 64, 16, q_data_type=dtype, variant=ALIBI,
           num_workers=4, min_chunk_tokens=32)
    slopes = _slopes(8)
    o, lse = w.run(q, cache, return_lse=True, variant_args=(slopes,))
    ref_o, ref_lse = ref_paged(q, torch.arange(4, dtype=torch.int32), cache, indptr, indices,
                               last, "HND", logits_fn=_fn(ALIBI, (slopes,)))
    check_attn(o, lse, ref_o, ref_lse, dtype)


def test_variant_specialization_and_uri():
    spec = attention_triton_spec(64, ALIBI)
    assert spec.name == "attention_triton_hd64_alibi"
    assert "slope * (k_pos - q_pos)" in spec.source
    assert spec.uri != attention_triton_spec(64).uri
    other = A.AttentionVariant("alibi", triton="logits = logits * 2.0")
    assert attention_triton_spec(64, other).uri != spec.uri  # same name, other text


@pytest.mark.parametrize("kw,match", [
    (dict(name="bad name"), "variant name must be an identifier"),
    (dict(name="x", triton="logits = ("), "not valid Python"),
    (dict(name="x", params=("logits",)), "variant params must be identifiers other than"),
    (dict(name="x", params=("a", "a")), "variant params must be distinct"),
], ids=["name", "syntax", "reserved", "duplicate"])
def test_bad_variants(kw, match):
    with pytest.raises(ValueError, match=match):
        A.AttentionVariant(**kw)
    w = A.BatchDecodeWithPagedKVCacheWrapper(torch.empty(16, dtype=torch.uint8))
    one = torch.tensor([0, 1], dtype=torch.int32)
    with pytest.raises(ValueError, match="variant must be an AttentionVariant"):
        w.plan(one, one[:1], one[1:], 4, 4, 64, 16, variant="alibi")

