"""apollo_fused_update (torch and Triton backends) against the float64 reference, step by step."""
import math

import pytest
import torch

from flashkit.ops.optim import apollo_fused_update, naive_apollo_update
from tests.helpers import TOL, assert_rel_rmse, device, kernel_backends, poison

BACKENDS = [b for b in kernel_backends() if b != "cuda"]
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# (rows, cols, rank): wide, tall, square, a single row, and 130 channels (3 programs of 64, so
# the partial sums of several programs are combined).
SHAPES = [(12, 40, 4), (40, 12, 3), (33, 33, 1), (1, 7, 1), (70, 130, 5)]
HP = dict(lr=0.05, beta1=0.9, beta2=0.99, eps=1e-6, weight_decay=0.1, scale=2.0,
          limiter_gamma=1.01)
# Moments and the limiter norm are float32 sums of at most ~10^3 terms here.
STATE_TOL = dict(atol=1e-6, rtol=2e-5)


def _inputs(rows, cols, rank, dtype, seed, step, r_scale=1.0):
    """grad and R = P G (times ``r_scale``: a small R against the same G makes s, hence the
    update's norm, jump, which is how the tests engage the limiter)."""
    g = torch.Generator().manual_seed(seed * 100 + step)
    grad = torch.randn(rows, cols, generator=g).to(dtype)
    proj = torch.randn(rank, min(rows, cols), generator=g, dtype=torch.float64) / math.sqrt(rank)
    mat = grad.double() if rows <= cols else grad.double().t()
    return grad.to(device()), (r_scale * proj @ mat).to(dtype).to(device())


def _run(rows, cols, rank, dtype, backend, scale_type, seed, steps=4):
    """Runs ``steps`` steps; at each one the float64 reference takes the op's inputs and state.
    Returns the steps at which the limiter engaged (step 3's R is scaled by 0.05)."""
    engaged = []
    g = torch.Generator().manual_seed(seed)
    param = torch.randn(rows, cols, generator=g).to(dtype).to(device())
    m = torch.zeros(rank, max(rows, cols), device=device())
    v = torch.zeros_like(m)
    lim = torch.zeros(2, device=device())
    for step in range(1, steps + 1):
        grad, r = _inputs(rows, cols, rank, dtype, seed, step, 0.05 if step == 3 else 1.0)
        ref = [t.double().clone() for t in (param, m, v, lim)]
        before = param.clone()
        apollo_fused_update(param, grad, r, m, v, lim, step=step, scale_type=scale_type,
                            backend=backend, **HP)
        naive_apollo_update(ref[0], grad.double(), r.double(), *ref[1:], step=step,
                            scale_type=scale_type, **HP)
        torch.testing.assert_close(param.double(), ref[0], **TOL[dtype])
        torch.testing.assert_close(m.double(), ref[1], **STATE_TOL)
        torch.testing.assert_close(v.double(), ref[2], **STATE_TOL)
        torch.testing.assert_close(lim.double(), ref[3], **STATE_TOL)
        if dtype == torch.float32:
            assert_rel_rmse(param - before, ref[0] - before.double(), 1e-5)
        assert not torch.equal(param, before)
        write, read = step % 2, (step + 1) % 2
        if math.isclose(ref[3][write], ref[3][read] * HP["limiter_gamma"], rel_tol=1e-12):
            engaged.append(step)
    return engaged


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale_type", ["channel", "tensor"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "m{}_n{}_r{}".format(*s))
def test_matches_reference(shape, dtype, scale_type, backend):
    seed = 10 * SHAPES.index(shape) + DTYPES.index(dtype)  # str hashes vary between processes
    engaged = _run(*shape, dtype, backend, scale_type, seed=seed)
    assert 3 in engaged, "step 3's 20x smaller R should engage the limiter"


@pytest.mark.parametrize("backend", BACKENDS)
def test_limiter_off_and_first_step(backend):
    """gamma = inf never limits; a zero previous norm (step 1) never limits either."""
    rows, cols, rank = 9, 20, 2
    param = torch.randn(rows, cols, device=device())
    m, v = torch.zeros(rank, cols, device=device()), torch.zeros(rank, cols, device=device())
    lim = torch.zeros(2, device=device())
    for step in (1, 2):
        grad, r = _inputs(rows, cols, rank, torch.float32, 5, step, 0.01 if step == 2 else 1.0)
        ref = [t.double().clone() for t in (param, m, v, lim)]
        apollo_fused_update(param, grad, r, m, v, lim, step=step, backend=backend,
                            **{**HP, "limiter_gamma": math.inf})
        naive_apollo_update(ref[0], grad.double(), r.double(), *ref[1:], step=step,
                            scale_type="channel", **{**HP, "limiter_gamma": math.inf})
        torch.testing.assert_close(param.double(), ref[0], **TOL[torch.float32])
    # R 100x smaller against the same G, no cap: the norm grew by far more than 1.01.
    assert lim[0] > 10 * lim[1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_rows(backend):
    """param / grad / proj_grad as row-strided slices of bigger tensors."""
    big_p = torch.randn(10, 50, device=device())
    big_g = torch.randn(10, 50, device=device())
    big_r = torch.randn(3, 64, device=device())
    param, grad, r = big_p[:, 5:41], big_g[:, 3:39], big_r[:, 10:46]
    assert not param.is_contiguous() and not r.is_contiguous()
    m, v, lim = torch.zeros(3, 36, device=device()), torch.zeros(3, 36, device=device()), \
        torch.zeros(2, device=device())
    ref = [t.double().clone() for t in (param, m, v, lim)]
    untouched = big_p[:, :5].clone()
    apollo_fused_update(param, grad, r, m, v, lim, step=1, backend=backend, **HP)
    naive_apollo_update(ref[0], grad.double(), r.double(), *ref[1:], step=1,
                        scale_type="channel", **HP)
    torch.testing.assert_close(param.double(), ref[0], **TOL[torch.float32])
    assert torch.equal(big_p[:, :5], untouched)


@pytest.mark.parametrize("scale_type", ["channel", "tensor"])
def test_scratch_buffers_written(scale_type, monkeypatch):
    """The kernel's scratch (scales, partial sums) comes from torch.empty: poisoned with NaN,
    any element read before it is written would spread NaN into the weights."""
    if "triton" not in BACKENDS:
        pytest.skip("no triton")
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **k: poison(real_empty(*a, **k)))
    param = torch.randn(70, 130, device=device())
    grad, r = _inputs(70, 130, 5, torch.float32, 3, 1)
    m, v = torch.zeros(5, 130, device=device()), torch.zeros(5, 130, device=device())
    apollo_fused_update(param, grad, r, m, v, torch.zeros(2, device=device()), step=1,
                        scale_type=scale_type, backend="triton", **HP)
    assert not param.isnan().any()


