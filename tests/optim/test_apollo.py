"""APOLLO / APOLLO-Mini against a float64 implementation of the published equations.

The oracle below is written from the paper's update rule (not from flashkit's reference): Gaussian
projection along the smaller dimension refreshed every ``gap`` steps, AdamW moments of the
projection, channel- or tensor-wise ratio of norms, the raw gradient scaled by it and by
sqrt(scale), the norm-growth limiter and decoupled weight decay. flashkit's conventions that the
paper leaves open are copied: 1e-8 in the ratio's denominator (apollo-torch's), no limiting while
the previous norm is 0, decay applied before the update (torch.optim.AdamW's order).
Gradients are set directly (a fixed sequence per step), so both runs see the same ones.
"""
import math

import pytest
import torch

from flashkit.optim import APOLLO, APOLLOMini, projection_matrix

STEPS, GAP, SEED = 7, 3, 1234  # refreshes at steps 1, 4 and 7


class Float64Apollo:
    def __init__(self, w, index, *, rank, scale_type, scale, lr, betas, eps, wd, gamma):
        self.w, self.index, self.rank = w.double().clone(), index, rank
        self.scale_type, self.scale, self.lr, self.betas = scale_type, scale, lr, betas
        self.eps, self.wd, self.gamma = eps, wd, gamma
        rows, cols = w.shape
        self.wide = rows <= cols
        self.m = torch.zeros(rank, max(rows, cols), dtype=torch.float64)
        self.v = torch.zeros_like(self.m)
        self.prev, self.t, self.engaged = 0.0, 0, []

    def projection(self, t):
        return projection_matrix(SEED, self.index, (t - 1) // GAP, self.rank, min(self.w.shape),
                                 dtype=torch.float64)

    def step(self, grad):
        self.t += 1
        b1, b2 = self.betas
        g = grad.double()
        g_c = g if self.wide else g.t()  # [small dim, channels]
        r = self.projection(self.t) @ g_c
        self.m = b1 * self.m + (1 - b1) * r
        self.v = b2 * self.v + (1 - b2) * r * r
        n = (self.m / (1 - b1 ** self.t)) / ((self.v / (1 - b2 ** self.t)).sqrt() + self.eps)
        if self.scale_type == "channel":
            s = n.norm(dim=0) / (r.norm(dim=0) + 1e-8)  # one factor per channel (column of g_c)
            u = (g_c * s[None, :]) if self.wide else (g_c * s[None, :]).t()
        else:
            u = g * (n.norm() / (r.norm() + 1e-8))
        norm = u.norm().item()
        if self.prev > 0 and norm > self.gamma * self.prev:
            u = u * (self.gamma * self.prev / norm)
            norm = self.gamma * self.prev
            self.engaged.append(self.t)
        self.prev = norm
        self.w = self.w * (1 - self.lr * self.wd) - self.lr * math.sqrt(self.scale) * u


def _grad(shape, step, index, oracle=None):
    """A random gradient; at step 5 mostly in the null space of that step's projection, so the
    projected gradient is small, the scaling factor large and the limiter must engage."""
    g = torch.randn(shape, generator=torch.Generator().manual_seed(100 * index + step),
                    dtype=torch.float64)
    if step == 5 and oracle is not None:
        p = oracle.projection(step)
        g_c = g if oracle.wide else g.t()
        g_c = g_c - torch.linalg.pinv(p) @ (p @ g_c) + 0.02 * g_c
        g = g_c if oracle.wide else g_c.t()
    return g


# (shapes with their index, group options); each case runs two ranked params, wide and tall.
CASES = {
    "channel": dict(rank=3, scale_type="channel", scale=1.0, wd=0.1),
    "tensor": dict(rank=2, scale_type="tensor", scale=4.0, wd=0.1),
    "channel_no_decay": dict(rank=4, scale_type="channel", scale=1.0, wd=0.0),
}
SHAPES = [(6, 20), (20, 6)]


