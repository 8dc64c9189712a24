"""CUDA (NVRTC) merge_state / merge_states.

Without a GPU: every shipped specialization (and narrow / odd ones) compiles for sm_80 and sm_90
and its cubin holds both entry points; the SASS of the main variant uses 16-byte accesses and no
local memory; the launcher's vector width follows alignment. On a GPU (``-m gpu``): both
launchers against a float64 reference written here, on random inputs with empty (-inf) states,
non-contiguous views, poisoned outputs, in-place aliasing and a mask.
"""
import json
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest
import torch

from flashkit import jit
from flashkit.ops.attention import merge_state_cuda as msc
from tests.helpers import DTYPES, TOL, poison

ARCHS = ("sm_80", "sm_90")
ENTRY_POINTS = ("merge_state_kernel", "merge_states_kernel")
SHORT = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def _cubin(spec: jit.KernelSpec) -> Path:
    result = jit.build(spec)
    manifest = json.loads((result.path / "manifest.json").read_text())
    return result.path / manifest["artifact"]


def _assert_entry_points(spec):
    data = _cubin(spec).read_bytes()
    assert data[:4] == b"\x7fELF", f"{spec.name}: not a cubin"
    for name in ENTRY_POINTS:
        # ELF symbol names are NUL-terminated in .strtab.
        assert name.encode() + b"\x00" in data, f"{spec.name}: no {name} in the cubin"


# --- compile only (no GPU needed) -----------------------------------------------------------

SHIPPED = [spec for arch in ARCHS for spec in msc.shipped_cuda_specs(arch)]


def test_shipped_specs_cover_dtypes_and_head_dims():
    names = {spec.name for spec in msc.shipped_cuda_specs("sm_90")}
    assert names == {f"merge_state_cuda_{d}_hd{hd}_v{16 // e}_sm90"
                     for d, e in (("f16", 2), ("bf16", 2), ("f32", 4)) for hd in (64, 128, 256)}


@pytest.mark.parametrize("spec", SHIPPED, ids=lambda spec: spec.name)
def test_shipped_spec_compiles(spec):
    _assert_entry_points(spec)


# Narrow vectors (what misaligned views get) and head dims that are not powers of two.
EXTRA = [(torch.bfloat16, 128, 1), (torch.float16, 64, 2), (torch.float32, 256, 1),
         (torch.float32, 128, 2), (torch.bfloat16, 80, 8), (torch.float16, 96, 4),
         (torch.float32, 80, 4), (torch.bfloat16, 72, 2)]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype,head_dim,vec", EXTRA,
                         ids=[f"{SHORT[d]}_hd{hd}_v{v}" for d, hd, v in EXTRA])
def test_narrow_and_odd_specs_compile(dtype, head_dim, vec, arch):
    _assert_entry_points(msc.merge_state_spec(dtype, head_dim, vec, arch))


def test_fresh_cache_compiles(isolated_cache):
    spec = msc.merge_state_spec(torch.bfloat16, 128, 8, "sm_90")
    assert jit.build(spec).compiled
    assert not jit.build(spec).compiled


@pytest.mark.parametrize("dtype,head_dim,vec", [(torch.float16, 128, 3), (torch.float16, 128, 16),
                                                (torch.float32, 128, 8), (torch.bfloat16, 36, 8),
                                                (torch.float32, 2048, 1)],
                         ids=["not_pow2", "over_16_bytes_fp16", "over_16_bytes_fp32",
                              "not_dividing", "row_over_1024_threads"])
def test_spec_rejects_bad_vec(dtype, head_dim, vec):
    with pytest.raises(ValueError, match="vec|head_dim"):
        msc.merge_state_spec(dtype, head_dim, vec, "sm_90")


def _cuobjdump() -> str | None:
    path = shutil.which("cuobjdump")
    if path:
        return path
    try:  # Triton's wheel ships one
        import triton.backends.nvidia as nv
    except ImportError:
        return None
    path = Path(nv.__file__).parent / "bin" / "cuobjdump"
    return str(path) if path.is_file() else None


