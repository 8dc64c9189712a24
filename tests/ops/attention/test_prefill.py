"""Prefill attention (single, paged batch, ragged batch) against the float32 reference."""
import pytest
import torch

import flashkit.ops.attention as A
from tests.helpers import device, kernel_backends, poison

from .attn_common import check_attn, dt_id, make_paged, ref_paged, ref_single

BACKENDS = [b for b in kernel_backends() if b != "cuda"]
DTYPES = (torch.float16, torch.bfloat16)

# (qo_len, kv_len, Hq, Hk, head_dim, causal, window_left, soft_cap): qo_len > kv_len (leading
# queries see nothing under causal), qo_len 1, an empty KV, GQA 1/3/4, a tile boundary (qo 17).
SINGLE = [
    (17, 40, 4, 4, 64, True, -1, None),
    (5, 33, 6, 2, 128, False, 7, 4.0),
    (9, 9, 4, 1, 64, True, 3, None),
    (12, 5, 2, 2, 64, True, -1, None),
    (1, 70, 8, 2, 256, True, -1, 2.0),
    (3, 0, 2, 1, 64, False, -1, None),
]


def _single_id(c):
    qo, kv, hq, hk, d, causal, win, cap = c
    s = f"qo{qo}_kv{kv}_g{hq // hk}_hd{d}" + ("_causal" if causal else "")
    return s + (f"_win{win}" if win >= 0 else "") + (f"_cap{cap:g}" if cap else "")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dt_id)
