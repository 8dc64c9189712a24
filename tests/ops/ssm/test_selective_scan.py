"""selective_scan (Mamba-1) against the float64 recurrence; checkpoints and resume."""
import pytest
import torch

from flashkit.ops.ssm import naive_selective_scan, selective_scan

from .common import BACKENDS, STATE_TOL, check, gen, rand, randn

DIM, DSTATE = 24, 8


def make(seed, batch, seqlen, ngroups=1, dtype=torch.float32, features=True):
    g = gen(seed)
    kw = dict(u=randn(g, batch, DIM, seqlen, dtype=dtype),
              delta=randn(g, batch, DIM, seqlen, scale=0.5) - 1.0 if features
              else rand(g, batch, DIM, seqlen, lo=0.01, hi=0.3),
              A=-rand(g, DIM, DSTATE, lo=0.5, hi=2.0),
              # [batch, ngroups, seqlen, dstate] transposed: a stride-1 dstate, like a projection.
              B=randn(g, batch, ngroups, seqlen, DSTATE, dtype=dtype).transpose(2, 3),
              C=randn(g, batch, ngroups, DSTATE, seqlen, dtype=dtype))
    if features:
        kw.update(D=randn(g, DIM), z=randn(g, batch, DIM, seqlen, dtype=dtype),
                  delta_bias=randn(g, DIM, scale=0.3), delta_softplus=True,
                  initial_state=randn(g, batch, DIM, DSTATE))
    return kw


def reference(kw, **extra):
    return naive_selective_scan(**{k: (v.double() if isinstance(v, torch.Tensor) else v)
                                   for k, v in kw.items()}, **extra)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seqlen,ngroups,features", [(1, 1, True), (63, 2, True),
                                                      (257, 3, False)], ids=str)
def test_against_reference(seqlen, ngroups, features, backend):
    kw = make(seqlen + ngroups, 2, seqlen, ngroups, features=features)
    pos = torch.tensor([[seqlen, 0, -1, seqlen // 2, 1, seqlen // 2],
                        [-1, seqlen, 1, 0, min(seqlen, 5), -1]])
    y, last, ckpt = selective_scan(**kw, checkpoint_positions=pos, return_last_state=True,
                                   backend=backend)
    ref_y, ref_last, ref_ckpt = reference(kw, checkpoint_positions=pos)
    assert y.dtype == torch.float32 and last.dtype == ckpt.dtype == torch.float32
    check(y, ref_y, torch.float32, what="y")
    check(last, ref_last, torch.float32, STATE_TOL, what="last_state")
    check(ckpt, ref_ckpt, torch.float32, STATE_TOL, what="checkpoint_states")
    assert torch.all(ckpt[0, 2] == 0) and torch.all(ckpt[1, 0] == 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_16bit(dtype):
    kw = make(3, 2, 40, 2, dtype=dtype)
    y, last = selective_scan(**kw, return_last_state=True, backend="triton")
    ref_y, ref_last, _ = reference(kw)
    assert y.dtype == dtype
    check(y, ref_y, dtype, what="y")
    check(last, ref_last, torch.float32, STATE_TOL, what="last_state")


def test_checkpoint_resume():
    """A checkpoint at p resumes the scan: outputs and last state equal the whole scan's."""
    kw = make(9, 2, 50, 2)
    p = 21
    y, last, ckpt = selective_scan(**kw, checkpoint_positions=[p], return_last_state=True,
                                   backend="triton")
    seq = ("u", "delta", "z")
    suffix = {k: (v[:, :, p:] if k in seq else v[..., p:] if k in ("B", "C") else v)
              for k, v in kw.items()}
    suffix["initial_state"] = ckpt[:, 0]
    y2, last2 = selective_scan(**suffix, return_last_state=True, backend="triton")
    check(y2, y[:, :, p:], torch.float32, what="suffix y")
    check(last2, last, torch.float32, STATE_TOL, what="last_state")


BAD = {
    "u": lambda kw: kw.update(u=kw["u"][0]),
    "delta": lambda kw: kw.update(delta=kw["delta"][:, :, :3]),
    "A": lambda kw: kw.update(A=kw["A"][:3]),
    "B": lambda kw: kw.update(B=kw["B"].repeat(1, 5, 1, 1)),  # 5 groups do not divide 24
    "C": lambda kw: kw.update(C=kw["C"][..., :3]),
    "D": lambda kw: kw.update(D=kw["D"][:3]),
    "z": lambda kw: kw.update(z=kw["z"][:, :3]),
    "delta_bias": lambda kw: kw.update(delta_bias=kw["delta_bias"][None]),
    "initial_state": lambda kw: kw.update(initial_state=kw["initial_state"][:1]),
    "checkpoint_positions": lambda kw: kw.update(checkpoint_positions=[[0], [11]]),
    "backend": lambda kw: kw.update(backend="cuda"),
}


@pytest.mark.parametrize("arg", list(BAD))
def test_bad_inputs(arg):
    kw = make(1, 2, 10)
    BAD[arg](kw)
    with pytest.raises(ValueError, match=arg):
        selective_scan(**kw)
