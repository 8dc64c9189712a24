"""merge_state, merge_state_in_place and merge_states under bad input, and their definition at
the edges of the LSE range (issue 17: an LSE of +inf gave NaN). The rule, on every backend: a
state with s = +inf takes all the weight (several share it equally) and the merged s is +inf;
s = -inf is an empty state."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flashkit.ops.attention import merge_state, merge_state_in_place, merge_states

from .framework import Case, table, tried_example
from .mutations import mutate_one

BACKENDS = ["torch", "triton"]
INF = math.inf
META = torch.device("meta")
PROPERTY = settings(max_examples=40, deadline=None, database=None)


def states(seq=4, heads=2, dim=8, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(seq, n, heads, dim, generator=g), torch.randn(seq, n, heads, generator=g)


@pytest.mark.parametrize("backend", BACKENDS)
def test_plus_inf_lse_takes_the_weight(backend):
    v, s = states(seq=4)
    s[0, 0] = INF  # a beats b
    s[1] = INF  # both +inf: the mean
    s[2, 1] = INF
    s[2, 0] = -INF  # +inf against an empty state
    v_out, s_out = merge_state(v_a=v[:, 0], s_a=s[:, 0], v_b=v[:, 1], s_b=s[:, 1],
                               backend=backend)
    assert not v_out.isnan().any() and not s_out.isnan().any()
    torch.testing.assert_close(v_out[0], v[0, 0])
    torch.testing.assert_close(v_out[1], v[1].mean(0))
    torch.testing.assert_close(v_out[2], v[2, 1])
    assert (s_out[:3] == INF).all()
    v_all, s_all = merge_states(v=v, s=s, backend=backend)
    torch.testing.assert_close(v_all, v_out, atol=1e-6, rtol=1e-6)
    assert torch.equal(s_all[:3], s_out[:3])
    va, sa = v[:, 0].clone(), s[:, 0].clone()
    merge_state_in_place(v=va, s=sa, v_other=v[:, 1], s_other=s[:, 1], backend=backend)
    torch.testing.assert_close(va, v_out, atol=1e-6, rtol=1e-6)


@PROPERTY
@given(st.integers(1, 4), st.lists(st.sampled_from([INF, -INF, 0.0, 3.0, -50.0, 1e30]),
                                   min_size=2, max_size=2 * 4 * 2), st.integers(0, 2**16))
def test_merge_states_edges_property(n, pokes, seed):
    """Any mix of +-inf and extreme LSEs: backends agree, no NaN, v is a convex combination."""
    tried_example()
    v, s = states(seq=2, n=n, seed=seed)
    flat = s.view(-1)
    for i, val in enumerate(pokes[:flat.numel()]):
        flat[i] = val
    out = {b: merge_states(v=v, s=s, backend=b) for b in BACKENDS}
    for v_o, s_o in out.values():
        assert not v_o.isnan().any() and not s_o.isnan().any()
        lo = torch.where(s.isneginf()[..., None], INF, v).amin(1)
        hi = torch.where(s.isneginf()[..., None], -INF, v).amax(1)
        empty = s.isneginf().all(1)
        inside = (v_o >= lo - 1e-5) & (v_o <= hi + 1e-5)
        assert (inside | empty[..., None]).all()
        assert (v_o[empty] == 0).all() and (s_o[empty] == -INF).all()
    torch.testing.assert_close(out["torch"][0], out["triton"][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["torch"][1], out["triton"][1], atol=1e-5, rtol=1e-5)


V, S = states()
VA, SA, VB, SB = V[:, 0], S[:, 0], V[:, 1], S[:, 1]


def pair(**over):
    kw = dict(v_a=VA, s_a=SA, v_b=VB, s_b=SB, backend="torch")
    kw.update(over)
    return lambda: merge_state(**kw)


def many(**over):
    kw = dict(v=V, s=S, backend="torch")
    kw.update(over)
    return lambda: merge_states(**kw)


def in_place(**over):
    kw = dict(v=VA.clone(), s=SA.clone(), v_other=VB, s_other=SB, backend="torch")
    kw.update(over)
    return lambda: merge_state_in_place(**kw)


test_merge_state_inputs = table([
    Case("v_a-int", pair(v_a=VA.int()), ValueError, r"v_a must be"),
    Case("v_b-dtype-differs", pair(v_b=VB.half()), ValueError, r"v_b must have the dtype"),
    Case("s_a-float16", pair(s_a=SA.half()), ValueError, r"s_a must be float32"),
    Case("s_b-shape", pair(s_b=SB[:2]), ValueError, r"s_b must have shape"),
    Case("v_b-shape", pair(v_b=VB[:, :1]), ValueError, r"v_b must have shape"),
    Case("v_a-2d", pair(v_a=VA[0]), ValueError, r"v_a must be 3-D"),
    Case("v_b-meta", pair(v_b=VB.to(META)), ValueError, r"v_b must be on cpu"),
    Case("s_a-meta", pair(s_a=SA.to(META)), ValueError, r"s_a must be on cpu"),
    Case("v_a-strided", pair(v_a=torch.randn(4, 2, 16)[..., ::2]), ValueError,
         r"v_a must have a contiguous last dimension"),
    Case("v_a-list", pair(v_a=VA.tolist()), ValueError, r"v_a must be a torch.Tensor"),
    Case("backend", pair(backend="cudnn"), ValueError, r"backend must be one of"),
    Case("zero-rows", pair(v_a=VA[:0], s_a=SA[:0], v_b=VB[:0], s_b=SB[:0]), None, r"tensor"),
    Case("non-contiguous-rows", pair(v_a=V[::2, 0], s_a=S[::2, 0], v_b=V[::2, 1], s_b=S[::2, 1]),
         None, r"tensor"),
    Case("states-s-shape", many(s=S[:, :1]), ValueError, r"s must have shape"),
    Case("states-v-3d", many(v=VA), ValueError, r"v must be 4-D"),
    Case("states-zero-states", many(v=V[:, :0], s=S[:, :0]), None, r"-inf"),
    Case("in-place-mask-dtype", in_place(mask=torch.ones(4)), ValueError, r"mask must be bool"),
    Case("in-place-mask-shape", in_place(mask=torch.ones(3, dtype=torch.bool)), ValueError,
         r"mask must have shape"),
    Case("in-place-other-meta", in_place(v_other=VB.to(META)), ValueError, r"v_other must be on"),
])


def _pair_kwargs():
    v, s = states(seed=5)
    return dict(v_a=v[:, 0].contiguous(), s_a=s[:, 0].contiguous(), v_b=v[:, 1].contiguous(),
                s_b=s[:, 1].contiguous(), backend="torch")


def _in_place(**kw):
    merge_state_in_place(**kw)
    return kw["v"], kw["s"]


def _in_place_kwargs():
    kw = _pair_kwargs()
    return dict(v=kw["v_a"], s=kw["s_a"], v_other=kw["v_b"], s_other=kw["s_b"],
                mask=torch.tensor([True, False, True, True]), backend="torch")


OPS = {
    "merge_state": (merge_state, _pair_kwargs),
    "merge_states": (merge_states, lambda: dict(zip(("v", "s"), states(n=3, seed=6)),
                                                backend="torch")),
    "merge_state_in_place": (_in_place, _in_place_kwargs),
}


@settings(max_examples=100, deadline=None, database=None)
@given(st.sampled_from(sorted(OPS)), st.data())
def test_merge_mutation_property(op, data):
    """Every merge op, one bad tensor at a time (tests/robustness/mutations.py)."""
    mutate_one(OPS, op, data)
