"""Decode attention (single and paged batch) against the float32 reference."""
import dataclasses

import pytest
import torch

import flashkit.ops.attention as A
from tests.helpers import device, kernel_backends, poison

from .attn_common import check_attn, dt_id, make_paged, ref_paged, ref_single

BACKENDS = kernel_backends()  # on a GPU: torch, triton and the CUDA (NVRTC) decode kernel
DTYPES = (torch.float16, torch.bfloat16)


@dataclasses.dataclass
class Case:
    kv_lens: tuple
    num_qo_heads: int
    num_kv_heads: int
    head_dim: int
    page_size: int
    layout: str
    as_tuple: bool = False
    window_left: int = -1
    soft_cap: float | None = None
    sm_scale: float | None = None

    @property
    def id(self):
        parts = [f"hd{self.head_dim}", f"g{self.num_qo_heads // self.num_kv_heads}",
                 f"ps{self.page_size}", self.layout.lower(), "lens" + "-".join(map(str, self.kv_lens))]
        if self.as_tuple:
            parts.append("tuple")
        if self.window_left >= 0:
            parts.append(f"win{self.window_left}")
        if self.soft_cap:
            parts.append(f"cap{self.soft_cap:g}")
        if self.sm_scale:
            parts.append(f"scale{self.sm_scale:g}")
        return "_".join(parts)


# Zero-length requests beside long ones; with min_chunk_tokens=32 and 4 workers the long ones are
# split into several chunks, so the varlen merge runs with 0, 1 and many items per request.
CASES = [
    Case((0, 37, 300, 1), 4, 4, 64, 16, "NHD"),
    Case((5, 0, 70), 8, 2, 128, 1, "HND"),
    Case((200, 3), 8, 1, 64, 16, "HND", as_tuple=True, window_left=50, soft_cap=5.0),
    Case((40, 90), 4, 1, 256, 16, "NHD", sm_scale=0.3),
    Case((129, 0), 2, 2, 64, 1, "NHD", as_tuple=True, soft_cap=1.0, window_left=0),
]


def _run_batch(case, dtype, backend, seed, return_lse=True, out=None, lse=None):
    cache, indptr, indices, last = make_paged(case.kv_lens, case.page_size, case.num_kv_heads,
                                              case.head_dim, dtype, case.layout, seed,
                                              case.as_tuple)
    g = torch.Generator().manual_seed(seed + 1)
    q = torch.randn(len(case.kv_lens), case.num_qo_heads, case.head_dim, generator=g).to(dtype)
    q = q.to(device())
    ws = torch.empty(1 << 20, dtype=torch.uint8, device=device())
    poison(ws.view(torch.float32))  # stale partial states must never leak into the output
    w = A.BatchDecodeWithPagedKVCacheWrapper(ws, case.layout, backend=backend)
    w.plan(indptr, indices, last, case.num_qo_heads, case.num_kv_heads, case.head_dim,
           case.page_size, window_left=case.window_left, logits_soft_cap=case.soft_cap,
           q_data_type=dtype, sm_scale=case.sm_scale, num_workers=4, min_chunk_tokens=32)
    res = w.run(q, cache, out=out, lse=lse, return_lse=return_lse)
    return res, (q, cache, indptr, indices, last)


def _ref(case, q, cache, indptr, indices, last):
    qo = torch.arange(q.shape[0] + 1, dtype=torch.int32)
    return ref_paged(q, qo, cache, indptr, indices, last, case.layout,
                     window_left=case.window_left, logits_soft_cap=case.soft_cap,
                     sm_scale=case.sm_scale)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dt_id)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_batch_decode(case, dtype, backend):
    (out, lse), inputs = _run_batch(case, dtype, backend, seed=hash(case.id) % 1000)
    assert out.dtype == dtype and lse.dtype == torch.float32
    ref_out, ref_lse = _ref(case, *inputs)
    check_attn(out, lse, ref_out, ref_lse, dtype)
    empty = torch.tensor(case.kv_lens) == 0
    assert torch.equal(out[empty].cpu(), torch.zeros_like(out[empty].cpu()))


@pytest.mark.parametrize("backend", BACKENDS)
def test_poisoned_outputs_are_overwritten(backend):
    case = CASES[0]
    dtype = torch.float16
    out = poison(torch.empty(4, 4, 64, dtype=dtype, device=device()))
    lse = poison(torch.empty(4, 4, dtype=torch.float32, device=device()))
    (out2, lse2), inputs = _run_batch(case, dtype, backend, seed=3, out=out, lse=lse)
    assert out2 is out and lse2 is lse
    check_attn(out, lse, *_ref(case, *inputs), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dt_id)
