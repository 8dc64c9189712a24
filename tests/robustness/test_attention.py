"""The attention ops under bad input: single_* functions, the batch wrappers' plan()/run(), the
page-table writes and custom variants. Every call is by keyword (the positional order follows
FlashInfer's and may move). Regressions of issue 17: a page table edited after plan() must not
reach run(); variants and their args are checked; bad append positions raise."""
import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import flashkit.ops.attention as A
from flashkit.ops.attention import reference

from .framework import Case, table, tried_example
from .mutations import mutate_one

HQ, HK, D, PS = 4, 2, 16, 4
F16 = torch.float16
I32 = torch.int32
META = torch.device("meta")
BACKENDS = ["torch", "triton"]
PROPERTY = settings(max_examples=40, deadline=None, database=None)


def qkv(qo=1, kv=5, hq=HQ, hk=HK, d=D, dtype=F16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(qo, hq, d, generator=g).to(dtype)
    k = torch.randn(kv, hk, d, generator=g).to(dtype)
    v = torch.randn(kv, hk, d, generator=g).to(dtype)
    return q, k, v


def table_of(lens, page_size=PS, spare=2):
    """(cache, indptr, indices, last) for requests of KV lengths ``lens``, pages in order."""
    pages = [-(-n // page_size) for n in lens]
    indptr = torch.tensor([0] + pages, dtype=I32).cumsum(0).to(I32)
    indices = torch.arange(sum(pages), dtype=I32)
    last = torch.tensor([n - (p - 1) * page_size if p else 0 for n, p in zip(lens, pages)],
                        dtype=I32)
    g = torch.Generator().manual_seed(1)
    cache = torch.randn(sum(pages) + spare, 2, page_size, HK, D, generator=g).to(F16)
    return cache, indptr, indices, last


def workspace():
    return torch.empty(1 << 20, dtype=torch.uint8)


def decode_wrapper(backend="torch", graph=False, max_batch=4, max_pages=16):
    if not graph:
        return A.BatchDecodeWithPagedKVCacheWrapper(workspace(), "NHD", backend=backend)
    z = lambda n: torch.zeros(n, dtype=I32)  # noqa: E731
    return A.BatchDecodeWithPagedKVCacheWrapper(
        workspace(), "NHD", use_cuda_graph=True, backend=backend,
        paged_kv_indptr_buffer=z(max_batch + 1), paged_kv_indices_buffer=z(max_pages),
        paged_kv_last_page_len_buffer=z(max_batch))


def decode_plan(w, indptr, indices, last, **kw):
    w.plan(indptr=indptr, indices=indices, last_page_len=last, num_qo_heads=HQ,
           num_kv_heads=HK, head_dim=D, page_size=PS, q_data_type=F16, **kw)


# -- regression: run() reads only what plan() validated (copied), CUDA-graph plans included --

@pytest.mark.parametrize("graph", [False, True], ids=["plain", "graph"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_run_ignores_table_edits_after_plan(backend, graph):
    cache, indptr, indices, last = table_of([7, 0, 12])
    q = torch.randn(3, HQ, D).to(F16)
    w = decode_wrapper(backend, graph)
    decode_plan(w, indptr, indices, last)
    want = w.run(q=q, paged_kv_cache=cache).clone()
    indices.fill_(10**6)  # a page far outside the cache: a gather of it reads wild memory
    indptr.copy_(torch.tensor([0, 9, 9, 9], dtype=I32))
    last.fill_(PS)
    if graph:  # the caller's fixed buffers are filled by plan(); edits there must not matter
        for buf in w._graph.user:
            buf.fill_(10**6)
    got = w.run(q=q, paged_kv_cache=cache)
    assert torch.equal(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_prefill_run_ignores_table_edits_after_plan(backend):
    cache, indptr, indices, last = table_of([6, 9])
    qo_indptr = torch.tensor([0, 2, 5], dtype=I32)
    mask = torch.rand(2 * 6 + 3 * 9, generator=torch.Generator().manual_seed(3)) > 0.3
    q = torch.randn(5, HQ, D).to(F16)
    w = A.BatchPrefillWithPagedKVCacheWrapper(workspace(), "NHD", backend=backend)
    w.plan(qo_indptr=qo_indptr, paged_kv_indptr=indptr, paged_kv_indices=indices,
           paged_kv_last_page_len=last, num_qo_heads=HQ, num_kv_heads=HK, head_dim_qk=D,
           page_size=PS, custom_mask=mask, q_data_type=F16)
    want = w.run(q=q, paged_kv_cache=cache).clone()
    for t in (indices, indptr, qo_indptr):
        t.fill_(10**6)
    mask.logical_not_()
    assert torch.equal(w.run(q=q, paged_kv_cache=cache), want)


# -- regression: variants and variant_args are checked before any launch --

ALIBI = A.AttentionVariant(
    "alibi_checked", triton="""
        slope = tl.load(slopes + qo_head)
        logits = logits + slope * (k_pos - q_pos).to(tl.float32)
    """, params=(A.VariantParam("slopes", torch.float32, ("num_qo_heads",)),),
    torch_fn=lambda lg, keep, qp, kp, h, slopes: (lg + slopes[h] * (kp - qp), keep))
NO_TORCH = A.AttentionVariant("neg_only_triton", triton="logits = -logits")
NO_TRITON = A.AttentionVariant("neg_only_torch", torch_fn=lambda lg, keep, *a: (-lg, keep))


def single(variant=None, args=(), backend="torch", **kw):
    q, k, v = qkv()
    return lambda: A.single_decode_with_kv_cache(q=q[0], k=k, v=v, backend=backend,
                                                 variant=variant, variant_args=args, **kw)


SLOPES = torch.ones(HQ)

test_variants = table([
    Case("snippet-without-torch_fn", single(NO_TORCH), ValueError, r"no torch_fn"),
    Case("torch_fn-without-snippet", single(NO_TRITON, backend="triton"), ValueError,
         r"no Triton snippet"),
    Case("too-few-slopes", single(ALIBI, (torch.ones(2),)), ValueError,
         r"variant_args\[0\] \(slopes\) must have shape \(4,\)"),
    Case("slopes-float16", single(ALIBI, (SLOPES.half(),)), ValueError,
         r"variant_args\[0\].*torch.float32"),
    Case("slopes-missing", single(ALIBI, ()), ValueError, r"variant_args must hold 1"),
    Case("slopes-extra", single(ALIBI, (SLOPES, SLOPES)), ValueError, r"variant_args must hold 1"),
    Case("slopes-not-a-tensor", single(ALIBI, ([1.0] * HQ,)), ValueError,
         r"variant_args\[0\].*torch.Tensor"),
    Case("slopes-strided", single(ALIBI, (torch.ones(2 * HQ)[::2],)), ValueError,
         r"variant_args\[0\].*contiguous"),
    Case("slopes-meta", single(ALIBI, (SLOPES.to(META),)), ValueError,
         r"variant_args\[0\].*must be on cpu"),
    Case("args-without-variant", single(None, (SLOPES,)), ValueError, r"no variant"),
    Case("param-shape-bad", lambda: A.VariantParam("s", shape=("heads",)), ValueError,
         r"VariantParam shape"),
    Case("alibi-ok", single(ALIBI, (SLOPES,)), None, r"tensor"),
])


# -- single_* and wrappers: dtypes, devices, shapes, strides, sizes, scalars --

def sd(**over):
    q, k, v = qkv()
    kw = dict(q=q[0], k=k, v=v)
    kw.update(over)
    return lambda: A.single_decode_with_kv_cache(**kw)


def sp(**over):
    q, k, v = qkv(qo=3)
    kw = dict(q=q, k=k, v=v)
    kw.update(over)
    return lambda: A.single_prefill_with_kv_cache(**kw)


Q, K, V = qkv()

test_single = table([
    Case("decode-zero-kv-heads", sd(k=torch.zeros(5, 0, D, dtype=F16),
                                     v=torch.zeros(5, 0, D, dtype=F16)),
         ValueError, r"num_kv_heads >= 1"),
    Case("decode-head-dim-zero", sd(q=torch.zeros(HQ, 0, dtype=F16),
                                     k=torch.zeros(5, HK, 0, dtype=F16),
                                     v=torch.zeros(5, HK, 0, dtype=F16)),
         ValueError, r"head_dim must be in \[1, 512\]"),
    Case("decode-zero-qo-heads", sd(q=torch.zeros(0, D, dtype=F16)), ValueError,
         r"num_qo_heads >= 1"),
    Case("prefill-zero-kv-heads", sp(k=torch.zeros(5, 0, D, dtype=F16),
                                      v=torch.zeros(5, 0, D, dtype=F16)),
         ValueError, r"num_kv_heads >= 1"),
    Case("prefill-head-dim-huge", sp(q=torch.zeros(3, HQ, 1024, dtype=F16),
                                      k=torch.zeros(5, HK, 1024, dtype=F16),
                                      v=torch.zeros(5, HK, 1024, dtype=F16)),
         ValueError, r"head_dim"),
    Case("decode-q-float32", sd(q=Q[0].float()), ValueError, r"q must be float16/bfloat16"),
    Case("decode-k-int", sd(k=K.int()), ValueError, r"k must be"),
    Case("decode-q-meta", sd(q=Q[0].to(META)), ValueError, r"k must be on meta"),
    Case("decode-v-meta", sd(v=V.to(META)), ValueError, r"v must be on cpu"),
    Case("decode-k-strided", sd(k=torch.zeros(5, HK, 2 * D, dtype=F16)[..., ::2]), ValueError,
         r"k must have a contiguous last dimension"),
    Case("decode-v-shape", sd(v=V[:4]), ValueError, r"v must have k's shape"),
    Case("decode-gqa-bad", sd(k=torch.zeros(5, 3, D, dtype=F16), v=torch.zeros(5, 3, D, dtype=F16)),
         ValueError, r"must divide q's num_qo_heads"),
    Case("decode-sm-scale-nan", sd(sm_scale=math.nan), ValueError, r"sm_scale"),
    Case("decode-sm-scale-inf", sd(sm_scale=math.inf), ValueError, r"sm_scale"),
    Case("decode-soft-cap-neg", sd(logits_soft_cap=-1.0), ValueError, r"logits_soft_cap"),
    Case("decode-window-float", sd(window_left=1.5), ValueError, r"window_left"),
    Case("decode-window-huge", sd(window_left=2**40), ValueError, r"window_left"),
    Case("decode-k-scale-inf", sd(k_scale=math.inf), ValueError, r"k_scale"),
    Case("decode-layout", sd(kv_layout="NDH"), ValueError, r"kv_layout"),
    Case("decode-backend", sd(backend="tensorrt"), ValueError, r"backend must be one of"),
    Case("decode-empty-kv", sd(k=K[:0], v=V[:0], return_lse=True), None, r"-inf"),
    Case("prefill-mask-shape", sp(custom_mask=torch.ones(2, 5, dtype=torch.bool)), ValueError,
         r"custom_mask must have shape \(3, 5\)"),
    Case("prefill-mask-dtype", sp(custom_mask=torch.ones(3, 5)), ValueError,
         r"custom_mask must be bool"),
])


CACHE, INDPTR, INDICES, LAST = table_of([5, 8])


def dplan(**over):
    kw = dict(indptr=INDPTR, indices=INDICES, last_page_len=LAST, num_qo_heads=HQ,
              num_kv_heads=HK, head_dim=D, page_size=PS, q_data_type=F16)
    kw.update(over)
    return lambda: decode_wrapper().plan(**kw)


def drun(q=None, cache=None, **kw):
    def call():
        w = decode_wrapper()
        decode_plan(w, INDPTR, INDICES, LAST)
        return w.run(q=torch.zeros(2, HQ, D, dtype=F16) if q is None else q,
                     paged_kv_cache=CACHE if cache is None else cache, **kw)
    return call


T = lambda *xs: torch.tensor(xs, dtype=I32)  # noqa: E731

test_decode_wrapper = table([
    Case("zero-kv-heads", dplan(num_kv_heads=0), ValueError, r"num_kv_heads must be in"),
    Case("zero-qo-heads", dplan(num_qo_heads=0), ValueError, r"num_qo_heads must be in"),
    Case("head-dim-zero", dplan(head_dim=0), ValueError, r"head_dim must be in"),
    Case("head-dim-float", dplan(head_dim=16.0), ValueError, r"head_dim must be an int"),
    Case("page-size-neg", dplan(page_size=-4), ValueError, r"page_size must be in"),
    Case("indptr-int64", dplan(indptr=INDPTR.long()), ValueError, r"indptr must be int32"),
    Case("indptr-2d", dplan(indptr=INDPTR[None]), ValueError, r"indptr must be 1-D"),
    Case("indptr-start", dplan(indptr=T(1, 2, 5)), ValueError, r"indptr must start at 0"),
    Case("indptr-drop", dplan(indptr=T(0, 2, 1)), ValueError, r"indptr must be non-decreasing"),
    Case("indptr-past-indices", dplan(indptr=T(0, 2, 9)), ValueError, r"exceeds the 4 entries"),
    Case("indices-negative", dplan(indices=T(0, -1, 2, 3)), ValueError, r"indices must be non-neg"),
    Case("last-zero", dplan(last_page_len=T(0, 4)), ValueError, r"last_page_len\[0\]"),
    Case("last-too-big", dplan(last_page_len=T(1, 5)), ValueError, r"last_page_len\[1\]"),
    Case("last-count", dplan(last_page_len=T(1)), ValueError, r"last_page_len must have batch"),
    Case("q-dtype", dplan(q_data_type=torch.float32), ValueError, r"q_data_type"),
    Case("window-nan", dplan(window_left=math.nan), ValueError, r"window_left"),
    Case("pos-encoding", dplan(pos_encoding_mode="ROPE_LLAMA"), ValueError, r"pos_encoding_mode"),
    Case("run-before-plan", lambda: decode_wrapper().run(q=Q, paged_kv_cache=CACHE),
         RuntimeError, r"before plan"),
    Case("run-q-rows", drun(q=torch.zeros(3, HQ, D, dtype=F16)), ValueError,
         r"q must have shape \(2, 4, 16\)"),
    Case("run-q-dtype", drun(q=torch.zeros(2, HQ, D, dtype=torch.bfloat16)), ValueError,
         r"q must be float16"),
    Case("run-q-meta", drun(q=torch.zeros(2, HQ, D, dtype=F16, device=META)), ValueError,
         r"q must be on cpu"),
    Case("run-cache-too-few-pages", drun(cache=CACHE[:3]), ValueError,
         r"indices reach page 3 but paged_kv_cache has only 3"),
    Case("run-cache-heads", drun(cache=torch.zeros(6, 2, PS, 1, D, dtype=F16)), ValueError,
         r"paged_kv_cache must hold pages"),
    Case("run-cache-tuple-3", drun(cache=(CACHE[:, 0],) * 3), ValueError,
         r"paged_kv_cache as a tuple"),
    Case("run-out-shape", drun(out=torch.zeros(1, HQ, D, dtype=F16)), ValueError,
         r"out must have shape"),
    Case("run-lse-dtype", drun(lse=torch.zeros(2, HQ, dtype=F16)), ValueError,
         r"lse must be float32"),
    Case("run-k-scale-nan", drun(k_scale=math.nan), ValueError, r"k_scale"),
])


# -- regression: append_paged_kv_cache / get_batch_indices_positions positions --

def append(batch_indices, positions, lens=(5, 8), nnz=None):
    cache, indptr, indices, last = table_of(list(lens))
    n = len(batch_indices) if nnz is None else nnz
    key = torch.ones(n, HK, D, dtype=F16)

    def call():
        A.append_paged_kv_cache(append_key=key, append_value=key, batch_indices=T(*batch_indices),
                                positions=T(*positions), paged_kv_cache=cache,
                                kv_indices=indices, kv_indptr=indptr, kv_last_page_len=last)
        return cache
    return call


def positions(append_indptr, seq_lens, nnz):
    return lambda: A.get_batch_indices_positions(append_indptr=T(*append_indptr),
                                                 seq_lens=T(*seq_lens), nnz=nnz)


test_page_writes = table([
    Case("append-negative-position", append([1], [-1]), ValueError, r"positions\[0\] = -1"),
    Case("append-position-past-len", append([0], [5]), ValueError,
         r"positions\[0\] = 5 is outside \[0, 5\)"),
    Case("append-batch-index-past", append([2], [0]), ValueError,
         r"batch_indices\[0\] = 2 is outside \[0, 2\)"),
    Case("append-batch-index-neg", append([-1], [0]), ValueError, r"batch_indices\[0\] = -1"),
    Case("append-ok", append([0, 1], [4, 7]), None, r"tensor"),
    Case("append-empty", append([], []), None, r"tensor"),
    Case("positions-seq-lens-short", positions([0, 3], [2], 3), ValueError,
         r"seq_lens\[0\] = 2 is less than the 3 tokens"),
    Case("positions-nnz-mismatch", positions([0, 3], [5], 2), ValueError,
         r"nnz \(2\) must equal append_indptr\[-1\] \(3\)"),
    Case("positions-indptr-drop", positions([0, 3, 2], [5, 5], 2), ValueError,
         r"append_indptr must start at 0 and be non-decreasing"),
    Case("positions-nnz-neg", positions([0], [], -1), ValueError, r"nnz must be in"),
])


def test_append_writes_only_its_pages():
    """A valid append changes exactly the slots its positions name (the oracle: a loop)."""
    cache, indptr, indices, last = table_of([5, 8])
    before = cache.clone()
    key = torch.arange(2 * HK * D, dtype=torch.float32).view(2, HK, D).to(F16)
    A.append_paged_kv_cache(append_key=key, append_value=-key, batch_indices=T(0, 1),
                            positions=T(4, 6), paged_kv_cache=cache, kv_indices=indices,
                            kv_indptr=indptr, kv_last_page_len=last)
    want = before.clone()
    for j, (b, p) in enumerate([(0, 4), (1, 6)]):
        page = int(indices[int(indptr[b]) + p // PS])
        want[page, 0, p % PS] = key[j]
        want[page, 1, p % PS] = -key[j]
    assert torch.equal(cache, want)


@PROPERTY
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(-3, 12)), min_size=1, max_size=4))
def test_positions_never_negative(reqs):
    """get_batch_indices_positions returns positions in [0, seq_len) or raises naming seq_lens."""
    tried_example()
    counts = [c for c, _ in reqs]
    seq = [s for _, s in reqs]
    indptr = T(*([0] + torch.tensor(counts).cumsum(0).tolist()))
    nnz = sum(counts)
    if any(s < c for c, s in reqs):
        with pytest.raises(ValueError, match=r"seq_lens\[\d+\]"):
            A.get_batch_indices_positions(append_indptr=indptr, seq_lens=T(*seq), nnz=nnz)
        return
    b, p = A.get_batch_indices_positions(append_indptr=indptr, seq_lens=T(*seq), nnz=nnz)
    assert (p >= 0).all()
    assert (p < T(*seq)[b.long()]).all() if nnz else True


@PROPERTY
@given(st.lists(st.integers(-2, 30), min_size=1, max_size=4), st.integers(-3, 12))
def test_plan_page_table_property(lens_raw, poke):
    """Any int32 page table: plan() accepts it and run() matches the oracle, or plan() raises a
    ValueError naming indptr/indices/last_page_len; never anything else."""
    tried_example()
    lens = [max(n, 0) for n in lens_raw]
    cache, indptr, indices, last = table_of(lens)
    if poke < len(lens) and poke >= 0 and lens_raw[poke] < 0:
        last[poke] = lens_raw[poke]  # a negative length: plan must refuse it
    w = decode_wrapper()
    try:
        decode_plan(w, indptr, indices, last)
    except ValueError as exc:
        assert re.search(r"indptr|indices|last_page_len", str(exc))
        return
    q = torch.randn(len(lens), HQ, D).to(F16)
    got, lse = w.run(q=q, paged_kv_cache=cache, return_lse=True)
    kv = reference.naive_gather_paged_kv(cache, indptr, indices, last, "NHD")
    ref, ref_lse = reference.naive_batch_attention(q.float(), torch.arange(len(lens) + 1),
                                                    [(k.float(), v.float()) for k, v in kv])
    torch.testing.assert_close(got.float(), ref.float(), atol=4e-3, rtol=4e-3)



# -- every attention op, one bad tensor at a time (tests/robustness/mutations.py) --

def _decode_batch(indptr, indices, last_page_len, q, paged_kv_cache):
    w = decode_wrapper()
    decode_plan(w, indptr, indices, last_page_len)
    return w.run(q=q, paged_kv_cache=paged_kv_cache)


def _prefill_batch(qo_indptr, indptr, indices, last_page_len, q, paged_kv_cache):
    w = A.BatchPrefillWithPagedKVCacheWrapper(workspace(), "NHD", backend="torch")
    w.plan(qo_indptr=qo_indptr, paged_kv_indptr=indptr, paged_kv_indices=indices,
           paged_kv_last_page_len=last_page_len, num_qo_heads=HQ, num_kv_heads=HK,
           head_dim_qk=D, page_size=PS, causal=True, q_data_type=F16)
    return w.run(q=q, paged_kv_cache=paged_kv_cache)


def _append(**kw):
    A.append_paged_kv_cache(**kw)
    return kw["paged_kv_cache"]


def _batch_kwargs(prefill=False):
    cache, indptr, indices, last = table_of([5, 8])
    kw = dict(indptr=indptr, indices=indices, last_page_len=last, paged_kv_cache=cache,
              q=torch.randn(5 if prefill else 2, HQ, D,
                            generator=torch.Generator().manual_seed(2)).to(F16))
    if prefill:
        kw["qo_indptr"] = T(0, 2, 5)
    return kw


def _append_kwargs():
    cache, indptr, indices, last = table_of([5, 8])
    key = torch.ones(2, HK, D, dtype=F16)
    return dict(append_key=key, append_value=-key, batch_indices=T(0, 1), positions=T(4, 7),
                paged_kv_cache=cache, kv_indices=indices, kv_indptr=indptr,
                kv_last_page_len=last)


def _single_kwargs(qo):
    """qo=0: decode's q [HQ, D]; else prefill's [qo, HQ, D]."""
    q, k, v = qkv(qo=max(qo, 1))
    return dict(q=q if qo else q[0], k=k, v=v, backend="torch")


OPS = {
    "single_decode": (A.single_decode_with_kv_cache, lambda: _single_kwargs(0)),
    "single_prefill": (A.single_prefill_with_kv_cache, lambda: _single_kwargs(3)),
    "batch_decode": (_decode_batch, _batch_kwargs),
    "batch_prefill": (_prefill_batch, lambda: _batch_kwargs(prefill=True)),
    "append_paged_kv_cache": (_append, _append_kwargs),
    "get_batch_indices_positions": (A.get_batch_indices_positions, lambda: dict(
        append_indptr=T(0, 2, 3), seq_lens=T(4, 1), nnz=3)),
}


@settings(max_examples=150, deadline=None, database=None)
@given(st.sampled_from(sorted(OPS)), st.data())
def test_attention_mutation_property(op, data):
    mutate_one(OPS, op, data)
