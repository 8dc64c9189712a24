"""merge_state / merge_state_in_place / merge_states against the float64 reference."""
import pytest
import torch

import flashkit
from flashkit.ops.attention import naive_merge_state, naive_merge_states
from tests.helpers import DTYPES, TOL, device, kernel_backends, poison

# Awkward sizes: a head_dim that is not a power of two, one token, heads not a multiple of a block.
SHAPES = [(1, 1, 64), (7, 5, 128), (33, 3, 80), (4, 12, 256)]
NUM_STATES = [1, 2, 7]


def _states(seq, n, heads, dim, dtype, seed, empty_frac=0.15):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(seq, n, heads, dim, generator=g).to(dtype)
    s = torch.randn(seq, n, heads, generator=g) * 4
    s[torch.rand(seq, n, heads, generator=g) < empty_frac] = float("-inf")
    s[0, :, 0] = float("-inf")  # one row with only empty states
    return v.to(device()), s.to(device())


def _check(v, s, ref_v, ref_s, dtype):
    torch.testing.assert_close(v.double().cpu(), ref_v.cpu(), **TOL[dtype])
    assert torch.equal(torch.isneginf(s).cpu(), torch.isneginf(ref_s).cpu())
    finite = ~torch.isneginf(ref_s)
    torch.testing.assert_close(s.double()[finite].cpu(), ref_s[finite].cpu(), atol=1e-5, rtol=1e-5)


def _ids(shape):
    return "seq{}_h{}_d{}".format(*shape)


@pytest.mark.parametrize("backend", kernel_backends())
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("n", NUM_STATES, ids=lambda n: f"n{n}")
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_merge_states(shape, n, dtype, backend):
    seq, heads, dim = shape
    v, s = _states(seq, n, heads, dim, dtype, seed=hash((shape, n, str(dtype))) % 2**31)
    out_v, out_s = flashkit.merge_states(v, s, backend=backend)
    ref_v, ref_s = naive_merge_states(v.double(), s.double())
    assert out_v.dtype == dtype and out_s.dtype == torch.float32
    _check(out_v, out_s, ref_v, ref_s, dtype)


@pytest.mark.parametrize("backend", kernel_backends())
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_merge_state(shape, dtype, backend):
    seq, heads, dim = shape
    v, s = _states(seq, 2, heads, dim, dtype, seed=hash((shape, str(dtype))) % 2**31)
    out_v, out_s = flashkit.merge_state(v[:, 0], s[:, 0], v[:, 1], s[:, 1], backend=backend)
    ref_v, ref_s = naive_merge_states(v.double(), s.double())
    _check(out_v, out_s, ref_v, ref_s, dtype)


@pytest.mark.parametrize("backend", kernel_backends())
@pytest.mark.parametrize("use_mask", [False, True], ids=["all", "masked"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_merge_state_in_place(dtype, use_mask, backend):
    seq, heads, dim = 9, 5, 128
    v, s = _states(seq, 2, heads, dim, dtype, seed=7 + use_mask)
    mine_v, mine_s = v[:, 0].clone(), s[:, 0].clone()
    mask = (torch.arange(seq) % 3 != 1).to(device()) if use_mask else None
    flashkit.merge_state_in_place(mine_v, mine_s, v[:, 1], s[:, 1], mask, backend=backend)
    ref_v, ref_s = naive_merge_states(v.double(), s.double())
    keep = mask if use_mask else torch.ones(seq, dtype=torch.bool, device=device())
    _check(mine_v[keep], mine_s[keep], ref_v[keep.cpu()], ref_s[keep.cpu()], dtype)
    assert torch.equal(mine_v[~keep], v[~keep, 0]) and torch.equal(mine_s[~keep], s[~keep, 0])


@pytest.mark.parametrize("backend", kernel_backends())
def test_non_contiguous_views(backend):
    """Slices of bigger tensors (strided seq/head/state dims) give the same result."""
    dtype = torch.bfloat16
    big_v, big_s = _states(12, 6, 8, 96, dtype, seed=11)
    v, s = big_v[::2, 1:5, ::2], big_s[::2, 1:5, ::2]  # [6, 4, 4, 96], strided everywhere
    assert not v.is_contiguous()
    out_v, out_s = flashkit.merge_states(v, s, backend=backend)
    ref_v, ref_s = naive_merge_states(v.double(), s.double())
    _check(out_v, out_s, ref_v, ref_s, dtype)
    a_v, a_s = flashkit.merge_state(v[:, 0], s[:, 0], v[:, 3], s[:, 3], backend=backend)
    ref_v, ref_s = naive_merge_state(v[:, 0].double(), s[:, 0].double(), v[:, 3].double(),
                                     s[:, 3].double())
    _check(a_v, a_s, ref_v, ref_s, dtype)


@pytest.mark.parametrize("backend", [b for b in kernel_backends() if b != "torch"])
def test_every_output_written(backend, monkeypatch):
    """Outputs are allocated uninitialized; poisoning them shows that every element is written."""
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **k: poison(real_empty(*a, **k)))
    v, s = _states(5, 3, 7, 64, torch.float16, seed=3, empty_frac=0.0)
    out_v, out_s = flashkit.merge_states(v, s, backend=backend)
    assert not out_v.isnan().any() and not out_s.isnan().any()
    out_v, out_s = flashkit.merge_state(v[:, 0], s[:, 0], v[:, 1], s[:, 1], backend=backend)
    assert not out_v.isnan().any() and not out_s.isnan().any()


def test_merging_is_attention_over_the_union():
    """Two halves of the keys, merged, equal softmax attention over all keys (base-2 LSE)."""
    g = torch.Generator().manual_seed(5)
    q, k, val = (torch.randn(3, 16, 32, generator=g, dtype=torch.float64) for _ in range(3))

    def attend(kk, vv):
        logits = torch.einsum("hd,hkd->hk", q[:, 0], kk) * 0.5
        lse2 = torch.logsumexp(logits, -1) / torch.log(torch.tensor(2.0, dtype=torch.float64))
        return torch.einsum("hk,hkd->hd", logits.softmax(-1), vv)[None], lse2[None]

    full_v, full_s = attend(k, val)
    a_v, a_s = attend(k[:, :5], val[:, :5])
    b_v, b_s = attend(k[:, 5:], val[:, 5:])
    out_v, out_s = naive_merge_state(a_v, a_s, b_v, b_s)
    torch.testing.assert_close(out_v, full_v)
    torch.testing.assert_close(out_s, full_s)


def test_zero_states_and_zero_tokens():
    v = torch.randn(4, 0, 2, 64)
    out_v, out_s = flashkit.merge_states(v, torch.randn(4, 0, 2), backend="torch")
    assert torch.equal(out_v, torch.zeros(4, 2, 64)) and torch.isneginf(out_s).all()
    out_v, out_s = flashkit.merge_states(torch.randn(0, 3, 2, 64), torch.randn(0, 3, 2))
    assert out_v.shape == (0, 2, 64) and out_s.shape == (0, 2)


def test_torch_compile_fullgraph():
    """The ops trace as single custom ops (fake implementations) under torch.compile."""
    v, s = _states(6, 3, 4, 64, torch.float32, seed=2)

    def f(v, s):
        out_v, out_s = flashkit.merge_states(v, s)
        x, y = out_v.clone(), out_s.clone()
        flashkit.merge_state_in_place(x, y, v[:, 0], s[:, 0])
        return flashkit.merge_state(x, y, v[:, 1], s[:, 1])

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(v, s), f(v, s)):
        torch.testing.assert_close(got, want)


