"""CUDA (NVRTC) paged split-KV decode (ops/attention/decode_cuda.py).

Without a GPU: every shipped specialization compiles for sm_80 and sm_90 and its cubin holds the
entry point; the SASS moves K/V with 16-byte cp.async (LDGSTS.128), reads q and the shared
tiles in 16 bytes, writes the partial outputs in 16 bytes and uses no local memory; the launch
geometry and the backend selection (``auto`` keeps Triton) are checked. On a GPU (``-m gpu``):
backend="cuda" against the float32 reference over the decode feature set (GQA groups that fill,
split and under-fill a CTA, page sizes 1/5/16/64, NHD/HND, tuple caches, windows, soft cap,
sm_scale, empty and long requests, poisoned workspace and outputs), and against Triton.
"""
import json
import re
import zlib
from pathlib import Path

import pytest
import torch

import flashkit.ops.attention as A
from flashkit import jit
from flashkit.ops.attention import checks as attn_checks
from flashkit.ops.attention import decode_cuda as dc
from tests.helpers import poison

from .attn_common import check_attn, dt_id, make_paged, ref_paged, ref_single
from .test_merge_state_cuda import _run_cuobjdump

ARCHS = ("sm_80", "sm_90")
DTYPES = (torch.float16, torch.bfloat16)
ENTRY = "batch_decode_kernel"


def _cubin(spec: jit.KernelSpec) -> Path:
    result = jit.build(spec)
    manifest = json.loads((result.path / "manifest.json").read_text())
    return result.path / manifest["artifact"]


# --- compile only (no GPU needed) -----------------------------------------------------------

SHIPPED = [spec for arch in ARCHS for spec in dc.shipped_cuda_specs(arch)]


def test_shipped_specs_cover_dtypes_head_dims_layouts():
    names = {spec.name for spec in dc.shipped_cuda_specs("sm_90")}
    assert names == {f"decode_cuda_{d}_hd{hd}_{lay}_sm90" for d in ("f16", "bf16")
                     for hd in (64, 128, 256) for lay in ("nhd", "hnd")}
    shipped = {s.name for s in A._shipped_specs("sm_80")}
    assert {s.name for s in dc.shipped_cuda_specs("sm_80")} <= shipped


@pytest.mark.parametrize("spec", SHIPPED, ids=lambda spec: spec.name)
def test_shipped_spec_compiles(spec):
    data = _cubin(spec).read_bytes()
    assert data[:4] == b"\x7fELF", f"{spec.name}: not a cubin"
    assert ENTRY.encode() + b"\x00" in data, f"{spec.name}: no {ENTRY} in the cubin"


def test_spec_rejects_unsupported():
    with pytest.raises(ValueError, match="head_dim must be one of"):
        dc.decode_cuda_spec(torch.float16, 96, "NHD", "sm_90")
    with pytest.raises(ValueError, match="dtype must be"):
        dc.decode_cuda_spec(torch.float32, 128, "NHD", "sm_90")
    with pytest.raises(ValueError, match="kv_layout"):
        dc.decode_cuda_spec(torch.float16, 128, "HDN", "sm_90")


def _count(body: str, op: str) -> int:
    return len(re.findall(rf"\b{re.escape(op)}\b", body))


SASS_CASES = [(d, hd, lay, arch) for arch in ARCHS for d in DTYPES for hd in (64, 128, 256)
              for lay in ("NHD", "HND")]


@pytest.mark.parametrize("dtype,head_dim,layout,arch", SASS_CASES,
                         ids=[f"{dt_id(d)}_hd{hd}_{lay.lower()}_{a}" for d, hd, lay, a in SASS_CASES])
def test_sass_vector_cp_async_no_local_memory(dtype, head_dim, layout, arch):
    cubin = str(_cubin(dc.decode_cuda_spec(dtype, head_dim, layout, arch)))
    usage = _run_cuobjdump("-res-usage", cubin)
    line = usage.split(f"Function {ENTRY}:")[1].splitlines()[1]
    assert "STACK:0 " in line and "LOCAL:0 " in line, f"spills: {line.strip()}"
    regs = int(re.search(r"REG:(\d+)", line).group(1))
    shared = int(re.search(r"SHARED:(\d+)", line).group(1))
    threads = dc.decode_geometry(head_dim, 1)["threads"]
    assert regs * threads <= 65536 // 2, f"{regs} registers x {threads} threads: < 2 CTAs per SM"
    assert 32 * 1024 <= shared <= 48 * 1024, f"static shared memory {shared} (2 stages of 16 KB)"
    sass = _run_cuobjdump("-sass", cubin)
    body = sass.split(f"Function : {ENTRY}")[1]
    assert "LDL" not in body and "STL" not in body, "local memory traffic"
    # K and V: 16-byte cp.async only, no plain global loads of K/V.
    assert _count(body, "LDGSTS.E.BYPASS.128") >= 2, "K/V are not copied with 16-byte cp.async"
    assert not re.search(r"LDGSTS\.E(\.BYPASS)?(\.(32|64))?\s", body), "narrow cp.async"
    assert "LDGDEPBAR" in body and "DEPBAR" in body, "cp.async groups are not committed/waited"
    # q in one 16-byte load per lane; tiles read from shared memory in 16 bytes; the float32
    # partial output written in 16 bytes.
    assert re.search(r"LDG\.E\.128", body), "q is not loaded in 16 bytes"
    assert "LDS.128" in body, "shared tiles are not read in 16 bytes"
    assert "STG.E.128" in body, "the partial output is not written in 16 bytes"
    assert "SHFL.BFLY" in body, "no butterfly reduction of q.k"


