"""BatchDecodeWithPagedKVCacheWrapper: use_cuda_graph=True (fixed buffers, fixed grid, re-plans
in place) and fp8 (e4m3) KV with k_scale/v_scale, against the float32 reference."""
import numpy as np
import pytest
import torch

import flashkit.ops.attention as A
from flashkit.ops.attention.items import split_kv_items
from tests.helpers import device, poison

from .attn_common import (ATTN_TOL, GridRecorder, capture_graph, check_attn, dt_id, page_table,
                          ref_paged)

FP8 = torch.float8_e4m3fn
GRAPH_BACKENDS = ["torch", "triton"]  # backend="cuda" refuses use_cuda_graph


# (kv_lens, num_workers) per re-plan: 2 requests, then more (4, with zero-length ones), then
# fewer (1); num_workers 8 > the first plan's 2 asks for more items than the fixed capacity
# (max_batch + 2 x 2 = 8), so that plan's chunks are lengthened to fit.
PLANS = [((300, 0), 2), ((0, 37, 290, 1), 2), ((129,), 2), ((200, 180, 0, 250), 8)]


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
def test_cuda_graph_replans_in_place(backend, monkeypatch):
    dtype, page_size, hq, hk, dim, max_batch, num_pages = torch.float16, 16, 4, 2, 64, 4, 80
    g = torch.Generator().manual_seed(0)
    cache = torch.randn(num_pages, 2, page_size, hk, dim, generator=g).to(dtype).to(device())
    q = torch.randn(max_batch, hq, dim, generator=g).to(dtype).to(device())
    ws = poison(torch.empty(1 << 18, dtype=torch.float32, device=device())).view(torch.uint8)
    bufs = dict(paged_kv_indptr_buffer=torch.zeros(max_batch + 1, dtype=torch.int32, device=device()),
                paged_kv_indices_buffer=torch.zeros(num_pages, dtype=torch.int32, device=device()),
                paged_kv_last_page_len_buffer=torch.zeros(max_batch, dtype=torch.int32,
                                                          device=device()))
    w = A.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD", use_cuda_graph=True, backend=backend,
                                             **bufs)
    assert w.is_cuda_graph_enabled
    out = torch.empty(max_batch, hq, dim, dtype=dtype, device=device())
    lse = torch.empty(max_batch, hq, dtype=torch.float32, device=device())
    rec = GridRecorder(monkeypatch)
    ptrs = grids = None
    for i, (lens, workers) in enumerate(PLANS):
        indptr, indices, last = page_table(lens, page_size, num_pages, seed=i)
        w.plan(indptr, indices, last, hq, hk, dim, page_size, q_data_type=dtype,
               num_workers=workers, min_chunk_tokens=16)
        plan = w._plan
        now = {k: t.data_ptr() for k, t in w._graph.tensors().items()}
        now.update({k: getattr(plan, k).data_ptr() for k in (
            "items", "qo_indptr", "kv_indptr", "kv_indices", "kv_lens", "merge_indptr",
            "num_items")})
        assert plan.n_programs == w._graph.max_items == max_batch + 2 * 2
        if i == len(PLANS) - 1:  # this plan really was capped (uncapped it splits further)
            assert split_kv_items(np.array(lens), workers, page_size, 16)[2] > plan.n_items
        assert 0 < plan.n_items <= plan.n_programs
        poison(out)
        poison(lse)
        rec.grids.clear()
        w.run(q, cache, out=out, lse=lse)  # q/out with max_batch rows: rows past batch are padding
        if ptrs is None:
            ptrs, grids = now, list(rec.grids)
        assert now == ptrs, "plan() reallocated a buffer"
        assert rec.grids == grids, "the launch grid changed between plans"
        batch = len(lens)
        qo = torch.arange(batch + 1, dtype=torch.int32)
        ref_o, ref_lse = ref_paged(q[:batch], qo, cache, indptr, indices, last, "NHD")
        check_attn(out[:batch], lse[:batch], ref_o, ref_lse, dtype)
        assert torch.equal(out[batch:].cpu(), torch.zeros_like(out[batch:].cpu()))
        assert torch.isneginf(lse[batch:]).all()
        # an exact-batch q (no padding rows) runs the same plan eagerly
        check_attn(w.run(q[:batch], cache), None, ref_o, None, dtype)
    if backend == "triton":
        assert [name for name, _ in grids] == ["_attention_fwd_kernel", "_merge_varlen_kernel"]
        assert grids[0][1] == (max_batch + 2 * 2, hk)