def test_single_decode(dtype, layout, backend):
    g = torch.Generator().manual_seed(11)
    q = torch.randn(8, 64, generator=g).to(dtype).to(device())
    k, v = (torch.randn(2, 333, 64, generator=g).to(dtype).to(device()) for _ in range(2))
    if layout == "NHD":
        k, v = k.transpose(0, 1), v.transpose(0, 1)  # non-contiguous NHD views
    o, lse = A.single_decode_with_kv_cache(q, k, v, layout, window_left=200, logits_soft_cap=8.0,
                                           return_lse=True, backend=backend)
    kn, vn = (k, v) if layout == "NHD" else (k.transpose(0, 1), v.transpose(0, 1))
    ref_o, ref_lse = ref_single(q[None], kn, vn, window_left=200, logits_soft_cap=8.0)
    check_attn(o, lse, ref_o[0], ref_lse[0], dtype)
    assert A.single_decode_with_kv_cache(q, k, v, layout, backend=backend).shape == (8, 64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_equals_loop_of_single(backend):
    case = Case((3, 150, 0, 64), 4, 2, 64, 16, "NHD", soft_cap=3.0)
    dtype = torch.bfloat16
    (out, lse), (q, cache, indptr, indices, last) = _run_batch(case, dtype, backend, seed=5)
    from flashkit.ops.attention.reference import naive_gather_paged_kv

    kv = naive_gather_paged_kv(cache, indptr.cpu(), indices.cpu(), last.cpu(), "NHD")
    for i, (k, v) in enumerate(kv):
        o_i, lse_i = A.single_decode_with_kv_cache(q[i], k, v, logits_soft_cap=3.0,
                                                   return_lse=True, backend=backend)
        torch.testing.assert_close(out[i], o_i, atol=1e-2, rtol=0)  # split points differ
        torch.testing.assert_close(lse[i], lse_i, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_replan_reuses_wrapper(backend):
    """plan() twice on one wrapper: the second plan's lengths are the ones used."""
    dtype = torch.float16
    (out, _), _ = _run_batch(CASES[0], dtype, backend, seed=1)
    case = Case((17, 64), 4, 4, 64, 16, "NHD")
    (out, lse), inputs = _run_batch(case, dtype, backend, seed=2)
    check_attn(out, lse, *_ref(case, *inputs), dtype)


def test_run_before_plan():
    w = A.BatchDecodeWithPagedKVCacheWrapper(torch.empty(1024, dtype=torch.uint8))
    with pytest.raises(RuntimeError, match="before plan"):
        w.run(torch.randn(1, 4, 64, dtype=torch.float16), torch.randn(2, 2, 16, 4, 64))


@pytest.mark.parametrize("graph", [False, True], ids=["eager-plan", "cuda-graph-plan"])
def test_torch_compile_fullgraph(graph):
    """run() traces as one custom op (fake implementation) under torch.compile, also with a
    use_cuda_graph plan (its device-side item count is one more tensor argument)."""
    case = CASES[0]
    dtype = torch.float16
    cache, indptr, indices, last = make_paged(case.kv_lens, 16, 4, 64, dtype, "NHD", 4)
    q = torch.randn(4, 4, 64).to(dtype)
    bufs = {}
    if graph:
        i32 = dict(dtype=torch.int32)
        bufs = dict(paged_kv_indptr_buffer=torch.zeros(q.shape[0] + 1, **i32),
                    paged_kv_indices_buffer=torch.zeros(indices.numel(), **i32),
                    paged_kv_last_page_len_buffer=torch.zeros(q.shape[0], **i32))
    w = A.BatchDecodeWithPagedKVCacheWrapper(torch.empty(1 << 20, dtype=torch.uint8), "NHD",
                                             graph, backend="triton", **bufs)
    w.plan(indptr, indices, last, 4, 4, 64, 16, q_data_type=dtype)

    def f(q, cache):
        out, lse = w.run(q, cache, return_lse=True)
        return out * 2, lse

    got = torch.compile(f, fullgraph=True, backend="aot_eager")(q, cache)
    want = f(q, cache)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])


def _planned(**over):
    cache, indptr, indices, last = make_paged((20, 40), 16, 2, 64, torch.float16, "NHD", 9)
    args = dict(indptr=indptr, indices=indices, last_page_len=last, num_qo_heads=4,
                num_kv_heads=2, head_dim=64, page_size=16)
    args.update(over)
    return args, cache


PLAN_BAD = [
    ("indptr", dict(indptr=torch.tensor([0, 3, 2], dtype=torch.int32)), "indptr must be non-decreasing"),
    ("indptr", dict(indptr=torch.tensor([0, 2, 5], dtype=torch.int64)), "indptr must be int32"),
    ("indptr", dict(indptr=torch.tensor([1, 2, 4], dtype=torch.int32)), "indptr must start at 0"),
    ("indptr", dict(indptr=torch.tensor([0, 2, 99], dtype=torch.int32)), "indptr\\[-1\\]"),
    ("indices", dict(indices=torch.tensor([0, -1, 2, 3, 4], dtype=torch.int32)), "indices must be non-negative"),
    ("last_page_len", dict(last_page_len=torch.tensor([4, 17], dtype=torch.int32)), "last_page_len\\[1\\] must be in \\[1, page_size=16\\]"),
    ("last_page_len", dict(last_page_len=torch.tensor([0, 8], dtype=torch.int32)), "last_page_len\\[0\\]"),
    ("last_page_len", dict(last_page_len=torch.tensor([4], dtype=torch.int32)), "last_page_len must have batch"),
    ("num_kv_heads", dict(num_kv_heads=3), "num_kv_heads \\(3\\) must divide num_qo_heads"),
    ("head_dim", dict(head_dim=0), "head_dim must be in"),
    ("page_size", dict(page_size=0), "page_size must be in"),
    ("window_left", dict(window_left=-2), "window_left must be in"),
    ("logits_soft_cap", dict(logits_soft_cap=-1.0), "logits_soft_cap must be"),
    ("sm_scale", dict(sm_scale=float("nan")), "sm_scale must be"),
    ("q_data_type", dict(q_data_type=torch.float32), "q_data_type must be"),
    ("pos_encoding_mode", dict(pos_encoding_mode="ROPE_LLAMA"), "pos_encoding_mode must be"),
]


