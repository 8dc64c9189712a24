"""The SSM ops under bad input: chunk_ssd_scan, selective_scan, selective_state_update,
causal_conv1d(_update). Regression of issue 17: checkpoint_positions must be integers (1.5 was
silently truncated to 1)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flashkit.ops.ssm import (causal_conv1d, causal_conv1d_update, chunk_ssd_scan, selective_scan,
                              selective_state_update)

from .framework import Case, table, tried_example
from .mutations import mutate_one

META = torch.device("meta")
PROPERTY = settings(max_examples=40, deadline=None, database=None)
B_, L, H, P, G, N = 1, 8, 2, 4, 1, 4


def ssd_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(B_, L, H, P, generator=g), dt=torch.rand(B_, L, H, generator=g),
                A=-torch.rand(H, generator=g), B=torch.randn(B_, L, G, N, generator=g),
                C=torch.randn(B_, L, G, N, generator=g), chunk_size=16, backend="torch")


def ssd(**over):
    kw = ssd_inputs()
    kw.update(over)
    return lambda: chunk_ssd_scan(**kw)


def scan_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    d = 4
    return dict(u=torch.randn(1, d, L, generator=g), delta=torch.rand(1, d, L, generator=g),
                A=-torch.rand(d, N, generator=g), B=torch.randn(1, 1, N, L, generator=g),
                C=torch.randn(1, 1, N, L, generator=g), backend="torch")


def scan(**over):
    kw = scan_inputs()
    kw.update(over)
    return lambda: selective_scan(**kw)


def update(**over):
    g = torch.Generator().manual_seed(0)
    kw = dict(state=torch.zeros(3, H, P, N), x=torch.randn(2, H, P, generator=g),
              dt=torch.rand(2, H, generator=g), A=-torch.rand(H, generator=g),
              B=torch.randn(2, G, N, generator=g), C=torch.randn(2, G, N, generator=g),
              backend="torch")
    kw.update(over)
    return lambda: selective_state_update(**kw)


def conv(**over):
    kw = dict(x=torch.randn(1, 4, L), weight=torch.randn(4, 3), backend="torch")
    kw.update(over)
    return lambda: causal_conv1d(**kw)


def conv_update(**over):
    kw = dict(x=torch.randn(2, 4), conv_state=torch.zeros(2, 4, 2), weight=torch.randn(4, 3),
              backend="torch")
    kw.update(over)
    return lambda: causal_conv1d_update(**kw)


X = ssd_inputs()["x"]

test_chunk_ssd_scan = table([
    Case("ckpt-float", ssd(checkpoint_positions=[1.5]), ValueError,
         r"checkpoint_positions must hold ints, got torch.float32"),
    Case("ckpt-float-tensor-like", ssd(checkpoint_positions=[[2.0, 3.0]]), ValueError,
         r"checkpoint_positions must hold ints"),
    Case("ckpt-bool", ssd(checkpoint_positions=[True]), ValueError, r"checkpoint_positions"),
    Case("ckpt-float-tensor", ssd(checkpoint_positions=torch.tensor([1.5])), ValueError,
         r"checkpoint_positions must be int32/int64"),
    Case("ckpt-past-len", ssd(checkpoint_positions=[L + 1]), ValueError,
         r"checkpoint_positions\[0, 0\] = 9 is outside \[0, 8\]"),
    Case("ckpt-below", ssd(checkpoint_positions=[-2]), ValueError, r"checkpoint_positions"),
    Case("ckpt-huge", ssd(checkpoint_positions=[2**70]), ValueError, r"checkpoint_positions"),
    Case("ckpt-string", ssd(checkpoint_positions=["a"]), ValueError, r"checkpoint_positions"),
    Case("ckpt-ok", ssd(checkpoint_positions=[0, 3, -1, L]), None, r"tensor"),
    Case("ckpt-empty", ssd(checkpoint_positions=[]), None, r"tensor"),
    Case("x-int", ssd(x=X.int()), ValueError, r"x must be"),
    Case("x-3d", ssd(x=X[0]), ValueError, r"x must be 4-D"),
    Case("dt-meta", ssd(dt=ssd_inputs()["dt"].to(META)), ValueError, r"dt must be on cpu"),
    Case("chunk-size-odd", ssd(chunk_size=24), ValueError, r"chunk_size"),
    Case("chunk-size-zero", ssd(chunk_size=0), ValueError, r"chunk_size"),
    Case("chunk-size-float", ssd(chunk_size=16.0), ValueError, r"chunk_size"),
    Case("groups-divide", ssd(B=torch.randn(B_, L, 3, N), C=torch.randn(B_, L, 3, N)), ValueError,
         r"ngroups"),
    Case("A-shape", ssd(A=-torch.rand(H + 1)), ValueError, r"A must have shape"),
    Case("cu-seqlens-drop", ssd(cu_seqlens=torch.tensor([0, 6, 4, 8])), ValueError, r"cu_seqlens"),
    Case("cu-seqlens-end", ssd(cu_seqlens=torch.tensor([0, 4, 7])), ValueError, r"cu_seqlens"),
    Case("cu-seqlens-float", ssd(cu_seqlens=torch.tensor([0.0, 8.0])), ValueError, r"cu_seqlens"),
    Case("zero-length", ssd(x=X[:, :0], dt=ssd_inputs()["dt"][:, :0], B=ssd_inputs()["B"][:, :0],
                            C=ssd_inputs()["C"][:, :0]), None, r"tensor"),
    Case("backend-cuda", ssd(backend="cuda"), ValueError, r"backend must be one of"),
])

test_selective_scan = table([
    Case("ckpt-float", scan(checkpoint_positions=[0.5]), ValueError,
         r"checkpoint_positions must hold ints"),
    Case("u-int", scan(u=torch.ones(1, 4, L, dtype=torch.int32)), ValueError, r"u must be"),
    Case("A-dstate-vs-B", scan(A=-torch.rand(4, N + 1)), ValueError,
         r"B must have shape \(1, ngroups, 5, 8\)"),
    Case("delta-meta", scan(delta=torch.rand(1, 4, L, device=META)), ValueError, r"delta"),
    Case("u-strided", scan(u=torch.randn(1, 4, 2 * L)[..., ::2]), None, r"tensor"),
])

test_state_update = table([
    Case("slot-past", update(state_batch_indices=torch.tensor([0, 3])), ValueError,
         r"state_batch_indices"),
    Case("slot-twice", update(state_batch_indices=torch.tensor([1, 1])), ValueError,
         r"state_batch_indices"),
    Case("slot-float", update(state_batch_indices=torch.tensor([0.0, 1.0])), ValueError,
         r"state_batch_indices"),
    Case("state-int", update(state=torch.zeros(3, H, P, N, dtype=torch.int32)), ValueError,
         r"state"),
    Case("x-meta", update(x=torch.randn(2, H, P, device=META)), ValueError, r"x"),
    Case("padding-row", update(state_batch_indices=torch.tensor([-1, 2])), None, r"tensor"),
])

test_conv = table([
    Case("weight-3d", conv(weight=torch.randn(4, 3, 1)), ValueError, r"weight"),
    Case("weight-dim", conv(weight=torch.randn(5, 3)), ValueError, r"weight"),
    Case("activation", conv(activation="relu"), ValueError, r"activation"),
    Case("x-meta", conv(x=torch.randn(1, 4, L, device=META)), ValueError,
         r"weight must be on meta"),
    Case("update-state-short", conv_update(conv_state=torch.zeros(2, 4, 1)), ValueError,
         r"conv_state"),
    Case("update-indices-past", conv_update(conv_state_indices=torch.tensor([0, 5])), ValueError,
         r"conv_state_indices"),
])


@PROPERTY
@given(st.lists(st.one_of(st.integers(-3, 12), st.floats(),
                          st.booleans()), max_size=4))
def test_checkpoint_positions_property(raw):
    """Any list: accepted only when every entry is an int in [-1, L] (and then each checkpoint
    is the state after that many tokens), else a ValueError naming checkpoint_positions."""
    tried_example()
    kw = ssd_inputs()
    ok = all(isinstance(p, int) and not isinstance(p, bool) and -1 <= p <= L for p in raw)
    if not ok:
        with pytest.raises(ValueError, match="checkpoint_positions"):
            chunk_ssd_scan(**kw, checkpoint_positions=raw)
        return
    if not raw:
        return
    y, ckpt = chunk_ssd_scan(**kw, checkpoint_positions=raw)
    for k, p in enumerate(raw):
        if p <= 0:
            assert (ckpt[0, k] == 0).all()
            continue
        short = {n: (t[:, :p] if t.dim() > 1 else t) for n, t in kw.items()
                 if isinstance(t, torch.Tensor)}
        _, last = chunk_ssd_scan(**short, chunk_size=16, return_final_states=True,
                                 backend="torch")
        torch.testing.assert_close(ckpt[0, k], last[0], atol=1e-5, rtol=1e-5)



def _update_kwargs():
    g = torch.Generator().manual_seed(0)
    return dict(state=torch.zeros(3, H, P, N), x=torch.randn(2, H, P, generator=g),
                dt=torch.rand(2, H, generator=g), A=-torch.rand(H, generator=g),
                B=torch.randn(2, G, N, generator=g), C=torch.randn(2, G, N, generator=g),
                D=torch.randn(H, generator=g), state_batch_indices=torch.tensor([2, 0]),
                backend="torch")


def _conv_kwargs():
    g = torch.Generator().manual_seed(0)
    return dict(x=torch.randn(1, 4, L, generator=g), weight=torch.randn(4, 3, generator=g),
                bias=torch.randn(4, generator=g), initial_states=torch.randn(1, 4, 2, generator=g),
                backend="torch")


def _conv_update_kwargs():
    g = torch.Generator().manual_seed(0)
    return dict(x=torch.randn(2, 4, generator=g), conv_state=torch.randn(3, 4, 2, generator=g),
                weight=torch.randn(4, 3, generator=g), conv_state_indices=torch.tensor([2, 0]),
                backend="torch")


def _with_ckpt(make):
    def kwargs():
        kw = make()
        kw["checkpoint_positions"] = torch.tensor([0, 3])
        return kw
    return kwargs


OPS = {
    "chunk_ssd_scan": (chunk_ssd_scan, _with_ckpt(ssd_inputs)),
    "selective_scan": (selective_scan, _with_ckpt(scan_inputs)),
    "selective_state_update": (selective_state_update, _update_kwargs),
    "causal_conv1d": (causal_conv1d, _conv_kwargs),
    "causal_conv1d_update": (causal_conv1d_update, _conv_update_kwargs),
}


@settings(max_examples=150, deadline=None, database=None)
@given(st.sampled_from(sorted(OPS)), st.data())
def test_ssm_mutation_property(op, data):
    """Every SSM op, one bad tensor at a time (tests/robustness/mutations.py)."""
    mutate_one(OPS, op, data)