def _compare(make_opt, opts, dtype, tol):
    ws = [torch.nn.Parameter(torch.randn(s, generator=torch.Generator().manual_seed(i),
                                         dtype=torch.float64).to(dtype))
          for i, s in enumerate(SHAPES)]
    oracles = [Float64Apollo(w, i, **opts) for i, w in enumerate(ws)]
    opt = make_opt(ws)
    projs = []
    for step in range(1, STEPS + 1):
        for i, (w, o) in enumerate(zip(ws, oracles)):
            g = _grad(w.shape, step, i, o)
            w.grad = g.to(dtype)
            o.step(w.grad)
        opt.step()
        projs.append(opt.state[ws[0]]["proj"].clone())
        for w, o in zip(ws, oracles):
            torch.testing.assert_close(w.detach().double(), o.w, **tol)
    for o in oracles:
        assert 5 in o.engaged and len(o.engaged) < STEPS - 1, o.engaged
    # The projection changes exactly at the gap.
    same = [torch.equal(a, b) for a, b in zip(projs, projs[1:])]
    assert same == [True, True, False, True, True, False]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, dict(rtol=1e-10, atol=1e-12)),
                                       (torch.float32, dict(rtol=2e-5, atol=2e-5))],
                         ids=["float64", "float32"])
@pytest.mark.parametrize("case", list(CASES))
def test_update_rule(case, dtype, tol):
    c = CASES[case]
    opts = dict(rank=c["rank"], scale_type=c["scale_type"], scale=c["scale"], lr=0.02,
                betas=(0.9, 0.99), eps=1e-6, wd=c["wd"], gamma=1.01)

    def make(ws):
        return APOLLO(ws, lr=0.02, betas=(0.9, 0.99), eps=1e-6, weight_decay=c["wd"],
                      rank=c["rank"], scale_type=c["scale_type"], scale=c["scale"],
                      update_proj_gap=GAP, proj_seed=SEED, backend="torch")

    _compare(make, opts, dtype, tol)


def test_mini_update_rule():
    """APOLLO-Mini's defaults: rank 1, tensor scaling, scale 128."""
    opts = dict(rank=1, scale_type="tensor", scale=128.0, lr=1e-3, betas=(0.9, 0.999),
                eps=1e-6, wd=0.0, gamma=1.01)
    _compare(lambda ws: APOLLOMini(ws, lr=1e-3, update_proj_gap=GAP, proj_seed=SEED),
             opts, torch.float64, dict(rtol=1e-10, atol=1e-12))


@pytest.mark.parametrize("fused", [None, False], ids=["fused-auto", "single-tensor"])
def test_per_group_overrides_and_adamw_params(fused):
    """Group options override the defaults; 1-D params of a ranked group and every param of a
    group with rank=None follow torch.optim.AdamW (same ``fused``) bit for bit."""
    g = torch.Generator().manual_seed(0)
    w_chan, bias, w_tens, emb = (torch.nn.Parameter(torch.randn(*s, generator=g))
                                 for s in ((8, 16), (16,), (16, 8), (10, 8)))
    opt = APOLLO([{"params": [w_chan, bias], "rank": 2},
                  {"params": [w_tens], "rank": 3, "scale_type": "tensor", "lr": 0.05,
                   "limiter_gamma": None},
                  {"params": [emb]}],
                 lr=0.01, weight_decay=0.1, update_proj_gap=GAP, proj_seed=SEED, backend="torch",
                 fused=fused)
    ref_bias, ref_emb = bias.detach().clone().requires_grad_(), emb.detach().clone().requires_grad_()
    adamw = torch.optim.AdamW([ref_bias, ref_emb], lr=0.01, weight_decay=0.1, eps=1e-6,
                              fused=fused is None, foreach=False)
    oracles = [Float64Apollo(w_chan, 0, rank=2, scale_type="channel", scale=1.0, lr=0.01,
                             betas=(0.9, 0.999), eps=1e-6, wd=0.1, gamma=1.01),
               Float64Apollo(w_tens, 2, rank=3, scale_type="tensor", scale=1.0, lr=0.05,
                             betas=(0.9, 0.999), eps=1e-6, wd=0.1, gamma=math.inf)]
    for step in range(1, 6):
        for i, p in enumerate((w_chan, bias, w_tens, emb)):
            p.grad = _grad(p.shape, step, i).float()
        ref_bias.grad, ref_emb.grad = bias.grad.clone(), emb.grad.clone()
        oracles[0].step(w_chan.grad)
        oracles[1].step(w_tens.grad)
        opt.step()
        adamw.step()
        assert torch.equal(bias, ref_bias) and torch.equal(emb, ref_emb)
        torch.testing.assert_close(w_chan.detach().double(), oracles[0].w, rtol=2e-5, atol=2e-5)
        torch.testing.assert_close(w_tens.detach().double(), oracles[1].w, rtol=2e-5, atol=2e-5)
    assert "limiter_norm" not in opt.state[bias] and "limiter_norm" not in opt.state[emb]


