"""The benchmarks' baselines compute what flashkit computes: checked on the CPU against
flashkit's references, so that a GPU run does not discover a broken baseline.

flex_attention runs its eager path here (the compiled kernel reads the same block mask; its
block table is checked separately against the page table); fla's chunk kernel needs a GPU, so
the SSD-as-simple-GLA mapping is checked through fla's own naive recurrence.
"""
import pytest
import torch

from flashkit.bench.attention_baselines import (ContiguousDecode, FlexPagedDecode, kv_lens_of,
                                                sdpa_prefill)
from flashkit.bench.cases.moe import grouped_mm_moe, torch_loop_moe
from flashkit.bench.cases.prefill import blocked_reference
from flashkit.ops.attention.reference import (naive_batch_attention, naive_gather_paged_kv,
                                              naive_single_attention)

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
HQ, HK, D, PAGE = 8, 2, 32, 16


def _paged(lens, seed, spare_pages=3):
    """A shuffled page pool with spare (unowned) pages, float32 [pages, 2, PAGE, HK, D]."""
    g = torch.Generator().manual_seed(seed)
    pages = [-(-n // PAGE) for n in lens]
    total = sum(pages) + spare_pages
    indptr = torch.tensor([0] + pages).cumsum(0).to(torch.int32)
    indices = torch.randperm(total, generator=g)[:sum(pages)].to(torch.int32)
    last = torch.tensor([n - (p - 1) * PAGE if p else 0 for n, p in zip(lens, pages)],
                        dtype=torch.int32)
    cache = torch.randn(total, 2, PAGE, HK, D, generator=g)
    q = torch.randn(len(lens), HQ, D, generator=g)
    return q, cache, indptr, indices, last


def _reference(q, cache, indptr, indices, last):
    kv = naive_gather_paged_kv(cache, indptr, indices, last)
    return naive_batch_attention(q, torch.arange(len(kv) + 1, dtype=torch.int32), kv)[0]


# A full last page, 1 token, a partial last page, a long request; a request with no pages is
# not a decode request (FlashInfer gives it no output row either), so every one has >= 1 token.
LENS = [[32, 1, 70, 300], [16] * 3, [5]]


@pytest.mark.parametrize("lens", LENS, ids=["mixed", "uniform", "one"])
def test_flex_paged_decode_matches_reference(lens):
    q, cache, indptr, indices, last = _paged(lens, seed=len(lens))
    flex = FlexPagedDecode(indptr, indices, last, cache.shape[0], PAGE, compiled=False)
    out = flex(q, cache)
    torch.testing.assert_close(out, _reference(q, cache, indptr, indices, last), atol=1e-5,
                               rtol=1e-5)
    # The block table the compiled kernel walks: row b lists exactly b's pages.
    dense = flex.block_mask.to_dense()[:, 0, 0]  # [B, pages]
    owner = torch.full((cache.shape[0],), -1)
    for b in range(len(lens)):
        owner[indices[indptr[b]:indptr[b + 1]].long()] = b
    expected = owner[None, :] == torch.arange(len(lens))[:, None]
    assert torch.equal(dense.bool(), expected)


def test_flex_paged_decode_bf16_and_bad_cache():
    q, cache, indptr, indices, last = _paged([40, 100], seed=7)
    flex = FlexPagedDecode(indptr, indices, last, cache.shape[0], PAGE, compiled=False)
    out = flex(q.bfloat16(), cache.bfloat16())
    assert out.dtype == torch.bfloat16
    ref = _reference(q.bfloat16().float(), cache.bfloat16().float(), indptr, indices, last)
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
    with pytest.raises(ValueError, match="cache must be"):
        flex(q, cache[:-1])


@pytest.mark.parametrize("lens", LENS[:2], ids=["mixed", "uniform"])
def test_contiguous_decode_matches_reference(lens):
    q, cache, indptr, indices, last = _paged(lens, seed=11)
    dec = ContiguousDecode(cache, indptr, indices, last, PAGE)
    assert (dec.mask is None) == (len(set(lens)) == 1)
    torch.testing.assert_close(dec(q, cache), _reference(q, cache, indptr, indices, last),
                               atol=1e-5, rtol=1e-5)


def test_kv_lens_of():
    indptr = torch.tensor([0, 2, 2, 5], dtype=torch.int32)
    last = torch.tensor([3, 0, 16], dtype=torch.int32)
    assert kv_lens_of(indptr, last, 16).tolist() == [19, 0, 48]


@pytest.mark.parametrize("expand", [False, True])
def test_sdpa_prefill_matches_reference(expand):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(50, HQ, D, generator=g)
    k, v = torch.randn(50, HK, D, generator=g), torch.randn(50, HK, D, generator=g)
    ref = naive_single_attention(q, k, v, causal=True)[0]
    torch.testing.assert_close(sdpa_prefill(None, q, k, v, expand_kv=expand), ref, atol=1e-5,
                               rtol=1e-5)


def test_blocked_prefill_reference():
    """Query blocks of 64 rows (the last one partial) give the one-shot causal result."""
    g = torch.Generator().manual_seed(5)
    q = torch.randn(150, HQ, D, generator=g)
    k, v = torch.randn(150, HK, D, generator=g), torch.randn(150, HK, D, generator=g)
    torch.testing.assert_close(blocked_reference(q, k, v, rows=64),
                               naive_single_attention(q, k, v, causal=True)[0], atol=1e-5,
                               rtol=1e-5)


def test_moe_baselines_match_reference():
    from flashkit.ops.moe import naive_fused_moe

    g = torch.Generator().manual_seed(9)
    tokens, experts, topk, hidden, ffn = 40, 6, 2, 32, 48
    x = torch.randn(tokens, hidden, generator=g)
    w1 = torch.randn(experts, 2 * ffn, hidden, generator=g) / hidden ** 0.5
    w2 = torch.randn(experts, hidden, ffn, generator=g) / ffn ** 0.5
    logits = torch.randn(tokens, experts, generator=g)
    logits[:, 4] = float("-inf")  # expert 4 gets no row: grouped_mm must take an empty group
    w, ids = logits.softmax(-1).topk(topk, -1)
    ids = ids.to(torch.int32)
    ref = naive_fused_moe(x, w1, w2, w, ids)
    torch.testing.assert_close(grouped_mm_moe(x, w1, w2, w, ids), ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch_loop_moe(x, w1, w2, w, ids), ref, atol=1e-4, rtol=1e-4)


def test_fla_ssd_mapping_matches_the_ssd_reference():
    naive = pytest.importorskip("fla.ops.simple_gla.naive")
    from flashkit.bench.cases.ssm import fla_ssd
    from flashkit.ops.ssm import naive_ssd_scan

    g = torch.Generator().manual_seed(13)
    batch, seqlen, heads, p, n = 2, 24, 4, 8, 16
    for groups in (1, 2):
        x = torch.randn(batch, seqlen, heads, p, generator=g)
        z = torch.randn(batch, seqlen, heads, p, generator=g)
        dt = torch.randn(batch, seqlen, heads, generator=g) * 0.5 - 1
        A = -torch.rand(heads, generator=g) - 0.5
        B = torch.randn(batch, seqlen, groups, n, generator=g)
        C = torch.randn(batch, seqlen, groups, n, generator=g)
        Dv = torch.randn(heads, generator=g)
        bias = torch.randn(heads, generator=g) * 0.3
        y, final = fla_ssd(naive.naive_recurrent_simple_gla, x, dt, A, B, C, Dv, z, bias)
        y_ref, final_ref, _ = naive_ssd_scan(x, dt, A, B, C, Dv, z, bias, True)
        torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(final, final_ref, atol=1e-4, rtol=1e-4)