@pytest.mark.parametrize("arg,over,match", PLAN_BAD, ids=[f"{a}-{i}" for i, (a, _, _) in enumerate(PLAN_BAD)])
def test_plan_bad_inputs(arg, over, match):
    args, _ = _planned(**over)
    w = A.BatchDecodeWithPagedKVCacheWrapper(torch.empty(1 << 20, dtype=torch.uint8))
    with pytest.raises(ValueError, match=match):
        w.plan(**args)


def test_plan_workspace_too_small():
    args, _ = _planned()
    w = A.BatchDecodeWithPagedKVCacheWrapper(torch.empty(16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="float_workspace_buffer holds 16 bytes"):
        w.plan(**args)


RUN_BAD = [
    ("q", lambda q, c: (q.float(), c), "q must be float16"),
    ("q", lambda q, c: (q[:1], c), "q must have shape"),
    ("q", lambda q, c: (q.transpose(1, 2).contiguous().transpose(1, 2), c), "q must have a contiguous last"),
    ("paged_kv_cache", lambda q, c: (q, c.bfloat16()), "paged_kv_cache must be torch.float16 on cpu \\(as planned\\)"),
    ("paged_kv_cache", lambda q, c: (q, c[:, :1]), "paged_kv_cache must be \\[max_pages, 2"),
    ("paged_kv_cache", lambda q, c: (q, c[:2]), "indices reach page"),
    ("paged_kv_cache", lambda q, c: (q, c[..., :32]), "paged_kv_cache must hold pages"),
    ("paged_kv_cache", lambda q, c: (q, (c[:, 0], c[:, 1, :, :1])), "paged_kv_cache\\[1\\] must have shape"),
    ("paged_kv_cache", lambda q, c: (q, c.float()), "paged_kv_cache must be float16/bfloat16"),
]


@pytest.mark.parametrize("arg,make,match", RUN_BAD, ids=[f"{a}-{i}" for i, (a, _, _) in enumerate(RUN_BAD)])
def test_run_bad_inputs(arg, make, match):
    args, cache = _planned()
    w = A.BatchDecodeWithPagedKVCacheWrapper(torch.empty(1 << 20, dtype=torch.uint8))
    w.plan(**args)
    q, c = make(torch.randn(2, 4, 64, dtype=torch.float16), cache)
    with pytest.raises(ValueError, match=match):
        w.run(q, c)


def test_run_bad_outputs():
    args, cache = _planned()
    w = A.BatchDecodeWithPagedKVCacheWrapper(torch.empty(1 << 20, dtype=torch.uint8))
    w.plan(**args)
    q = torch.randn(2, 4, 64, dtype=torch.float16)
    with pytest.raises(ValueError, match="out must have shape"):
        w.run(q, cache, out=torch.empty(2, 4, 32, dtype=torch.float16))
    with pytest.raises(ValueError, match="lse must be float32"):
        w.run(q, cache, lse=torch.empty(2, 4, dtype=torch.float16))


SINGLE_BAD = [
    ("q", lambda q, k, v: (q[None], k, v), "q must be 2-D"),
    ("k", lambda q, k, v: (q, k.bfloat16(), v), "k must be float16"),
    ("v", lambda q, k, v: (q, k, v[:5]), "v must have k's shape"),
    ("k", lambda q, k, v: (q, k[..., :32], v[..., :32]), "k must have head_dim 64"),
    ("k", lambda q, k, v: (q, k[:, :3], v[:, :3]), "num_kv_heads \\(3\\) must divide"),
]


@pytest.mark.parametrize("arg,make,match", SINGLE_BAD, ids=[f"{a}-{i}" for i, (a, _, _) in enumerate(SINGLE_BAD)])
def test_single_decode_bad_inputs(arg, make, match):
    q, k, v = torch.randn(4, 64).half(), torch.randn(10, 2, 64).half(), torch.randn(10, 2, 64).half()
    if arg == "k" and "divide" in match:
        k, v = torch.randn(10, 4, 64).half(), torch.randn(10, 4, 64).half()
    with pytest.raises(ValueError, match=match):
        A.single_decode_with_kv_cache(*make(q, k, v))
    with pytest.raises(ValueError, match="kv_layout must be"):
        A.single_decode_with_kv_cache(q, k, v, kv_layout="NDH")
    with pytest.raises(ValueError, match="backend must be one of"):
        A.single_decode_with_kv_cache(q, k, v, backend="cuda_graph")
