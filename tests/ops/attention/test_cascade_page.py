"""append_paged_kv_cache / get_batch_indices_positions, and cascade == flat attention."""
import pytest
import torch

import flashkit.ops.attention as A
from flashkit.ops.attention.reference import naive_gather_paged_kv
from tests.helpers import device, kernel_backends

from .attn_common import check_attn, make_paged, ref_paged

BACKENDS = [b for b in kernel_backends() if b != "cuda"]


def test_get_batch_indices_positions():
    append_indptr = torch.tensor([0, 2, 2, 5], dtype=torch.int32)
    seq_lens = torch.tensor([7, 4, 3], dtype=torch.int32)
    b, p = A.get_batch_indices_positions(append_indptr, seq_lens, 5)
    assert b.tolist() == [0, 0, 2, 2, 2] and p.tolist() == [5, 6, 0, 1, 2]
    assert b.dtype == p.dtype == torch.int32
    with pytest.raises(ValueError, match="seq_lens must have shape"):
        A.get_batch_indices_positions(append_indptr, seq_lens[:2], 5)
    with pytest.raises(ValueError, match="nnz must be"):
        A.get_batch_indices_positions(append_indptr, seq_lens, -1)


@pytest.mark.parametrize("as_tuple", [False, True], ids=["tensor", "tuple"])
@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_append_then_gather(layout, as_tuple):
    """Appending tokens, then gathering the pages, gives the old KV followed by the new."""
    old_lens, new_lens, ps = (5, 0, 16), (3, 20, 1), 4
    total = [a + b for a, b in zip(old_lens, new_lens)]
    cache, indptr, indices, last = make_paged(total, ps, 2, 8, torch.float16, layout, 1, as_tuple)
    before = naive_gather_paged_kv(cache, indptr.cpu(), indices.cpu(), last.cpu(), layout)
    g = torch.Generator().manual_seed(0)
    nnz = sum(new_lens)
    key, val = (torch.randn(nnz, 2, 8, generator=g).half().to(device()) for _ in range(2))
    append_indptr = torch.tensor([0, *new_lens]).cumsum(0).to(torch.int32).to(device())
    b, p = A.get_batch_indices_positions(append_indptr, torch.tensor(total, dtype=torch.int32,
                                                                     device=device()), nnz)
    A.append_paged_kv_cache(key, val, b, p, cache, indices, indptr, last, layout)
    after = naive_gather_paged_kv(cache, indptr.cpu(), indices.cpu(), last.cpu(), layout)
    start = 0
    for i, (o, n) in enumerate(zip(old_lens, new_lens)):
        for kind in (0, 1):
            assert torch.equal(after[i][kind][:o], before[i][kind][:o])
            assert torch.equal(after[i][kind][o:], (key, val)[kind][start:start + n])
        start += n