def test_split_kv_items_capped():
    """The capacity cap lengthens chunks until the plan fits; chunks still tile every request."""
    lens = np.array([1000, 0, 777, 5])
    free = split_kv_items(lens, 32, 16, 16)
    cols, merge_indptr, n = split_kv_items(lens, 32, 16, 16, max_items=6)
    assert free[2] > 6 >= n >= 3
    req, start, end = (np.asarray(cols[i]) for i in (0, 3, 4))
    for r, length in enumerate(lens):
        sel = np.sort(start[req == r])
        assert merge_indptr[r + 1] - merge_indptr[r] == sel.size
        covered = sorted(zip(start[req == r], end[req == r]))
        assert [s for s, _ in covered][:1] == ([0] if length else [])
        assert all(a[1] == b[0] for a, b in zip(covered, covered[1:]))
        assert (covered[-1][1] if covered else 0) == length
    assert sorted(np.asarray(cols[5]).tolist()) == list(range(n))  # output rows: a permutation


def _graph_wrapper(max_batch=2, max_pages=4, **over):
    bufs = dict(paged_kv_indptr_buffer=torch.zeros(max_batch + 1, dtype=torch.int32),
                paged_kv_indices_buffer=torch.zeros(max_pages, dtype=torch.int32),
                paged_kv_last_page_len_buffer=torch.zeros(max_batch, dtype=torch.int32))
    bufs.update(over)
    return A.BatchDecodeWithPagedKVCacheWrapper(torch.empty(1 << 20, dtype=torch.uint8), "NHD",
                                                True, backend="triton", **bufs)


def test_cuda_graph_capacity_and_buffer_errors():
    w = _graph_wrapper()
    indptr, indices, last = page_table((20, 40, 3), 16, 8, seed=1)
    with pytest.raises(ValueError, match="batch size 3 exceeds max_batch = 2"):
        w.plan(indptr.cpu(), indices.cpu(), last.cpu(), 4, 2, 64, 16)
    indptr, indices, last = page_table((20, 60), 16, 8, seed=1)  # 2 + 4 pages > 4
    with pytest.raises(ValueError, match="6 pages but paged_kv_indices_buffer holds 4"):
        w.plan(indptr.cpu(), indices.cpu(), last.cpu(), 4, 2, 64, 16)
    with pytest.raises(ValueError, match="needs paged_kv_indices_buffer"):
        _graph_wrapper(paged_kv_indices_buffer=None)
    with pytest.raises(ValueError, match="paged_kv_indptr_buffer must have max_batch \\+ 1 = 3"):
        _graph_wrapper(paged_kv_indptr_buffer=torch.zeros(2, dtype=torch.int32))
    with pytest.raises(ValueError, match="paged_kv_last_page_len_buffer must be int32"):
        _graph_wrapper(paged_kv_last_page_len_buffer=torch.zeros(2, dtype=torch.int64))
    w = _graph_wrapper()
    indptr, indices, last = page_table((20,), 16, 8, seed=1)
    w.plan(indptr.cpu(), indices.cpu(), last.cpu(), 4, 2, 64, 16)
    with pytest.raises(ValueError, match="q must have shape"):  # more rows than max_batch
        w.run(torch.randn(3, 4, 64, dtype=torch.float16), torch.randn(8, 2, 16, 2, 64).half())


@pytest.mark.gpu
def test_cuda_graph_capture_replay():
    """Capture run() once in a torch.cuda.CUDAGraph, re-plan for other lengths and batch sizes,
    replay, and compare with the reference each time."""
    dtype, page_size, hq, hk, dim, max_batch, num_pages = torch.bfloat16, 16, 32, 8, 128, 8, 512
    dev = "cuda"
    g = torch.Generator().manual_seed(0)
    cache = torch.randn(num_pages, 2, page_size, hk, dim, generator=g).to(dtype).to(dev)
    q = torch.randn(max_batch, hq, dim, generator=g).to(dtype).to(dev)
    w = A.BatchDecodeWithPagedKVCacheWrapper(
        torch.empty(64 << 20, dtype=torch.uint8, device=dev), "NHD", use_cuda_graph=True,
        paged_kv_indptr_buffer=torch.zeros(max_batch + 1, dtype=torch.int32, device=dev),
        paged_kv_indices_buffer=torch.zeros(num_pages, dtype=torch.int32, device=dev),
        paged_kv_last_page_len_buffer=torch.zeros(max_batch, dtype=torch.int32, device=dev))
    out = torch.empty(max_batch, hq, dim, dtype=dtype, device=dev)
    lse = torch.empty(max_batch, hq, dtype=torch.float32, device=dev)
    plans = [(1000, 17, 0, 3000, 1, 64, 500, 2), (0, 4000), (7, 2500, 300), (1,) * 8]
    for i, lens in enumerate(plans):
        indptr, indices, last = page_table(lens, page_size, num_pages, seed=i)
        w.plan(indptr, indices, last, hq, hk, dim, page_size, q_data_type=dtype)
        if i == 0:
            graph = capture_graph(lambda: w.run(q, cache, out=out, lse=lse))
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        batch = len(lens)
        ref_o, ref_lse = ref_paged(q[:batch].cpu(), torch.arange(batch + 1, dtype=torch.int32),
                                   cache.cpu(), indptr, indices, last, "NHD")
        check_attn(out[:batch], lse[:batch], ref_o, ref_lse, dtype)
        assert torch.equal(out[batch:].cpu(), torch.zeros_like(out[batch:].cpu()))