def _geo(hd, g):
    geo = dc.decode_geometry(hd, g)
    return geo["threads"], geo["rows"], geo["heads_per_cta"], geo["head_blocks"]


def test_geometry_maps_groups_onto_rows():
    assert _geo(128, 1) == (128, 8, 1, 1)  # MHA: 8 token slices of one head
    assert _geo(128, 4) == (128, 8, 4, 1)
    assert _geo(128, 3) == (128, 8, 4, 1)  # one row pair idle
    assert _geo(128, 8) == (128, 8, 8, 1)
    assert _geo(128, 16) == (128, 8, 8, 2)  # two CTAs per KV head
    assert _geo(64, 16) == (128, 16, 16, 1)
    assert _geo(64, 5) == (128, 16, 8, 1)
    assert _geo(256, 8) == (256, 8, 8, 1)
    assert _geo(256, 12) == (256, 8, 8, 2)


def test_auto_keeps_triton_cuda_is_decode_only():
    cuda = torch.device("cuda")
    assert attn_checks.attn_backend("auto", cuda) == "triton"
    assert attn_checks.attn_backend("auto", cuda, decode=True) == "triton"
    with pytest.raises(ValueError, match="decode only"):
        attn_checks.attn_backend("cuda", cuda)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        attn_checks.attn_backend("cuda", torch.device("cpu"), decode=True)


def test_cuda_refuses_what_it_cannot_run():
    from flashkit.ops.attention.decode import check_cuda_plan
    from flashkit.ops.attention.variants import AttentionVariant

    with pytest.raises(ValueError, match="head_dim"):
        check_cuda_plan(96, None)
    var = AttentionVariant("neg", triton="logits = -logits", params=(),
                           torch_fn=lambda lg, keep, qp, kp, h: (-lg, keep))
    with pytest.raises(ValueError, match="no custom variants"):
        check_cuda_plan(128, var)
    check_cuda_plan(128, None)
    with pytest.raises(ValueError, match="decode only"):
        A.single_prefill_with_kv_cache(torch.randn(2, 4, 64).half(), torch.randn(5, 4, 64).half(),
                                       torch.randn(5, 4, 64).half(), backend="cuda")


def test_alignment_check():
    q = torch.empty(2, 4, 128, dtype=torch.float16)
    k = torch.empty(3, 16, 2, 128, dtype=torch.float16)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        dc.check_cuda_decode(q, k, k)
    assert dc._aligned(k) and dc._aligned(k.transpose(1, 2))
    assert not dc._aligned(torch.empty(3, 16, 2, 132, dtype=torch.float16)[..., 2:130])
    assert not dc._aligned(torch.empty(3, 16, 2, 129, dtype=torch.float16)[..., :128])


# --- on a GPU -------------------------------------------------------------------------------

# (kv_lens, Hq, Hk, head_dim, page_size, layout, as_tuple, window_left, soft_cap, sm_scale)
GPU_CASES = [
    ((0, 37, 300, 1), 4, 4, 64, 16, "NHD", False, -1, None, None),  # MHA: token slices
    ((5, 0, 70), 8, 2, 128, 1, "HND", False, -1, None, None),  # page 1
    ((200, 3), 8, 1, 64, 16, "HND", True, 50, 5.0, None),  # MQA, window + cap
    ((40, 90), 4, 1, 256, 16, "NHD", False, -1, None, 0.3),
    ((129, 0), 2, 2, 64, 1, "NHD", True, 0, 1.0, None),  # window 0: one key
    ((1000, 17, 333), 32, 8, 128, 16, "NHD", False, -1, None, None),  # Llama-style GQA 4
    ((513, 64), 32, 2, 128, 5, "HND", False, 100, None, None),  # group 16: 2 CTAs/head, odd page
    ((77, 300), 12, 4, 128, 64, "NHD", True, -1, 30.0, None),  # group 3
    ((2048, 1), 16, 2, 256, 16, "HND", False, -1, None, None),  # hd256 group 8
    ((4097,), 8, 8, 128, 32, "HND", True, 4000, None, 0.05),
]


