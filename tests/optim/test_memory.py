"""optimizer_state_bytes on live optimizers == the per-shape formulas used for docs/optim.md."""
import pytest
import torch

from flashkit.optim import (APOLLO, APOLLOMini, adamw_state_bytes, apollo_state_bytes,
                            optimizer_state_bytes)

SHAPES = [(24, 40), (40, 24), (16, 16), (40,)]


def _params(dtype):
    g = torch.Generator().manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in SHAPES]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g).to(dtype)
    return ps


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("kind,rank", [("adamw", None), ("apollo", 8), ("mini", 1)])
def test_state_bytes_match_formulas(kind, rank, dtype):
    ps = _params(dtype)
    if kind == "adamw":
        opt = torch.optim.AdamW(ps)
    elif kind == "apollo":
        opt = APOLLO(ps, rank=rank)
    else:
        opt = APOLLOMini(ps)
    assert optimizer_state_bytes(opt) == 0
    opt.step()
    expected = [apollo_state_bytes(s, rank, dtype) for s in SHAPES]
    assert optimizer_state_bytes(opt) == sum(expected)
    assert optimizer_state_bytes(opt, ps[:1]) == expected[0]
    if kind != "adamw":
        assert set(opt.state[ps[0]]) == {"step", "exp_avg", "exp_avg_sq", "limiter_norm", "proj",
                                         "proj_index"}
    assert expected[3] == adamw_state_bytes(SHAPES[3], dtype)
