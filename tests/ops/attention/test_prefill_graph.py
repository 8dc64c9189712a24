"""Batch prefill wrappers with use_cuda_graph=True: fixed buffers and a fixed launch grid,
re-planned in place, against the float32 reference; rows past the plan give o = 0, lse = -inf."""
import pytest
import torch

import flashkit.ops.attention as A
from tests.helpers import device, poison

from .attn_common import GridRecorder, capture_graph, check_attn, page_table, ref_paged

GRAPH_BACKENDS = ["torch", "triton"]
I32 = torch.int32


def _bufs(max_batch, num_pages, dev=None, mask_elems=0):
    """FlashInfer's graph buffers (and the custom-mask pair when ``mask_elems``)."""
    def z(n, dtype=I32):
        return torch.zeros(n, dtype=dtype, device=dev or device())
    bufs = dict(qo_indptr_buf=z(max_batch + 1), paged_kv_indptr_buf=z(max_batch + 1),
                paged_kv_indices_buf=z(num_pages), paged_kv_last_page_len_buf=z(max_batch))
    if mask_elems:
        bufs.update(custom_mask_buf=z(mask_elems, torch.bool), mask_indptr_buf=z(max_batch + 1))
    return bufs


def _qo_indptr(qo_lens, dev=None):
    return torch.tensor([0, *qo_lens]).cumsum(0).to(I32).to(dev or device())


def _ptrs(w):
    plan = w._plan
    now = {k: t.data_ptr() for k, t in w._graph.tensors().items()}
    now.update({k: getattr(plan, k).data_ptr() for k in (
        "items", "qo_indptr", "kv_indptr", "kv_indices", "kv_lens", "merge_indptr", "num_items")
        if getattr(plan, k) is not None})
    return now