def test_torch_compile_fullgraph():
    """The op traces as one mutating custom op under torch.compile."""
    param = torch.randn(8, 24)
    grad, r = _inputs(8, 24, 2, torch.float32, 9, 1)
    state = [torch.zeros(2, 24), torch.zeros(2, 24), torch.zeros(2)]

    def f(p, m, v, lim):
        apollo_fused_update(p, grad, r, m, v, lim, step=1, **HP)

    eager = [t.clone() for t in (param, *state)]
    f(*eager)
    compiled = [t.clone() for t in (param, *state)]
    torch.compile(f, fullgraph=True, backend="aot_eager")(*compiled)
    for got, want in zip(compiled, eager):
        torch.testing.assert_close(got, want)


def _good():
    param = torch.randn(6, 10)
    return dict(param=param, grad=torch.randn(6, 10), proj_grad=torch.randn(2, 10),
                exp_avg=torch.zeros(2, 10), exp_avg_sq=torch.zeros(2, 10),
                limiter_norm=torch.zeros(2))


BAD = [
    ("param", dict(param=torch.randn(6, 10, 1)), "param must be 2-D"),
    ("param", dict(param=torch.randn(6, 10).int()), "param must be"),
    ("grad", dict(grad=torch.randn(6, 9)), "grad must have shape"),
    ("grad", dict(grad=torch.randn(6, 10).half()), "grad must be float32"),
    ("grad", dict(grad=torch.randn(6, 10).to_sparse()), "grad must be a dense tensor"),
    ("grad", dict(grad=torch.randn(10, 6).t()), "grad must have a contiguous last dimension"),
    ("proj_grad", dict(proj_grad=torch.randn(7, 10)), "proj_grad must have shape"),
    ("proj_grad", dict(proj_grad=torch.randn(2, 6)), "proj_grad must have shape"),
    ("exp_avg", dict(exp_avg=torch.zeros(2, 10).half()), "exp_avg must be float32"),
    ("exp_avg_sq", dict(exp_avg_sq=torch.zeros(3, 10)), "exp_avg_sq must have shape"),
    ("exp_avg", dict(exp_avg=torch.zeros(10, 2).t()), "exp_avg must be contiguous"),
    ("limiter_norm", dict(limiter_norm=torch.zeros(1)), "limiter_norm must have shape"),
    ("step", dict(step=0), r"step must be in \[1, "),
    ("lr", dict(lr=-1.0), "lr must be >= 0"),
    ("beta1", dict(beta1=1.0), "beta1 must be < 1"),
    ("beta2", dict(beta2=-0.1), "beta2 must be >= 0"),
    ("eps", dict(eps=0.0), "eps must be > 0"),
    ("weight_decay", dict(weight_decay=-0.1), "weight_decay must be >= 0"),
    ("scale", dict(scale=0.0), "scale must be > 0"),
    ("scale_type", dict(scale_type="row"), "scale_type must be one of"),
    ("limiter_gamma", dict(limiter_gamma=0.5), "limiter_gamma must be >= 1"),
    ("lr", dict(lr=float("nan")), "lr must be a number"),
    ("backend", dict(backend="cuda"), "backend must be one of"),
]


@pytest.mark.parametrize("name,change,msg", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_inputs(name, change, msg):
    args = {**_good(), "step": 1, "lr": 1e-3, **change}
    tensors = {k: args.pop(k) for k in list(_good())}
    with pytest.raises(ValueError, match=msg):
        apollo_fused_update(*tensors.values(), **args)


def test_float64_only_on_torch():
    args = {k: t.double() for k, t in _good().items()}
    apollo_fused_update(*args.values(), step=1, lr=1e-3, backend="torch")
    with pytest.raises(ValueError, match="param must be float16/bfloat16/float32 for backend"):
        apollo_fused_update(*args.values(), step=1, lr=1e-3, backend="triton")


@pytest.mark.parametrize("scale_type", ["channel", "tensor"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_registered_op_passes_opcheck(backend, scale_type):
    """torch.library.opcheck: schema (mutated arguments), fake implementation and dispatch."""
    param = torch.randn(9, 20, device=device())
    grad, r = _inputs(9, 20, 2, torch.float32, 8, 1)
    m, v = torch.rand(2, 20, device=device()), torch.rand(2, 20, device=device())
    lim = torch.tensor([0.0, 1.0], device=device())
    torch.library.opcheck(torch.ops.flashkit.apollo_fused_update.default,
                          (param, grad, r, m, v, lim, 2, 0.01, 0.9, 0.999, 1e-6, 0.1, 1.0,
                           scale_type, 1.01, backend))