def _run_cuobjdump(*args) -> str:
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump (CUDA toolkit or Triton's copy)")
    proc = subprocess.run([tool, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cuobjdump cannot read this cubin: {proc.stderr.strip()[:200]}")
    return proc.stdout


@pytest.mark.parametrize("dtype", DTYPES, ids=[SHORT[d] for d in DTYPES])
def test_sass_uses_16_byte_accesses_and_no_local_memory(dtype):
    cubin = str(_cubin(msc.merge_state_spec(dtype, 128, 16 // dtype.itemsize, "sm_90")))
    usage = _run_cuobjdump("-res-usage", cubin)
    for name in ENTRY_POINTS:
        line = usage.split(f"Function {name}:")[1].splitlines()[1]
        assert "STACK:0 " in line and "LOCAL:0 " in line, f"{name} spills: {line.strip()}"
    sass = _run_cuobjdump("-sass", cubin)
    for name in ENTRY_POINTS:
        body = sass.split(f"Function : {name}")[1].split("Function :")[0]
        assert "LDG.E.128" in body and "STG.E.128" in body, f"{name}: v is not moved in 16 bytes"


def test_vec_width_follows_alignment():
    def empty(*shape, dtype=torch.bfloat16):
        return torch.empty(*shape, dtype=dtype)

    assert msc._vec_width(128, [empty(4, 8, 128)]) == 8
    assert msc._vec_width(64, [empty(4, 8, 64, dtype=torch.float32)]) == 4
    assert msc._vec_width(80, [empty(4, 8, 80)]) == 8
    assert msc._vec_width(36, [empty(4, 8, 36)]) == 4
    assert msc._vec_width(128, [empty(4, 8, 132)[..., :128]]) == 4  # head stride 132
    assert msc._vec_width(128, [empty(4, 8, 130)[..., 2:]]) == 2  # base 4 bytes off
    assert msc._vec_width(128, [empty(4, 8, 129)[..., 1:]]) == 1  # base 2 bytes off
    assert msc._vec_width(128, [empty(4, 8, 128), empty(4, 8, 130)[..., 2:]]) == 2  # the narrowest
    # The stride of a dimension of size 1 is never used.
    assert msc._vec_width(128, [empty(1024).as_strided((1, 4, 128), (3, 128, 1))]) == 8


# --- on a GPU -------------------------------------------------------------------------------

def _seed(request):
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


def _ref_merge_states(v, s):
    """float64 oracle: v [seq, n, heads, dim], s [seq, n, heads] -> (v [seq, heads, dim], s)."""
    v, s = v.double(), s.double()
    seq, n, heads, dim = v.shape
    if n == 0:
        return v.new_zeros(seq, heads, dim), s.new_full((seq, heads), float("-inf"))
    s_max = s.amax(dim=1)
    empty = torch.isneginf(s_max)
    w = torch.exp2(s - torch.where(empty, 0.0, s_max)[:, None])
    total = w.sum(dim=1)
    out = (w[..., None] * v).sum(dim=1) / torch.where(empty, 1.0, total)[..., None]
    out = torch.where(empty[..., None], 0.0, out)
    lse = torch.where(empty, float("-inf"), s_max + torch.log2(torch.where(empty, 1.0, total)))
    return out, lse


def _lse(shape, *, strided: bool, p_empty: float = 0.2):
    """Random base-2 LSEs (spread of ~8 so weights differ by up to ~2^16), some -inf."""
    if strided:  # a transposed view: no dimension has stride 1
        s = torch.randn(*reversed(shape), device="cuda").permute(*reversed(range(len(shape))))
    else:
        s = torch.randn(*shape, device="cuda")
    s.mul_(4.0)
    s.masked_fill_(torch.rand(shape, device="cuda") < p_empty, float("-inf"))
    return s


def _values(shape, dtype, layout: str):
    """contig; heads: every other head of a bigger tensor (aligned, strided); offset: a slice one
    element into a wider last dimension (misaligned base and odd strides: vector width 1)."""
    *lead, heads, dim = shape
    if layout == "contig":
        return torch.randn(*shape, device="cuda").to(dtype)
    if layout == "heads":
        return torch.randn(*lead, 2 * heads, dim, device="cuda").to(dtype)[..., ::2, :]
    if layout == "offset":
        return torch.randn(*lead, heads, dim + 1, device="cuda").to(dtype)[..., 1:]
    raise ValueError(layout)


def _check(v_out, s_out, v_ref, s_ref, dtype):
    torch.testing.assert_close(v_out.double(), v_ref, **TOL[dtype])
    torch.testing.assert_close(s_out.double(), s_ref, **TOL[torch.float32])


# (seq, heads, dim): one row, a tail block, awkward sizes, rows spanning several warps.
SHAPES = [(1, 1, 64), (63, 5, 128), (17, 3, 256), (7, 4, 80), (5, 2, 96), (9, 2, 512)]
LAYOUTS = ("contig", "heads", "offset")


@pytest.mark.gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=[SHORT[d] for d in DTYPES])
def test_merge_state_matches_reference(request, dtype, shape, layout):
    _seed(request)
    seq, heads, dim = shape
    v_a, v_b = _values(shape, dtype, layout), _values(shape, dtype, layout)
    s_a, s_b = (_lse((seq, heads), strided=layout != "contig") for _ in range(2))
    s_a[0, 0] = s_b[0, 0] = float("-inf")  # at least one empty row
    v_ref, s_ref = _ref_merge_states(torch.stack([v_a, v_b], 1), torch.stack([s_a, s_b], 1))
    v_out = poison(_values(shape, dtype, layout))
    s_out = poison(_lse((seq, heads), strided=layout != "contig"))
    msc.merge_state_cuda(v_a, s_a, v_b, s_b, v_out, s_out)
    _check(v_out, s_out, v_ref, s_ref, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=[SHORT[d] for d in DTYPES])
def test_merge_state_in_place_with_mask(request, dtype, layout):
    """v_out is v_a, s_out is s_a. fp32 offset: vec 1, 256 threads (8 warps) per row, so a row's
    warps must all have read s_a before one of them writes it."""
    _seed(request)
    seq, heads, dim = 37, 3, 256
    v_a, v_b = _values((seq, heads, dim), dtype, layout), _values((seq, heads, dim), dtype, layout)
    s_a, s_b = (_lse((seq, heads), strided=layout != "contig") for _ in range(2))
    mask = torch.rand(seq, device="cuda") < 0.7
    v_ref, s_ref = _ref_merge_states(torch.stack([v_a, v_b], 1), torch.stack([s_a, s_b], 1))
    v_ref = torch.where(mask[:, None, None], v_ref, v_a.double())
    s_ref = torch.where(mask[:, None], s_ref, s_a.double())
    msc.merge_state_cuda(v_a, s_a, v_b, s_b, v_a, s_a, mask=mask)
    _check(v_a, s_a, v_ref, s_ref, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=[SHORT[d] for d in DTYPES])
def test_merge_state_mask_leaves_rows_untouched(request, dtype):
    _seed(request)
    seq, heads, dim = 29, 4, 128
    v_a, v_b = _values((seq, heads, dim), dtype, "contig"), _values((seq, heads, dim), dtype, "contig")
    s_a, s_b = _lse((seq, heads), strided=False), _lse((seq, heads), strided=False)
    mask = torch.rand(seq, device="cuda") < 0.5
    mask[0], mask[1] = True, False
    v_out, s_out = poison(torch.empty_like(v_a)), poison(torch.empty_like(s_a))
    msc.merge_state_cuda(v_a, s_a, v_b, s_b, v_out, s_out, mask=mask.to(torch.uint8))
    v_ref, s_ref = _ref_merge_states(torch.stack([v_a, v_b], 1), torch.stack([s_a, s_b], 1))
    _check(v_out[mask], s_out[mask], v_ref[mask], s_ref[mask], dtype)
    assert v_out[~mask].isnan().all() and s_out[~mask].isnan().all()


# (seq, num_states, heads, dim): no state, one, fewer than the unroll, a tail after it, many.
STATES_SHAPES = [(3, 0, 2, 64), (5, 1, 3, 128), (7, 3, 2, 128), (11, 7, 3, 256), (4, 33, 2, 80),
                 (2, 5, 2, 512)]


@pytest.mark.gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", STATES_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=[SHORT[d] for d in DTYPES])
def test_merge_states_matches_reference(request, dtype, shape, layout):
    _seed(request)
    seq, n, heads, dim = shape
    v = _values(shape, dtype, layout)
    s = _lse((seq, n, heads), strided=layout != "contig")
    if n:
        s[0] = float("-inf")  # every state of seq 0 empty
    v_ref, s_ref = _ref_merge_states(v, s)
    v_out = poison(_values((seq, heads, dim), dtype, layout))
    s_out = poison(_lse((seq, heads), strided=layout != "contig"))
    msc.merge_states_cuda(v, s, v_out, s_out)
    _check(v_out, s_out, v_ref, s_ref, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=[SHORT[d] for d in DTYPES])
def test_merge_states_in_place(request, dtype):
    """Outputs are state 0 of the inputs: each row is read whole before it is written."""
    _seed(request)
    seq, n, heads, dim = 13, 6, 3, 256
    v = _values((seq, n, heads, dim), dtype, "offset")
    s = _lse((seq, n, heads), strided=True)
    v_ref, s_ref = _ref_merge_states(v, s)
    msc.merge_states_cuda(v, s, v[:, 0], s[:, 0])
    _check(v[:, 0], s[:, 0], v_ref, s_ref, dtype)


@pytest.mark.gpu
def test_launches_on_the_current_stream(request):
    _seed(request)
    v = _values((64, 4, 8, 128), torch.bfloat16, "contig")
    s = _lse((64, 4, 8), strided=False)
    v_ref, s_ref = _ref_merge_states(v, s)
    stream = torch.cuda.Stream()
    v_out = poison(torch.empty(64, 8, 128, device="cuda", dtype=torch.bfloat16))
    s_out = poison(torch.empty(64, 8, device="cuda"))
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        msc.merge_states_cuda(v, s, v_out, s_out)
    stream.synchronize()
    _check(v_out, s_out, v_ref, s_ref, torch.bfloat16)