# ----------------------------------------------------------------------------- fp8 KV
def _fp8_case(kv_lens, hq, hk, dim, page_size, layout, dtype, seed, soft_cap=None):
    """A cache quantized to e4m3 with per-tensor scales: (q, fp8 cache, the unquantized cache,
    page table, k_scale, v_scale). K/V are far from e4m3's unit range (0.05 / 3 x randn), so a
    missing or misapplied scale is a large error."""
    g = torch.Generator().manual_seed(seed)
    pages = [-(-n // page_size) for n in kv_lens]
    total = sum(pages) + 2
    shape = ((total, page_size, hk, dim) if layout == "NHD" else (total, hk, page_size, dim))
    k_true = torch.randn(shape, generator=g) * 0.05
    v_true = torch.randn(shape, generator=g) * 3.0
    k_scale = k_true.abs().max().item() / 448.0
    v_scale = v_true.abs().max().item() / 448.0
    cache8 = torch.stack([(k_true / k_scale).to(FP8), (v_true / v_scale).to(FP8)], 1)
    true = torch.stack([k_true, v_true], 1).to(dtype)
    q = (torch.randn(len(kv_lens), hq, dim, generator=g) * 4).to(dtype)
    perm = torch.randperm(total, generator=g)[:sum(pages)].to(torch.int32)
    indptr = torch.tensor([0, *np.cumsum(pages)], dtype=torch.int32)
    last = torch.tensor([n - (p - 1) * page_size if p else 0 for n, p in zip(kv_lens, pages)],
                        dtype=torch.int32)
    d = device()
    return (q.to(d), cache8.to(d), true.to(d), indptr.to(d), perm.to(d), last.to(d), k_scale,
            v_scale)


# Against the dequantized reference (the same e4m3 values times the scales) only the fp16/bf16
# roundings remain (ATTN_TOL): observed max |err| 5.9e-4 (fp16) and 1.1e-2 (bf16, Triton; 3.9e-3
# torch), LSE 1e-6. Against attention on the unquantized K/V, e4m3's 3 mantissa bits (relative
# rounding error up to 2^-4 per element, averaged down by the softmax-weighted sum) dominate:
# observed max |err| 0.047 on outputs up to 1.55, LSE 0.002 (the dequantized reference itself is
# 0.042 off); bounds about 2x and 5x that.
FP8_TRUE_TOL = dict(atol=0.1, rtol=0.0)
FP8_TRUE_LSE_TOL = dict(atol=0.01, rtol=0.0)


# The unscaled run saturates the soft cap's exp2 (inf, then tanh = 1 exactly); numpy warns.
@pytest.mark.filterwarnings("ignore:overflow encountered in exp2:RuntimeWarning")
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=dt_id)
@pytest.mark.parametrize("layout,soft_cap", [("NHD", None), ("HND", 2.0)])
def test_batch_decode_fp8_kv(layout, soft_cap, dtype, backend):
    lens, hq, hk, dim, ps = (0, 37, 150), 8, 2, 64, 16
    q, cache8, true, indptr, indices, last, ks, vs = _fp8_case(lens, hq, hk, dim, ps, layout,
                                                                 dtype, seed=7)
    w = A.BatchDecodeWithPagedKVCacheWrapper(torch.empty(1 << 20, dtype=torch.uint8,
                                                         device=device()), layout, backend=backend)
    w.plan(indptr, indices, last, hq, hk, dim, ps, q_data_type=dtype, kv_data_type=FP8,
           logits_soft_cap=soft_cap, num_workers=4, min_chunk_tokens=32)
    out, lse = w.run(q, cache8, k_scale=ks, v_scale=vs, return_lse=True)
    assert out.dtype == dtype
    qo = torch.arange(len(lens) + 1, dtype=torch.int32)
    ref_o, ref_lse = ref_paged(q, qo, cache8, indptr, indices, last, layout,
                               logits_soft_cap=soft_cap, k_scale=ks, v_scale=vs)
    check_attn(out, lse, ref_o, ref_lse, dtype)
    true_o, true_lse = ref_paged(q, qo, true, indptr, indices, last, layout,
                                 logits_soft_cap=soft_cap)
    torch.testing.assert_close(out.float().cpu(), true_o.cpu(), **FP8_TRUE_TOL)
    finite = ~torch.isneginf(true_lse)
    torch.testing.assert_close(lse.cpu()[finite], true_lse[finite], **FP8_TRUE_LSE_TOL)
    # the scales matter: without them the result is far off
    assert (w.run(q, cache8).float().cpu() - ref_o).abs().max() > 1.0


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_single_decode_fp8_kv(backend):
    q, cache8, _, indptr, indices, last, ks, vs = _fp8_case((90,), 4, 4, 64, 90, "NHD",
                                                            torch.float16, seed=3)
    k, v = cache8[indices[0], 0], cache8[indices[0], 1]  # [90, 4, 64]
    o, lse = A.single_decode_with_kv_cache(q[0], k, v, k_scale=ks, v_scale=vs, return_lse=True,
                                           backend=backend)
    ref_o, ref_lse = ref_paged(q, torch.tensor([0, 1], dtype=torch.int32), cache8, indptr,
                               indices, last, "NHD", k_scale=ks, v_scale=vs)
    check_attn(o, lse, ref_o[0], ref_lse[0], torch.float16)


def test_kv_scales_on_fp16_kv():
    """k_scale/v_scale are plain scales on any KV dtype (FlashInfer's semantics)."""
    q, _, true, indptr, indices, last, _, _ = _fp8_case((40, 70), 4, 2, 64, 16, "NHD",
                                                        torch.float16, seed=5)
    w = A.BatchDecodeWithPagedKVCacheWrapper(torch.empty(1 << 20, dtype=torch.uint8,
                                                         device=device()), backend="triton")
    w.plan(indptr, indices, last, 4, 2, 64, 16, q_data_type=torch.float16, min_chunk_tokens=16,
           num_workers=4)
    out, lse = w.run(q, true, k_scale=3.0, v_scale=0.5, return_lse=True)
    ref_o, ref_lse = ref_paged(q, torch.arange(3, dtype=torch.int32), true, indptr, indices,
                               last, "NHD", k_scale=3.0, v_scale=0.5)
    check_attn(out, lse, ref_o, ref_lse, torch.float16)
    torch.testing.assert_close(ref_o, ref_paged(q, torch.arange(3, dtype=torch.int32), true,
                                                indptr, indices, last, "NHD",
                                                sm_scale=3.0 / 8.0)[0] * 0.5,
                               **ATTN_TOL[torch.float16])


def test_fp8_bad_inputs():
    q, cache8, true, indptr, indices, last, ks, vs = _fp8_case((20,), 4, 2, 64, 16, "NHD",
                                                                torch.float16, seed=1)
    w = A.BatchDecodeWithPagedKVCacheWrapper(torch.empty(1 << 20, dtype=torch.uint8))
    with pytest.raises(ValueError, match="kv_data_type must be torch.float16 or torch.bfloat16 "
                                         "or torch.float8_e4m3fn"):
        w.plan(indptr, indices, last, 4, 2, 64, 16, kv_data_type=torch.float8_e5m2)
    with pytest.raises(ValueError, match="q_data_type must be torch.float16 or torch.bfloat16,"):
        w.plan(indptr, indices, last, 4, 2, 64, 16, q_data_type=FP8)
    w.plan(indptr, indices, last, 4, 2, 64, 16, kv_data_type="float8_e4m3fn")
    with pytest.raises(ValueError, match="paged_kv_cache must be torch.float8_e4m3fn"):
        w.run(q, true)
    with pytest.raises(ValueError, match="k_scale must be None or a finite float"):
        w.run(q, cache8, k_scale=float("inf"))
    with pytest.raises(ValueError, match="v_scale must be None or a finite float"):
        w.run(q, cache8, v_scale="1")
    with pytest.raises(ValueError, match="v must have k's dtype"):
        A.single_decode_with_kv_cache(q[0], cache8[:, 0, 0], true[:, 1, 0])


def test_fp8_refused_before_sm89(monkeypatch):
    """Triton cannot convert e4m3 on sm_80/86 (tests/jit/test_triton_targets.py sees the sm_80
    build fail): the decode ops refuse such GPUs before planning anything."""
    from flashkit.ops.attention.decode import check_fp8_device

    cuda = torch.device("cuda", 0)
    for cap, ok in (((8, 0), False), ((8, 6), False), ((8, 9), True), ((9, 0), True)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None, c=cap: c)
        if ok:
            check_fp8_device(FP8, cuda)
        else:
            with pytest.raises(ValueError, match=f"compute capability 8.9 or newer .*sm_{cap[0]}{cap[1]}"):
                check_fp8_device(FP8, cuda)
        check_fp8_device(torch.float16, cuda)  # 16-bit caches run everywhere