def _case_id(c):
    lens, hq, hk, hd, ps, lay, tup, win, cap, scale = c
    parts = [f"hd{hd}", f"g{hq // hk}", f"hk{hk}", f"ps{ps}", lay.lower(),
             "lens" + "-".join(map(str, lens))]
    if tup:
        parts.append("tuple")
    if win >= 0:
        parts.append(f"win{win}")
    if cap:
        parts.append(f"cap{cap:g}")
    if scale:
        parts.append(f"scale{scale:g}")
    return "_".join(parts)


def _run(case, dtype, backend, seed, num_workers=4, min_chunk_tokens=32):
    lens, hq, hk, hd, ps, lay, tup, win, cap, scale = case
    cache, indptr, indices, last = make_paged(lens, ps, hk, hd, dtype, lay, seed, tup)
    g = torch.Generator().manual_seed(seed + 1)
    q = torch.randn(len(lens), hq, hd, generator=g).to(dtype).cuda()
    ws = poison(torch.empty(64 << 20, dtype=torch.uint8, device="cuda").view(torch.float32))
    w = A.BatchDecodeWithPagedKVCacheWrapper(ws.view(torch.uint8), lay, backend=backend)
    w.plan(indptr, indices, last, hq, hk, hd, ps, window_left=win, logits_soft_cap=cap,
           q_data_type=dtype, sm_scale=scale, num_workers=num_workers,
           min_chunk_tokens=min_chunk_tokens)
    out = poison(torch.empty(len(lens), hq, hd, dtype=dtype, device="cuda"))
    lse = poison(torch.empty(len(lens), hq, device="cuda"))
    w.run(q, cache, out=out, lse=lse)
    qo = torch.arange(len(lens) + 1, dtype=torch.int32)
    ref = ref_paged(q, qo, cache, indptr, indices, last, lay, window_left=win,
                    logits_soft_cap=cap, sm_scale=scale)
    return out, lse, ref


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=dt_id)
@pytest.mark.parametrize("case", GPU_CASES, ids=_case_id)
def test_batch_decode_cuda_matches_reference(case, dtype):
    seed = zlib.crc32(_case_id(case).encode()) % 1000
    out, lse, (ref_out, ref_lse) = _run(case, dtype, "cuda", seed)
    check_attn(out, lse, ref_out, ref_lse, dtype)
    empty = torch.tensor(case[0]) == 0
    assert (out[empty.cuda()] == 0).all() and torch.isneginf(lse[empty.cuda()]).all()


@pytest.mark.gpu
@pytest.mark.parametrize("workers,min_chunk", [(1, 1 << 20), (132, 16)], ids=["no_split", "many"])
def test_split_granularity(workers, min_chunk):
    """One item per request (no merge needed) and many short chunks (tiles cut mid-page)."""
    case = GPU_CASES[6]
    out, lse, (ref_out, ref_lse) = _run(case, torch.bfloat16, "cuda", 7, workers, min_chunk)
    check_attn(out, lse, ref_out, ref_lse, torch.bfloat16)


@pytest.mark.gpu
def test_cuda_agrees_with_triton():
    case = GPU_CASES[5]
    out_c, lse_c, _ = _run(case, torch.float16, "cuda", 3)
    out_t, lse_t, _ = _run(case, torch.float16, "triton", 3)
    torch.testing.assert_close(out_c, out_t, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(lse_c, lse_t, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dt_id)
def test_single_decode_cuda(dtype, layout):
    g = torch.Generator().manual_seed(11)
    q = torch.randn(16, 128, generator=g).to(dtype).cuda()
    k, v = (torch.randn(4, 1500, 128, generator=g).to(dtype).cuda() for _ in range(2))
    if layout == "NHD":
        k, v = k.transpose(0, 1), v.transpose(0, 1)  # strided NHD views
    o, lse = A.single_decode_with_kv_cache(q, k, v, layout, window_left=900, logits_soft_cap=8.0,
                                           return_lse=True, backend="cuda")
    kn, vn = (k, v) if layout == "NHD" else (k.transpose(0, 1), v.transpose(0, 1))
    ref_o, ref_lse = ref_single(q[None], kn, vn, window_left=900, logits_soft_cap=8.0)
    check_attn(o, lse, ref_o[0], ref_lse[0], dtype)


@pytest.mark.gpu
def test_misaligned_kv_is_refused_before_launch():
    q = torch.randn(8, 128, device="cuda", dtype=torch.float16)
    k = torch.randn(100, 2, 136, device="cuda", dtype=torch.float16)[..., 4:132]
    with pytest.raises(ValueError, match="16-byte"):
        A.single_decode_with_kv_cache(q, k, k, backend="cuda")


@pytest.mark.gpu
def test_launches_on_the_current_stream():
    case = GPU_CASES[5]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out, lse, ref = _run(case, torch.bfloat16, "cuda", 9)
    stream.synchronize()
    check_attn(out, lse, *ref, torch.bfloat16)