def test_projection_is_device_and_call_independent():
    """Same (seed, index, refresh) -> same P; any of the three changed -> a different P; the
    entries are N(0, 1/rank)."""
    p = projection_matrix(7, 3, 2, 64, 256)
    assert torch.equal(p, projection_matrix(7, 3, 2, 64, 256))
    for other in ((8, 3, 2), (7, 4, 2), (7, 3, 3)):
        assert not torch.equal(p, projection_matrix(*other, 64, 256))
    assert abs(p.var().item() * 64 - 1) < 0.05 and abs(p.mean().item()) < 0.01
    assert torch.equal(projection_matrix(7, 3, 2, 64, 256, dtype=torch.bfloat16),
                       p.to(torch.bfloat16))
    if torch.cuda.is_available():
        assert torch.equal(projection_matrix(7, 3, 2, 64, 256, device="cuda").cpu(), p)


def test_sparse_gradient_raises():
    emb = torch.nn.Embedding(10, 4, sparse=True)
    opt = APOLLO(emb.parameters(), rank=2)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(ValueError, match="grad of parameter 0 is sparse"):
        opt.step()


W = [torch.nn.Parameter(torch.randn(4, 8))]
BAD = [
    ("lr", dict(lr=-1e-3), "lr must be >= 0"),
    ("betas", dict(betas=(1.0, 0.999)), "beta1 must be < 1"),
    ("betas", dict(betas=(0.9, 1.0)), "beta2 must be < 1"),
    ("betas", dict(betas=(-0.1, 0.9)), "beta1 must be >= 0"),
    ("betas", dict(betas=(0.9,)), "betas must be a pair"),
    ("eps", dict(eps=0.0), "eps must be > 0"),
    ("weight_decay", dict(weight_decay=-0.1), "weight_decay must be >= 0"),
    ("rank", dict(rank=0), "rank must be None or an int >= 1"),
    ("rank", dict(rank=2.5), "rank must be None or an int >= 1"),
    ("rank", dict(rank=5), "rank 5 is larger than the smaller dimension of parameter 0"),
    ("scale_type", dict(scale_type="row"), "scale_type must be one of"),
    ("scale", dict(scale=-1.0), "scale must be > 0"),
    ("update_proj_gap", dict(update_proj_gap=0), "update_proj_gap must be an int >= 1"),
    ("limiter_gamma", dict(limiter_gamma=0.9), "limiter_gamma must be >= 1"),
    ("proj_seed", dict(proj_seed="a"), "proj_seed must be an int"),
    ("backend", dict(backend="cuda"), "backend must be one of"),
]


@pytest.mark.parametrize("name,kw,msg", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_hyper_parameters(name, kw, msg):
    with pytest.raises(ValueError, match=msg):
        APOLLO(W, **{"rank": 2, **kw})


def test_bad_group_override():
    with pytest.raises(ValueError, match="rank 9 is larger than the smaller dimension of "
                                         "parameter 1"):
        APOLLO([{"params": [torch.nn.Parameter(torch.randn(3))]},
                {"params": W, "rank": 9}])
    with pytest.raises(ValueError, match="rank 5 is larger"):
        APOLLOMini([{"params": W, "rank": 5}])
    opt = APOLLO(W, rank=2)
    with pytest.raises(ValueError, match="lr must be >= 0"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(3))], "lr": -1.0})
    assert len(opt.param_groups) == 1
