"""APOLLO (flashkit.optim) and apollo_fused_update under bad input. Regressions of issue 17:
lr=inf and weight_decay=inf were accepted (every parameter became inf), also when set on a group
after construction (a scheduler), and the step count stopped at 2**24 (a float32 counter)."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flashkit.ops.optim import apollo_fused_update
from flashkit.optim import APOLLO, APOLLOMini

from .framework import Case, table, tried_example
from .mutations import check_mutation, mutation_args

INF, NAN = math.inf, math.nan
META = torch.device("meta")
PROPERTY = settings(max_examples=60, deadline=None, database=None)


def params():
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(6, 10)), torch.nn.Parameter(torch.randn(10))]


def apollo(**kw):
    return lambda: APOLLO([{"params": params(), "rank": 2}], **kw)


def update(**over):
    g = torch.Generator().manual_seed(0)
    kw = dict(param=torch.randn(6, 10, generator=g), grad=torch.randn(6, 10, generator=g),
              proj_grad=torch.randn(2, 10, generator=g), exp_avg=torch.zeros(2, 10),
              exp_avg_sq=torch.zeros(2, 10), limiter_norm=torch.zeros(2), step=1, lr=1e-3,
              backend="torch")
    kw.update(over)
    return lambda: apollo_fused_update(**kw)


test_apollo_hparams = table([
    Case("lr-inf", apollo(lr=INF), ValueError, r"lr must be finite"),
    Case("lr-nan", apollo(lr=NAN), ValueError, r"lr must be a number"),
    Case("weight-decay-inf", apollo(weight_decay=INF), ValueError, r"weight_decay must be finite"),
    Case("eps-inf", apollo(eps=INF), ValueError, r"eps must be finite"),
    Case("scale-inf", apollo(scale=INF), ValueError, r"scale must be finite"),
    Case("beta1-nan", apollo(betas=(NAN, 0.9)), ValueError, r"beta1 must be a number"),
    Case("betas-one", apollo(betas=(0.9,)), ValueError, r"betas must be a pair"),
    Case("lr-str", apollo(lr="1e-3"), ValueError, r"lr must be a number"),
    Case("limiter-inf-ok", apollo(limiter_gamma=INF), None, r"APOLLO"),
    Case("limiter-none-ok", apollo(limiter_gamma=None), None, r"APOLLO"),
    Case("rank-float", lambda: APOLLO([{"params": params(), "rank": 2.0}]), ValueError,
         r"rank must be None or an int"),
    Case("rank-past", lambda: APOLLO([{"params": params(), "rank": 7}]), ValueError,
         r"rank 7 is larger"),
    Case("gap-zero", apollo(update_proj_gap=0), ValueError, r"update_proj_gap"),
    Case("seed-float", apollo(proj_seed=1.5), ValueError, r"proj_seed"),
    Case("backend", apollo(backend="cuda"), ValueError, r"backend must be one of"),
    Case("mini-lr-inf", lambda: APOLLOMini(params(), lr=INF), ValueError, r"lr must be finite"),
    Case("op-lr-inf", update(lr=INF), ValueError, r"lr must be finite"),
    Case("op-wd-inf", update(weight_decay=INF), ValueError, r"weight_decay must be finite"),
    Case("op-step-float", update(step=1.0), ValueError, r"step must be an int"),
    Case("op-step-2**40", update(step=2**40), ValueError, r"step must be in \[1, "),
    Case("op-param-meta", update(param=torch.randn(6, 10, device=META)), ValueError,
         r"grad must be on meta"),
    Case("op-grad-strided", update(grad=torch.randn(6, 20)[:, ::2]), ValueError,
         r"grad must have a contiguous last dimension"),
    Case("op-zero-rank", update(proj_grad=torch.randn(0, 10), exp_avg=torch.zeros(0, 10),
                                exp_avg_sq=torch.zeros(0, 10)), ValueError, r"proj_grad"),
])


@pytest.mark.parametrize("key,value", [("lr", INF), ("weight_decay", INF), ("lr", NAN),
                                       ("eps", INF)])
def test_group_edited_after_construction(key, value):
    """A scheduler setting lr=inf: step() raises before any parameter changes."""
    ps = params()
    opt = APOLLO([{"params": ps, "rank": 2}], lr=1e-2)
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    before = [p.detach().clone() for p in ps]
    opt.param_groups[0][key] = value
    with pytest.raises(ValueError, match=key):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(ps, before))


def test_step_count_passes_2_to_the_24():
    ps = params()
    opt = APOLLO([{"params": ps[:1], "rank": 2}], lr=1e-2)
    ps[0].grad = torch.ones_like(ps[0])
    opt.step()
    opt.state[ps[0]]["step"].fill_(2**24)
    opt.step()
    assert int(opt.state[ps[0]]["step"]) == 2**24 + 1


def test_float32_step_of_an_old_checkpoint_loads_as_int():
    ps = params()
    opt = APOLLO([{"params": ps[:1], "rank": 2}], lr=1e-2)
    ps[0].grad = torch.ones_like(ps[0])
    opt.step()
    sd = opt.state_dict()
    sd["state"][0]["step"] = torch.tensor(3.0)
    opt.load_state_dict(sd)
    assert opt.state[ps[0]]["step"].dtype == torch.int64
    opt.step()
    assert int(opt.state[ps[0]]["step"]) == 4


@PROPERTY
@given(st.sampled_from(["lr", "weight_decay", "eps", "scale", "limiter_gamma"]),
       st.floats(allow_nan=True, allow_infinity=True))
def test_hparam_property(name, value):
    """Any float for a hyper-parameter: accepted only when finite and in range (limiter_gamma
    may be inf), and then a step runs and counts."""
    tried_example()
    ok = {"lr": value >= 0, "weight_decay": value >= 0, "eps": value > 0, "scale": value > 0,
          "limiter_gamma": value >= 1}[name] and (math.isfinite(value) or name == "limiter_gamma")
    ps = params()
    if not ok:
        with pytest.raises(ValueError, match=name):
            APOLLO([{"params": ps, "rank": 2}], **{name: value})
        return
    opt = APOLLO([{"params": ps, "rank": 2}], **{name: value})
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step()
    assert int(opt.state[ps[0]]["step"]) == 1


def _update(**kw):
    apollo_fused_update(**kw)
    return kw["param"], kw["exp_avg"], kw["exp_avg_sq"], kw["limiter_norm"]


def _update_kwargs():
    g = torch.Generator().manual_seed(0)
    return dict(param=torch.randn(6, 10, generator=g), grad=torch.randn(6, 10, generator=g),
                proj_grad=torch.randn(2, 10, generator=g), exp_avg=torch.zeros(2, 10),
                exp_avg_sq=torch.zeros(2, 10), limiter_norm=torch.zeros(2), step=1, lr=1e-3,
                backend="torch")


@settings(max_examples=100, deadline=None, database=None)
@given(st.data())
def test_apollo_update_mutation_property(data):
    """apollo_fused_update, one bad tensor at a time (tests/robustness/mutations.py)."""
    tensors = [k for k, v in _update_kwargs().items() if isinstance(v, torch.Tensor)]
    name, how, dim = data.draw(mutation_args(tensors))
    if check_mutation(_update, _update_kwargs, name, how, dim):
        tried_example()
