"""Resume exactness: N steps, checkpoint, a new model and optimizer, M more steps == N + M steps.

N = 5 and M = 6 with update_proj_gap = 4: the resumed run must rebuild the projection of the
current period (not in the checkpoint) and refresh it again at step 9; the limiter's state and
the float32 moments of the bf16 parameter cross the checkpoint too.
"""
import io

import pytest
import torch

from flashkit.optim import APOLLO, APOLLOMini

N, M, GAP = 5, 6, 4


def _model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.GELU(), torch.nn.Linear(40, 12),
                                torch.nn.Linear(12, 20, bias=False))
    model[3].to(torch.bfloat16)
    return model


def _optimizer(kind, model, proj_seed=17):
    ranked = [p for p in model.parameters() if p.dim() == 2]
    rest = [p for p in model.parameters() if p.dim() != 2]
    if kind == "apollo":
        return APOLLO([{"params": rest}, {"params": ranked, "rank": 3}], lr=1e-2,
                      weight_decay=0.01, update_proj_gap=GAP, proj_seed=proj_seed)
    return APOLLOMini([{"params": rest, "rank": None}, {"params": ranked}], lr=1e-2,
                      update_proj_gap=GAP, proj_seed=proj_seed)


def _train(model, opt, steps, start):
    for step in range(start, start + steps):
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(16, 24, generator=g), torch.randn(16, 20, generator=g)
        h = model[2](model[1](model[0](x)))
        loss = ((model[3](h.to(torch.bfloat16)).float() - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("kind", ["apollo", "mini"])
def test_resume_is_bit_exact(kind):
    model = _model()
    opt = _optimizer(kind, model)
    _train(model, opt, N + M, 0)

    first = _model()
    first_opt = _optimizer(kind, first)
    _train(first, first_opt, N, 0)
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": first_opt.state_dict()}, buf)
    assert all("proj" not in s for s in first_opt.state_dict()["state"].values())
    buf.seek(0)
    ckpt = torch.load(buf)

    resumed = _model()
    # Another seed at construction: the checkpoint's seed must win.
    resumed_opt = _optimizer(kind, resumed, proj_seed=99)
    resumed.load_state_dict(ckpt["model"])
    resumed_opt.load_state_dict(ckpt["opt"])
    assert resumed_opt.state[resumed[3].weight]["exp_avg"].dtype == torch.float32
    _train(resumed, resumed_opt, M, N)

    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    # The comparison has teeth: the parameters moved, and a run that skipped the checkpointed
    # state (fresh moments and limiter) ends elsewhere.
    assert not torch.equal(model[0].weight, _model()[0].weight)
    fresh = _model()
    fresh.load_state_dict(ckpt["model"])
    _train(fresh, _optimizer(kind, fresh), M, N)
    assert not torch.equal(fresh[0].weight, model[0].weight)