BAD = [
    ("v", lambda v, s: (v.int(), s), "v must be float16/bfloat16/float32"),
    ("v", lambda v, s: (v[0], s), "v must be 4-D"),
    ("v", lambda v, s: (v.transpose(-1, -2).contiguous().transpose(-1, -2), s),
     "v must have a contiguous last dimension"),
    ("s", lambda v, s: (v, s.double()), "s must be float32"),
    ("s", lambda v, s: (v, s[:, :2]), "s must have shape"),
    ("s", lambda v, s: (v, s.to("meta")), "s must be on"),
    ("v", lambda v, s: ([v], s), "v must be a torch.Tensor"),
]


@pytest.mark.parametrize("name,make,msg", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_merge_states_bad_inputs(name, make, msg):
    v, s = torch.randn(3, 3, 2, 64), torch.randn(3, 3, 2)
    with pytest.raises(ValueError, match=msg):
        flashkit.merge_states(*make(v, s))


def test_merge_state_bad_inputs():
    v, s = torch.randn(3, 2, 64), torch.randn(3, 2)
    with pytest.raises(ValueError, match="v_b must have shape"):
        flashkit.merge_state(v, s, v[:2], s[:2])
    with pytest.raises(ValueError, match="v_b must have the dtype"):
        flashkit.merge_state(v, s, v.half(), s)
    with pytest.raises(ValueError, match="s_a must have shape"):
        flashkit.merge_state(v, s[:, :1], v, s)
    with pytest.raises(ValueError, match="mask must be bool"):
        flashkit.merge_state_in_place(v, s, v, s, mask=torch.ones(3))
    with pytest.raises(ValueError, match="mask must have shape"):
        flashkit.merge_state_in_place(v, s, v, s, mask=torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="backend must be one of"):
        flashkit.merge_state(v, s, v, s, backend="fast")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="backend='cuda' needs CUDA tensors"):
            flashkit.merge_state(v, s, v, s, backend="cuda")


@pytest.mark.parametrize("backend", kernel_backends())
def test_registered_ops_pass_opcheck(backend):
    """torch.library.opcheck: schema, fake implementations and dispatch agree with the kernels."""
    v, s = _states(5, 3, 4, 64, torch.float32, seed=4)
    ops = torch.ops.flashkit
    torch.library.opcheck(ops.merge_states.default, (v, s, backend))
    torch.library.opcheck(ops.merge_state.default, (v[:, 0], s[:, 0], v[:, 1], s[:, 1], backend))
    torch.library.opcheck(ops.merge_state_in_place.default,
                          (v[:, 0].clone(), s[:, 0].clone(), v[:, 1], s[:, 1], None, backend))