def test_append_bad_inputs():
    cache, indptr, indices, last = make_paged((4,), 4, 2, 8, torch.float16, "NHD", 1)
    k = torch.randn(1, 2, 8).half()
    one = torch.zeros(1, dtype=torch.int32)
    with pytest.raises(ValueError, match="append_key must have shape"):
        A.append_paged_kv_cache(k[:, :1], k, one, one, cache, indices, indptr, last)
    with pytest.raises(ValueError, match="append_value must be torch.float16"):
        A.append_paged_kv_cache(k, k.bfloat16(), one, one, cache, indices, indptr, last)
    with pytest.raises(ValueError, match="positions must be int32"):
        A.append_paged_kv_cache(k, k, one, one.long(), cache, indices, indptr, last)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_cascade_equals_flat(causal, backend):
    """Two levels (a 32-token prefix shared by 3 requests + unique suffixes) == flat prefill
    over each request's prefix pages followed by its suffix pages."""
    dtype, ps, hq, hk, d = torch.float16, 16, 4, 2, 64
    suffix, qo_lens = (5, 20, 17), (2, 3, 1)
    g = torch.Generator().manual_seed(3)
    n_pages = 2 + sum(-(-s // ps) for s in suffix) + 1
    cache = torch.randn(n_pages, 2, ps, hk, d, generator=g).to(dtype).to(device())
    perm = torch.randperm(n_pages, generator=g).to(torch.int32)
    prefix_pages, rest = perm[:2], perm[2:]
    suffix_pages, at = [], 0
    for s in suffix:
        suffix_pages.append(rest[at:at + -(-s // ps)])
        at += -(-s // ps)
    i32 = lambda x: torch.tensor(x, dtype=torch.int32).to(device())
    nnz = sum(qo_lens)
    qo = torch.tensor([0, *qo_lens]).cumsum(0).to(torch.int32).to(device())
    levels = dict(
        qo_indptr_arr=[i32([0, nnz]), qo],
        paged_kv_indptr_arr=[i32([0, 2]), torch.tensor([0] + [len(p) for p in suffix_pages]).cumsum(0).to(torch.int32).to(device())],
        paged_kv_indices_arr=[prefix_pages.to(device()), torch.cat(suffix_pages).to(device())],
        paged_kv_last_page_len_arr=[i32([ps]), i32([s - (-(-s // ps) - 1) * ps for s in suffix])])
    q = torch.randn(nnz, hq, d, generator=g).to(dtype).to(device())
    w = A.MultiLevelCascadeAttentionWrapper(2, torch.empty(1 << 16, dtype=torch.uint8,
                                                           device=device()), backend=backend)
    w.plan(*levels.values(), hq, hk, d, ps, causal, logits_soft_cap=7.0, q_data_type=dtype)
    o, lse = w.run(q, cache, return_lse=True)
    flat_indptr = torch.tensor([0] + [2 + len(p) for p in suffix_pages]).cumsum(0).to(torch.int32)
    flat_indices = torch.cat([torch.cat([prefix_pages, p]) for p in suffix_pages])
    ref_o, ref_lse = ref_paged(q, qo, cache, flat_indptr, flat_indices,
                               levels["paged_kv_last_page_len_arr"][1].cpu(), "NHD",
                               causal=causal, logits_soft_cap=7.0)
    check_attn(o, lse, ref_o, ref_lse, dtype)
    flat = A.BatchPrefillWithPagedKVCacheWrapper(torch.empty(16, dtype=torch.uint8,
                                                             device=device()), backend=backend)
    flat.plan(qo, flat_indptr.to(device()), flat_indices.to(device()),
              levels["paged_kv_last_page_len_arr"][1], hq, hk, d, ps, causal=causal,
              logits_soft_cap=7.0, q_data_type=dtype)
    torch.testing.assert_close(o, flat.run(q, cache), atol=4e-3, rtol=4e-3)


def test_cascade_bad_inputs():
    w = A.MultiLevelCascadeAttentionWrapper(2, torch.empty(16, dtype=torch.uint8))
    with pytest.raises(RuntimeError, match="before plan"):
        w.run(torch.randn(1, 4, 64).half(), torch.randn(1, 2, 16, 2, 64).half())
    one = torch.tensor([0, 1], dtype=torch.int32)
    with pytest.raises(ValueError, match="qo_indptr_arr must be a list of num_levels = 2"):
        w.plan([one], [one, one], [one, one], [one, one], 4, 2, 64, 16)
    with pytest.raises(ValueError, match="every level must cover the same queries"):
        w.plan([one, torch.tensor([0, 2], dtype=torch.int32)], [one, one],
               [torch.zeros(1, dtype=torch.int32)] * 2, [torch.ones(1, dtype=torch.int32)] * 2,
               4, 2, 64, 16)
    with pytest.raises(ValueError, match="num_levels must be"):
        A.MultiLevelCascadeAttentionWrapper(0, torch.empty(16, dtype=torch.uint8))