# (kv_lens, qo_lens) per re-plan; the first has the most query tokens (33: it fixes the
# capacity), then the full batch with an empty KV and an empty query, one request, two.
PLANS = [((40, 0, 25), (20, 4, 9)), ((0, 17, 33, 5), (5, 12, 0, 8)), ((50,), (30,)),
         ((9, 3), (1, 2))]


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
def test_paged_replans_in_place(backend, monkeypatch):
    """Every plan refills the same buffers, run() launches the same grid; q/out of max_tokens
    rows (the captured shape), of exactly nnz rows, and in between all give the reference."""
    dtype, ps, hq, hk, dim, max_batch, num_pages = torch.float16, 8, 8, 2, 64, 4, 24
    max_tokens = sum(PLANS[0][1])
    g = torch.Generator().manual_seed(0)
    cache = torch.randn(num_pages, 2, ps, hk, dim, generator=g).to(dtype).to(device())
    q = torch.randn(max_tokens, hq, dim, generator=g).to(dtype).to(device())
    w = A.BatchPrefillWithPagedKVCacheWrapper(torch.empty(16, dtype=torch.uint8, device=device()),
                                              "NHD", True, **_bufs(max_batch, num_pages),
                                              backend=backend)
    assert w.is_cuda_graph_enabled
    out = torch.empty(max_tokens, hq, dim, dtype=dtype, device=device())
    lse = torch.empty(max_tokens, hq, dtype=torch.float32, device=device())
    rec = GridRecorder(monkeypatch)
    ptrs = grids = None
    for i, (kv_lens, qo_lens) in enumerate(PLANS):
        indptr, indices, last = page_table(kv_lens, ps, num_pages, seed=i)
        qo = _qo_indptr(qo_lens)
        w.plan(qo, indptr, indices, last, hq, hk, dim, ps, causal=True, q_data_type=dtype)
        plan, nnz = w._plan, sum(qo_lens)
        assert plan.n_programs == w._graph.max_items == -(-max_tokens // 16) + max_batch
        rec.grids.clear()
        w.run(q, cache, out=poison(out), lse=poison(lse))
        if ptrs is None:
            ptrs, grids = _ptrs(w), list(rec.grids)
        assert _ptrs(w) == ptrs, "plan() reallocated a buffer"
        assert rec.grids == grids, "the launch grid changed between plans"
        ref_o, ref_lse = ref_paged(q[:nnz], qo, cache, indptr, indices, last, "NHD", causal=True)
        check_attn(out[:nnz], lse[:nnz], ref_o, ref_lse, dtype)
        assert torch.equal(out[nnz:].cpu(), torch.zeros_like(out[nnz:].cpu()))
        assert torch.isneginf(lse[nnz:]).all()
        check_attn(w.run(q[:nnz], cache), None, ref_o, None, dtype)  # no padding rows
        rows = (nnz + max_tokens) // 2  # the padding stops at q's last row: out[rows:] untouched
        w.run(q[:rows], cache, out=poison(out)[:rows], lse=poison(lse)[:rows])
        check_attn(out[:nnz], lse[:nnz], ref_o, ref_lse, dtype)
        assert (out[nnz:rows] == 0).all() and out[rows:].isnan().all()
    if backend == "triton":
        assert grids == [("_attention_fwd_kernel", (-(-max_tokens // 16) + max_batch, hk))]


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
def test_paged_custom_mask_replans(backend):
    dtype, ps, hq, hk, dim, num_pages = torch.bfloat16, 4, 4, 4, 64, 16
    g = torch.Generator().manual_seed(3)
    cache = torch.randn(num_pages, 2, ps, hk, dim, generator=g).to(dtype).to(device())
    q = torch.randn(12, hq, dim, generator=g).to(dtype).to(device())
    w = A.BatchPrefillWithPagedKVCacheWrapper(
        torch.empty(16, dtype=torch.uint8, device=device()), "NHD", True,
        **_bufs(2, num_pages, mask_elems=200), backend=backend)
    ptrs = None
    for i, (kv_lens, qo_lens) in enumerate([((11, 6), (7, 5)), ((0, 13), (2, 3)), ((5,), (4,))]):
        indptr, indices, last = page_table(kv_lens, ps, num_pages, seed=i)
        masks = [torch.rand(a, b, generator=g) < 0.6 for a, b in zip(qo_lens, kv_lens)]
        flat = torch.cat([m.flatten() for m in masks]).to(device())
        qo = _qo_indptr(qo_lens)
        w.plan(qo, indptr, indices, last, hq, hk, dim, ps, custom_mask=flat, q_data_type=dtype)
        ptrs = ptrs or _ptrs(w)
        assert _ptrs(w) == ptrs
        o, lse = w.run(q, cache, return_lse=True)
        nnz = sum(qo_lens)
        ref_o, ref_lse = ref_paged(q[:nnz], qo, cache, indptr, indices, last, "NHD",
                                   custom_masks=masks)
        check_attn(o[:nnz], lse[:nnz], ref_o, ref_lse, dtype)
        assert (o[nnz:] == 0).all() and torch.isneginf(lse[nnz:]).all()


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
def test_ragged_replans_in_place(backend):
    """Ragged K/V: k/v may hold more tokens than the plan's (the captured, largest shape)."""
    dtype, hq, hk, dim, max_kv = torch.float16, 4, 2, 64, 60
    g = torch.Generator().manual_seed(5)
    q = torch.randn(24, hq, dim, generator=g).to(dtype).to(device())
    k, v = (torch.randn(max_kv, hk, dim, generator=g).to(dtype).to(device()) for _ in range(2))
    w = A.BatchPrefillWithRaggedKVCacheWrapper(
        torch.empty(16, dtype=torch.uint8, device=device()), "NHD", True,
        torch.zeros(4, dtype=I32, device=device()), torch.zeros(4, dtype=I32, device=device()),
        backend=backend)
    ptrs = None
    for qo_lens, kv_lens in [((10, 14, 0), (30, 20, 10)), ((3,), (0,)), ((5, 1), (40, 2))]:
        qo, kv = _qo_indptr(qo_lens), _qo_indptr(kv_lens)
        w.plan(qo, kv, hq, hk, dim, causal=True, q_data_type=dtype)
        ptrs = ptrs or _ptrs(w)
        assert _ptrs(w) == ptrs
        o, lse = w.run(q, k, v, return_lse=True)
        nnz = sum(qo_lens)
        ref_o, ref_lse = ref_paged(q[:nnz], qo, (k[:, None], v[:, None]), kv,
                                   torch.arange(max_kv, dtype=I32),
                                   torch.ones(len(kv_lens), dtype=I32), "NHD", causal=True)
        check_attn(o[:nnz], lse[:nnz], ref_o, ref_lse, dtype)
        assert (o[nnz:] == 0).all() and torch.isneginf(lse[nnz:]).all()


def _graph_wrapper(max_batch=2, num_pages=4, **over):
    bufs = _bufs(max_batch, num_pages, "cpu")
    bufs.update(over)
    return A.BatchPrefillWithPagedKVCacheWrapper(torch.empty(16, dtype=torch.uint8), "NHD", True,
                                                 **bufs, backend="torch")


def test_capacity_errors():
    w = _graph_wrapper()
    indptr, indices, last = page_table((20, 10, 3), 16, 8, seed=1)
    with pytest.raises(ValueError, match="batch size 3 exceeds max_batch = 2 \\(the length of "
                                         "paged_kv_last_page_len_buf\\)"):
        w.plan(_qo_indptr((1, 1, 1), "cpu"), indptr.cpu(), indices.cpu(), last.cpu(), 4, 2, 64, 16)
    indptr, indices, last = (t.cpu() for t in page_table((20, 60), 16, 8, seed=1))
    with pytest.raises(ValueError, match="6 pages but paged_kv_indices_buf holds 4"):
        w.plan(_qo_indptr((2, 2), "cpu"), indptr, indices, last, 4, 2, 64, 16)
    assert w._graph.items is None  # a refused first plan fixes no capacity
    indptr, indices, last = (t.cpu() for t in page_table((20, 7), 16, 8, seed=1))
    w.plan(_qo_indptr((6, 4), "cpu"), indptr, indices, last, 4, 2, 64, 16)  # capacity: 10 tokens
    with pytest.raises(ValueError, match="11 query tokens exceed the capacity of 10"):
        w.plan(_qo_indptr((6, 5), "cpu"), indptr, indices, last, 4, 2, 64, 16)
    with pytest.raises(ValueError, match="num_qo_heads // num_kv_heads must stay 2"):
        w.plan(_qo_indptr((6, 4), "cpu"), indptr, indices, last, 4, 1, 64, 16)
    with pytest.raises(ValueError, match="needs custom_mask_buf and mask_indptr_buf"):
        w.plan(_qo_indptr((1, 1), "cpu"), indptr, indices, last, 4, 2, 64, 16,
               custom_mask=torch.ones(27, dtype=torch.bool))
    w.plan(_qo_indptr((3, 0), "cpu"), indptr, indices, last, 4, 2, 64, 16)
    cache = torch.randn(8, 2, 16, 2, 64).half()
    for rows in (2, 11):  # fewer rows than planned, more than the capacity
        with pytest.raises(ValueError, match=f"q must have between 3 .* and 10 .* got {rows}"):
            w.run(torch.randn(rows, 4, 64).half(), cache)
    masked = _graph_wrapper(**_bufs(2, 4, "cpu", mask_elems=20))
    with pytest.raises(ValueError, match="custom_mask has 27 elements but custom_mask_buf holds "
                                         "20"):
        masked.plan(_qo_indptr((1, 1), "cpu"), indptr, indices, last, 4, 2, 64, 16,
                    custom_mask=torch.ones(27, dtype=torch.bool))
    r = A.BatchPrefillWithRaggedKVCacheWrapper(torch.empty(16, dtype=torch.uint8), "NHD", True,
                                               torch.zeros(2, dtype=I32), torch.zeros(2, dtype=I32))
    with pytest.raises(ValueError, match="batch size 2 exceeds max_batch = 1 \\(the length of "
                                         "qo_indptr_buf minus 1\\)"):
        r.plan(_qo_indptr((1, 1), "cpu"), _qo_indptr((1, 1), "cpu"), 4, 2, 64)


def test_bad_buffers():
    with pytest.raises(ValueError, match="use_cuda_graph=True needs qo_indptr_buf"):
        _graph_wrapper(qo_indptr_buf=None)
    with pytest.raises(ValueError, match="paged_kv_indptr_buf must be int32"):
        _graph_wrapper(paged_kv_indptr_buf=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="paged_kv_indices_buf must be contiguous"):
        _graph_wrapper(paged_kv_indices_buf=torch.zeros(8, dtype=I32)[::2])
    with pytest.raises(ValueError, match="paged_kv_last_page_len_buf must be 1-D"):
        _graph_wrapper(paged_kv_last_page_len_buf=torch.zeros(2, 1, dtype=I32))
    with pytest.raises(ValueError, match="qo_indptr_buf must have max_batch \\+ 1 = 3 entries "
                                         "\\(max_batch from paged_kv_last_page_len_buf\\)"):
        _graph_wrapper(qo_indptr_buf=torch.zeros(4, dtype=I32))
    with pytest.raises(ValueError, match="custom_mask_buf and mask_indptr_buf go together"):
        _graph_wrapper(custom_mask_buf=torch.zeros(8, dtype=torch.bool))
    with pytest.raises(ValueError, match="custom_mask_buf must be bool/uint8, got torch.float32"):
        _graph_wrapper(custom_mask_buf=torch.zeros(8), mask_indptr_buf=torch.zeros(3, dtype=I32))
    with pytest.raises(ValueError, match="mask_indptr_buf must have max_batch \\+ 1 = 3"):
        _graph_wrapper(custom_mask_buf=torch.zeros(8, dtype=torch.uint8),
                       mask_indptr_buf=torch.zeros(2, dtype=I32))
    with pytest.raises(ValueError, match="kv_indptr_buf must have max_batch \\+ 1 = 2 entries "
                                         "\\(max_batch from qo_indptr_buf\\)"):
        A.BatchPrefillWithRaggedKVCacheWrapper(torch.empty(16, dtype=torch.uint8), "NHD", True,
                                               torch.zeros(2, dtype=I32), torch.zeros(3, dtype=I32))
    with pytest.raises(ValueError, match="not supported for the cascade wrapper"):
        A.MultiLevelCascadeAttentionWrapper(2, torch.empty(16, dtype=torch.uint8), "NHD", True)
    # without use_cuda_graph the buffers are ignored (FlashInfer's behavior)
    assert not A.BatchPrefillWithPagedKVCacheWrapper(torch.empty(16, dtype=torch.uint8),
                                                     qo_indptr_buf=None).is_cuda_graph_enabled


@pytest.mark.gpu
def test_cuda_graph_capture_replay():
    """Capture run() once with q/out of max_tokens rows, re-plan other batches (causal), replay
    and compare with the reference each time."""
    dtype, ps, hq, hk, dim, max_batch, num_pages = torch.bfloat16, 16, 32, 8, 128, 4, 256
    dev = "cuda"
    plans = [((900, 40, 300, 0), (512, 40, 200, 8)), ((0, 1000), (64, 700)), ((77,), (77,)),
             ((3000, 5, 16, 1), (100, 5, 16, 1))]
    max_tokens = sum(plans[0][1])
    g = torch.Generator().manual_seed(0)
    cache = torch.randn(num_pages, 2, ps, hk, dim, generator=g).to(dtype).to(dev)
    q = torch.randn(max_tokens, hq, dim, generator=g).to(dtype).to(dev)
    w = A.BatchPrefillWithPagedKVCacheWrapper(torch.empty(1 << 20, dtype=torch.uint8, device=dev),
                                              "NHD", True, **_bufs(max_batch, num_pages, dev))
    out = torch.empty(max_tokens, hq, dim, dtype=dtype, device=dev)
    lse = torch.empty(max_tokens, hq, dtype=torch.float32, device=dev)
    for i, (kv_lens, qo_lens) in enumerate(plans):
        indptr, indices, last = (t.to(dev) for t in page_table(kv_lens, ps, num_pages, seed=i))
        qo = _qo_indptr(qo_lens, dev)
        w.plan(qo, indptr, indices, last, hq, hk, dim, ps, causal=True, q_data_type=dtype)
        if i == 0:
            graph = capture_graph(lambda: w.run(q, cache, out=out, lse=lse))
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        nnz = sum(qo_lens)
        ref_o, ref_lse = ref_paged(q[:nnz].cpu(), qo.cpu(), cache.cpu(), indptr, indices, last,
                                   "NHD", causal=True)
        check_attn(out[:nnz], lse[:nnz], ref_o, ref_lse, dtype)
        assert torch.equal(out[nnz:].cpu(), torch.zeros_like(out[nnz:].cpu()))
        assert torch.isneginf(lse[nnz:]).all()
