"""selective_state_update (both layouts) against one step of the float64 reference."""
import pytest
import torch

from flashkit.ops.ssm import naive_selective_state_update, selective_state_update
from tests.helpers import device

from .common import BACKENDS, STATE_TOL, check, gen, rand, randn

NSLOTS = 7


def make(seed, layout, batch, dtype=torch.float32, features=True, heads=4, headdim=16,
         dstate=16, ngroups=2, dim=40, per_dim_d=False):
    g = gen(seed)
    if layout == "mamba2":
        kw = dict(state=randn(g, NSLOTS, heads, headdim, dstate),
                  x=randn(g, batch, heads, headdim, dtype=dtype),
                  dt=randn(g, batch, heads, scale=0.5) - 1.0 if features
                  else rand(g, batch, heads, lo=0.01, hi=0.3),
                  A=-rand(g, heads, lo=0.5, hi=2.0),
                  B=randn(g, batch, ngroups, dstate, dtype=dtype),
                  C=randn(g, batch, ngroups, dstate, dtype=dtype))
        per_head, xshape = ((heads, headdim) if per_dim_d else (heads,)), (batch, heads, headdim)
        bias_shape = (heads,)
    else:
        kw = dict(state=randn(g, NSLOTS, dim, dstate), x=randn(g, batch, dim, dtype=dtype),
                  dt=randn(g, batch, dim, scale=0.5) - 1.0 if features
                  else rand(g, batch, dim, lo=0.01, hi=0.3),
                  A=-rand(g, dim, dstate, lo=0.5, hi=2.0),
                  B=randn(g, batch, dstate, dtype=dtype), C=randn(g, batch, dstate, dtype=dtype))
        per_head, xshape, bias_shape = (dim,), (batch, dim), (dim,)
    if features:
        kw.update(D=randn(g, *per_head), z=randn(g, *xshape, dtype=dtype),
                  dt_bias=randn(g, *bias_shape, scale=0.3), dt_softplus=True)
    return kw


def _run_and_check(kw, backend, dtype, slots=None):
    ref_y, ref_state = naive_selective_state_update(
        **{k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()},
        state_batch_indices=slots)
    state = kw["state"]
    y = selective_state_update(**kw, state_batch_indices=slots, backend=backend)
    assert y.dtype == kw["x"].dtype and y.shape == kw["x"].shape
    check(y, ref_y, dtype, what="y")
    check(state, ref_state, dtype, STATE_TOL, what="state")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("features", [True, False], ids=["feat", "plain"])
@pytest.mark.parametrize("layout", ["mamba2", "mamba1"])
def test_against_reference(layout, features, backend):
    kw = make(hash((layout, features)) % 2**31, layout, 5, features=features)
    _run_and_check(kw, backend, torch.float32)


@pytest.mark.parametrize("layout", ["mamba2", "mamba1"])
def test_slots_and_padding(layout):
    """Rows go to their own slots; -1 rows write zeros and leave every slot alone."""
    kw = make(7, layout, 4, per_dim_d=True)
    slots = torch.tensor([5, -1, 0, 3], device=device())
    before = kw["state"].clone()
    _run_and_check(kw, "triton", torch.float32, slots)
    untouched = [1, 2, 4, 6]
    assert torch.equal(kw["state"][untouched], before[untouched])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_16bit_inputs(dtype):
    kw = make(9, "mamba2", 3, dtype=dtype, ngroups=1, dstate=8, headdim=20)
    _run_and_check(kw, "triton", dtype)


def test_equals_scan_step():
    """Two decode steps equal the last two outputs of a scan over the whole sequence."""
    from flashkit.ops.ssm import naive_ssd_scan

    g = gen(13)
    L, heads, headdim, dstate = 6, 4, 16, 8
    x, z = randn(g, 1, L, heads, headdim), randn(g, 1, L, heads, headdim)
    dt, A = randn(g, 1, L, heads) - 1, -rand(g, heads, lo=0.5, hi=2.0)
    B, C = randn(g, 1, L, 2, dstate), randn(g, 1, L, 2, dstate)
    y, _, ckpt = naive_ssd_scan(x, dt, A, B, C, z=z, dt_softplus=True,
                                checkpoint_positions=[L - 2])
    state = ckpt[:, 0].contiguous()
    for t in (L - 2, L - 1):
        yt = selective_state_update(state, x[:, t], dt[:, t], A, B[:, t], C[:, t], z=z[:, t],
                                    dt_softplus=True, backend="triton")
        torch.testing.assert_close(yt, y[:, t], atol=1e-5, rtol=1e-5)


BAD = {
    "state": lambda kw: kw.update(state=kw["state"][0, 0]),
    "x": lambda kw: kw.update(x=kw["x"][:, :, :3]),
    "dt": lambda kw: kw.update(dt=kw["dt"][:, :1]),
    "A": lambda kw: kw.update(A=kw["A"][None]),
    "B": lambda kw: kw.update(B=kw["B"][:, :, :4]),
    "C": lambda kw: kw.update(C=kw["C"].half()),
    "D": lambda kw: kw.update(D=kw["D"][:2]),
    "z": lambda kw: kw.update(z=kw["z"][:1]),
    "dt_bias": lambda kw: kw.update(dt_bias=kw["dt_bias"][:1]),
    "state_batch_indices": lambda kw: kw.update(
        state_batch_indices=torch.tensor([0, 0, 1], device=device())),
    "backend": lambda kw: kw.update(backend="cuda"),
}


@pytest.mark.parametrize("arg", list(BAD))
def test_bad_inputs(arg):
    kw = make(1, "mamba2", 3)
    BAD[arg](kw)
    with pytest.raises(ValueError, match=arg):
        selective_state_update(**kw)


def test_bad_slot_range():
    kw = make(1, "mamba1", 3)
    with pytest.raises(ValueError, match="state_batch_indices"):
        selective_state_update(**kw, state_batch_indices=torch.tensor([0, 1, NSLOTS]))
