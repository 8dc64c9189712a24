"""causal_conv1d / causal_conv1d_update against the float64 reference; varlen vs a loop."""
import pytest
import torch

from flashkit.ops.ssm import (causal_conv1d, causal_conv1d_update, naive_causal_conv1d,
                              naive_causal_conv1d_update)
from tests.helpers import TOL, device, poison

from .common import BACKENDS, gen, randn

DIM = 40  # not a multiple of the channel block


def _d(kw):
    return {k: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
            for k, v in kw.items()}


def make(seed, batch, seqlen, width, dtype=torch.float32, features=True, nseqs=None,
         channel_last=False):
    g = gen(seed)
    x = randn(g, batch, seqlen, DIM, dtype=dtype).transpose(1, 2) if channel_last \
        else randn(g, batch, DIM, seqlen, dtype=dtype)
    kw = dict(x=x, weight=randn(g, DIM, width))
    if features:
        kw.update(bias=randn(g, DIM), activation="silu",
                  initial_states=randn(g, batch if nseqs is None else nseqs, DIM, width - 1))
    return kw


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("features", [True, False], ids=["feat", "plain"])
@pytest.mark.parametrize("seqlen,width", [(1, 4), (63, 4), (257, 3)], ids=lambda v: str(v))
def test_against_reference(seqlen, width, features, backend):
    kw = make(seqlen * 10 + width, 2, seqlen, width, features=features,
              channel_last=seqlen == 63)
    out, final = causal_conv1d(**kw, return_final_states=True, backend=backend)
    ref, ref_final = naive_causal_conv1d(**_d(kw))
    torch.testing.assert_close(out.double(), ref, **TOL[torch.float32])
    torch.testing.assert_close(final.double(), ref_final, **TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_16bit(dtype):
    kw = make(3, 2, 70, 4, dtype=dtype)
    out = causal_conv1d(**kw, backend="triton")
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), naive_causal_conv1d(**_d(kw))[0], **TOL[dtype])


def test_varlen_equals_loop():
    cu = [0, 0, 2, 70, 71, 140]
    kw = make(5, 1, cu[-1], 4, nseqs=len(cu) - 1)
    cu_t = torch.tensor(cu, device=device())
    out, final = causal_conv1d(**kw, cu_seqlens=cu_t, return_final_states=True,
                               backend="triton")
    ref, ref_final = naive_causal_conv1d(**_d(kw), cu_seqlens=cu_t)
    torch.testing.assert_close(out.double(), ref, **TOL[torch.float32])
    torch.testing.assert_close(final.double(), ref_final, **TOL[torch.float32])
    for i, (a, b) in enumerate(zip(cu, cu[1:])):
        one = dict(kw, x=kw["x"][:, :, a:b], initial_states=kw["initial_states"][i:i + 1])
        o1, f1 = causal_conv1d(**one, return_final_states=True, backend="triton")
        torch.testing.assert_close(out[:, :, a:b], o1)
        torch.testing.assert_close(final[i:i + 1], f1)


def test_resume_with_update():
    """Prefill a prefix, then decode token by token from its final state: equals the whole."""
    kw = make(7, 2, 12, 4)
    whole = causal_conv1d(**kw, backend="triton")
    pre = dict(kw, x=kw["x"][:, :, :9])
    _, state = causal_conv1d(**pre, return_final_states=True, backend="triton")
    state = state.clone()
    for t in range(9, 12):
        o = causal_conv1d_update(kw["x"][:, :, t], state, kw["weight"], kw["bias"], "silu",
                                 backend="triton")
        torch.testing.assert_close(o, whole[:, :, t], **TOL[torch.float32])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seqlen", [None, 3], ids=["one_token", "three_tokens"])
@pytest.mark.parametrize("state_len", [3, 6], ids=lambda s: f"state{s}")
def test_update(state_len, seqlen, backend):
    g = gen(state_len * 7 + (seqlen or 1))
    batch, width, nslots = 4, 4, 6
    x = randn(g, batch, DIM) if seqlen is None else randn(g, batch, DIM, seqlen)
    conv_state = randn(g, nslots, DIM, state_len)
    weight, bias = randn(g, DIM, width), randn(g, DIM)
    slots = torch.tensor([4, -1, 0, 2], device=device())
    ref, ref_state = naive_causal_conv1d_update(x.double(), conv_state.double(), weight.double(),
                                                bias.double(), "silu", slots)
    out = causal_conv1d_update(x, conv_state, weight, bias, "silu", slots, backend=backend)
    torch.testing.assert_close(out.double(), ref, **TOL[torch.float32])
    torch.testing.assert_close(conv_state.double(), ref_state, **TOL[torch.float32])
    assert torch.all(out[1] == 0)


def test_poisoned_outputs():
    from flashkit.ops.ssm.conv_triton import causal_conv1d_fwd_triton
    from flashkit.ops.ssm.spans import sequence_spans

    kw = make(9, 2, 70, 4)
    out = poison(torch.empty_like(kw["x"]))
    final = poison(torch.empty(2, DIM, 3, device=device()))
    causal_conv1d_fwd_triton(kw["x"], kw["weight"], kw["bias"], "silu", kw["initial_states"],
                             sequence_spans(2, 70), out, final)
    ref, ref_final = naive_causal_conv1d(**_d(kw))
    torch.testing.assert_close(out.double(), ref, **TOL[torch.float32])
    torch.testing.assert_close(final.double(), ref_final, **TOL[torch.float32])


BAD = {
    "x": lambda kw: kw.update(x=kw["x"][0]),
    "weight": lambda kw: kw.update(weight=kw["weight"][:3]),
    "bias": lambda kw: kw.update(bias=kw["bias"][:3]),
    "activation": lambda kw: kw.update(activation="relu"),
    "initial_states": lambda kw: kw.update(initial_states=kw["initial_states"][:, :, :1]),
    "cu_seqlens": lambda kw: kw.update(cu_seqlens=torch.tensor([0, 3])),
    "backend": lambda kw: kw.update(backend="gpu"),
}


@pytest.mark.parametrize("arg", list(BAD))
def test_bad_inputs(arg):
    kw = make(1, 2, 10, 4)
    BAD[arg](kw)
    with pytest.raises(ValueError, match=arg):
        causal_conv1d(**kw)


@pytest.mark.parametrize("arg", ["x", "conv_state", "weight", "conv_state_indices"])
def test_update_bad_inputs(arg):
    g = gen(2)
    kw = dict(x=randn(g, 3, DIM), conv_state=randn(g, 5, DIM, 3), weight=randn(g, DIM, 4))
    bad = {"x": dict(x=kw["x"][0]), "conv_state": dict(conv_state=kw["conv_state"][:, :, :2]),
           "weight": dict(weight=kw["weight"][:, None]),
           "conv_state_indices": dict(conv_state_indices=torch.tensor([0, 5, 1]))}[arg]
    with pytest.raises(ValueError, match=arg):
        causal_conv1d_update(**dict(kw, **bad))