@pytest.mark.parametrize("case", SINGLE, ids=_single_id)
def test_single_prefill(case, dtype, layout, backend):
    qo, kv, hq, hk, d, causal, win, cap = case
    g = torch.Generator().manual_seed(qo * 100 + kv)
    q = torch.randn(qo, hq, d, generator=g).to(dtype).to(device())
    k, v = (torch.randn(kv, hk, d, generator=g).to(dtype).to(device()) for _ in range(2))
    kl, vl = (k.transpose(0, 1).contiguous(), v.transpose(0, 1).contiguous()) if layout == "HND" else (k, v)
    o, lse = A.single_prefill_with_kv_cache(q, kl, vl, causal=causal, kv_layout=layout,
                                            window_left=win, logits_soft_cap=cap,
                                            return_lse=True, backend=backend)
    ref_o, ref_lse = ref_single(q, k, v, causal=causal, window_left=win, logits_soft_cap=cap)
    check_attn(o, lse, ref_o, ref_lse, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_prefill_custom_mask(backend):
    """custom_mask replaces causal (FlashInfer's rule): a random mask with one all-False row."""
    g = torch.Generator().manual_seed(2)
    q = torch.randn(7, 4, 64, generator=g).half()
    k, v = (torch.randn(21, 2, 64, generator=g).half() for _ in range(2))
    mask = torch.rand(7, 21, generator=g) < 0.5
    mask[3] = False
    q, k, v, mask = (t.to(device()) for t in (q, k, v, mask))
    o, lse = A.single_prefill_with_kv_cache(q, k, v, causal=True, custom_mask=mask,
                                            return_lse=True, backend=backend)
    ref_o, ref_lse = ref_single(q, k, v, custom_mask=mask)
    check_attn(o, lse, ref_o, ref_lse, torch.float16)
    assert torch.isneginf(lse[3]).all() and (o[3] == 0).all()


def _paged_batch(dtype, layout, seed, kv_lens=(0, 30, 50, 7), qo_lens=(2, 0, 19, 7), hq=4,
                 hk=2, d=64, page_size=16):
    cache, indptr, indices, last = make_paged(kv_lens, page_size, hk, d, dtype, layout, seed)
    qo_indptr = torch.tensor([0, *qo_lens], dtype=torch.int32).cumsum(0).to(torch.int32)
    g = torch.Generator().manual_seed(seed + 7)
    q = torch.randn(int(qo_indptr[-1]), hq, d, generator=g).to(dtype).to(device())
    return q, qo_indptr.to(device()), cache, indptr, indices, last


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dt_id)
def test_batch_prefill_paged(dtype, layout, causal, backend):
    q, qo_indptr, cache, indptr, indices, last = _paged_batch(dtype, layout, seed=4)
    w = A.BatchPrefillWithPagedKVCacheWrapper(torch.empty(1 << 16, dtype=torch.uint8,
                                                          device=device()), layout, backend=backend)
    w.plan(qo_indptr, indptr, indices, last, 4, 2, 64, 16, causal=causal, window_left=20,
           logits_soft_cap=6.0, q_data_type=dtype)
    out = poison(torch.empty_like(q))
    o, lse = w.run(q, cache, out=out, return_lse=True)
    ref_o, ref_lse = ref_paged(q, qo_indptr, cache, indptr, indices, last, layout, causal=causal,
                               window_left=20, logits_soft_cap=6.0)
    check_attn(o, lse, ref_o, ref_lse, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_prefill_paged_custom_mask_and_page1(backend):
    dtype = torch.bfloat16
    kv_lens, qo_lens = (6, 11), (3, 4)
    q, qo_indptr, cache, indptr, indices, last = _paged_batch(dtype, "NHD", 8, kv_lens, qo_lens,
                                                              hq=8, hk=1, page_size=1)
    g = torch.Generator().manual_seed(1)
    masks = [torch.rand(a, b, generator=g) < 0.6 for a, b in zip(qo_lens, kv_lens)]
    flat = torch.cat([m.flatten() for m in masks]).to(device())
    w = A.BatchPrefillWithPagedKVCacheWrapper(torch.empty(1 << 16, dtype=torch.uint8,
                                                          device=device()), backend=backend)
    w.plan(qo_indptr, indptr, indices, last, 8, 1, 64, 1, custom_mask=flat, q_data_type=dtype)
    o, lse = w.run(q, cache, return_lse=True)
    ref_o, ref_lse = ref_paged(q, qo_indptr, cache, indptr, indices, last, "NHD",
                               custom_masks=masks)
    check_attn(o, lse, ref_o, ref_lse, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_batch_prefill_ragged_equals_loop_of_single(layout, backend):
    dtype = torch.float16
    qo_lens, kv_lens = (4, 0, 18, 1), (4, 3, 25, 0)
    g = torch.Generator().manual_seed(6)
    qo_indptr = torch.tensor([0, *qo_lens]).cumsum(0).to(torch.int32)
    kv_indptr = torch.tensor([0, *kv_lens]).cumsum(0).to(torch.int32)
    q = torch.randn(int(qo_indptr[-1]), 6, 64, generator=g).to(dtype).to(device())
    k, v = (torch.randn(int(kv_indptr[-1]), 3, 64, generator=g).to(dtype).to(device())
            for _ in range(2))
    kl, vl = (k.transpose(0, 1).contiguous(), v.transpose(0, 1).contiguous()) if layout == "HND" else (k, v)
    w = A.BatchPrefillWithRaggedKVCacheWrapper(torch.empty(1 << 16, dtype=torch.uint8,
                                                           device=device()), layout, backend=backend)
    w.plan(qo_indptr, kv_indptr, 6, 3, 64, causal=True, q_data_type=dtype)
    o, lse = w.run(q, kl, vl, return_lse=True)
    for i in range(len(qo_lens)):
        qs, ks = slice(qo_indptr[i], qo_indptr[i + 1]), slice(kv_indptr[i], kv_indptr[i + 1])
        o_i, lse_i = A.single_prefill_with_kv_cache(q[qs], k[ks], v[ks], causal=True,
                                                    return_lse=True, backend=backend)
        torch.testing.assert_close(o[qs], o_i, atol=0, rtol=0)
        torch.testing.assert_close(lse[qs], lse_i, atol=0, rtol=0)
    ref_o, ref_lse = ref_paged(q, qo_indptr, (k[:, None], v[:, None]),
                               kv_indptr, torch.arange(int(kv_indptr[-1]), dtype=torch.int32),
                               torch.ones(len(kv_lens), dtype=torch.int32), "NHD", causal=True)
    check_attn(o, lse, ref_o, ref_lse, dtype)


def test_torch_compile_fullgraph():
    dtype = torch.float16
    q, qo_indptr, cache, indptr, indices, last = _paged_batch(dtype, "NHD", seed=3)
    w = A.BatchPrefillWithPagedKVCacheWrapper(torch.empty(1 << 16, dtype=torch.uint8))
    w.plan(qo_indptr, indptr, indices, last, 4, 2, 64, 16, causal=True, q_data_type=dtype)

    def f(q, cache):
        return w.run(q, cache) + 1

    torch.testing.assert_close(torch.compile(f, fullgraph=True, backend="aot_eager")(q, cache),
                               f(q, cache))


def test_run_before_plan():
    for cls in (A.BatchPrefillWithPagedKVCacheWrapper, A.BatchPrefillWithRaggedKVCacheWrapper):
        w = cls(torch.empty(16, dtype=torch.uint8))
        with pytest.raises(RuntimeError, match="before plan"):
            w.run(torch.randn(1, 4, 64), torch.randn(1, 2, 16, 4, 64), *([None] if "Ragged" in
                                                                        cls.__name__ else []))


def test_bad_inputs():
    q, qo_indptr, cache, indptr, indices, last = _paged_batch(torch.float16, "NHD", seed=3)
    w = A.BatchPrefillWithPagedKVCacheWrapper(torch.empty(16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="qo_indptr must be non-decreasing"):
        w.plan(torch.tensor([0, 3, 1, 4, 5], dtype=torch.int32), indptr, indices, last, 4, 2, 64, 16)
    with pytest.raises(ValueError, match="qo_indptr must have batch \\+ 1 = 5"):
        w.plan(qo_indptr[:3], indptr, indices, last, 4, 2, 64, 16)
    with pytest.raises(ValueError, match="paged_kv_last_page_len\\[0\\] must be in"):
        w.plan(qo_indptr, indptr, indices, last * 0 + 20, 4, 2, 64, 16)
    with pytest.raises(ValueError, match="custom_mask must hold"):
        w.plan(qo_indptr, indptr, indices, last, 4, 2, 64, 16,
               custom_mask=torch.ones(3, dtype=torch.bool))
    w.plan(qo_indptr, indptr, indices, last, 4, 2, 64, 16)
    with pytest.raises(ValueError, match="q must have shape"):
        w.run(q[1:], cache)
    r = A.BatchPrefillWithRaggedKVCacheWrapper(torch.empty(16, dtype=torch.uint8))
    r.plan(torch.tensor([0, 2], dtype=torch.int32), torch.tensor([0, 5], dtype=torch.int32), 4, 2, 64)
    qq, kk = torch.randn(2, 4, 64).half(), torch.randn(5, 2, 64).half()
    with pytest.raises(ValueError, match="v must have shape"):
        r.run(qq, kk, kk[:4])
    with pytest.raises(ValueError, match="k must be float16"):
        r.run(qq, kk.float(), kk)
    with pytest.raises(ValueError, match="custom_mask must have shape"):
        A.single_prefill_with_kv_cache(qq, kk, kk, custom_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="q must be 3-D"):
        A.single_prefill_with_kv_cache(qq[0], kk, kk)
