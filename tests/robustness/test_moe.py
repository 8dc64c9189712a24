"""The MoE ops under bad input: fused_topk, moe_align_block_size, fused_moe and FusedMoE.
Regressions of issue 17: non-finite router rows follow docs/moe.md's rule on both backends (no
id out of range, one NaN token does not fail a Triton batch), FusedMoE checks its arguments at
construction, and moe_align_block_size bounds block_size."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flashkit.ops.moe import FusedMoE, fused_moe, fused_topk, moe_align_block_size

from .framework import Case, table, tried_example
from .mutations import mutate_one

BACKENDS = ["torch", "triton"]
NAN, INF = math.nan, math.inf
META = torch.device("meta")
PROPERTY = settings(max_examples=30, deadline=None, database=None)

# Rows that broke the Triton router: all NaN, all -inf, NaN among numbers, +inf (twice), -inf
# among numbers, one finite expert with topk 2.
ROWS = [[NAN] * 8, [-INF] * 8, [0.5, NAN, 2.0, -1.0, NAN, 0.0, 1.0, 3.0],
        [0.0, INF, 1.0, INF, -1.0, 2.0, 0.0, 0.0], [-INF, 1.0, -INF, 2.0, -INF, 0.0, -INF, -INF],
        [-INF] * 7 + [1.0]]


def check_rule(logits, weights, ids, topk):
    """docs/moe.md "Non-finite router rows": ids distinct and in range; rows with nothing finite
    take the lowest ids with weight 0."""
    e = logits.shape[1]
    assert ids.dtype == torch.int32 and ((ids >= 0) & (ids < e)).all(), ids
    for row in ids.tolist():
        assert len(set(row)) == topk, row
    assert torch.isfinite(weights).all(), weights
    dead = torch.where(logits.isnan(), -INF, logits).amax(1) == -INF
    assert (ids[dead] == torch.arange(topk, dtype=torch.int32)).all()
    assert (weights[dead] == 0).all()


@pytest.mark.parametrize("scoring", ["softmax", "sigmoid"])
@pytest.mark.parametrize("renormalize", [True, False])
def test_fused_topk_non_finite_rows(scoring, renormalize):
    logits = torch.tensor(ROWS)
    out = {b: fused_topk(gating_logits=logits, topk=2, renormalize=renormalize, scoring=scoring,
                         backend=b) for b in BACKENDS}
    for w, ids in out.values():
        check_rule(logits, w, ids, 2)
    assert torch.equal(out["torch"][1], out["triton"][1])
    torch.testing.assert_close(out["torch"][0], out["triton"][0], atol=1e-6, rtol=1e-6)
    if scoring == "softmax" and not renormalize:  # two +inf logits share the mass
        assert out["torch"][0][3].tolist() == [0.5, 0.5]


def test_fused_topk_non_finite_grouped_with_bias():
    logits = torch.tensor(ROWS)
    bias = torch.tensor([0.0, NAN, 0.1, 0.0, INF, 0.0, -INF, 0.2])
    out = {b: fused_topk(gating_logits=logits, topk=3, scoring="sigmoid", correction_bias=bias,
                         num_expert_groups=4, topk_group=2, backend=b) for b in BACKENDS}
    for w, ids in out.values():
        assert ((ids >= 0) & (ids < 8)).all() and all(len(set(r)) == 3 for r in ids.tolist())
        assert torch.isfinite(w).all()
    assert torch.equal(out["torch"][1], out["triton"][1])
    torch.testing.assert_close(out["torch"][0], out["triton"][0], atol=1e-6, rtol=1e-6)


def test_fused_moe_layer_with_a_nan_token():
    """One NaN token no longer fails a backend='triton' batch; the other tokens are unchanged."""
    torch.manual_seed(0)
    layers = {b: FusedMoE(4, 2, 16, 32, backend=b) for b in BACKENDS}
    layers["triton"].load_state_dict(layers["torch"].state_dict())
    x = torch.randn(3, 16)
    x[1] = NAN
    y = {b: m(x) for b, m in layers.items()}
    torch.testing.assert_close(y["triton"][[0, 2]], y["torch"][[0, 2]], atol=1e-4, rtol=1e-4)
    clean = layers["torch"](x[[0, 2]])
    torch.testing.assert_close(y["torch"][[0, 2]], clean, atol=1e-5, rtol=1e-5)


@PROPERTY
@given(st.integers(1, 5), st.sampled_from([4, 8]), st.integers(1, 3),
       st.sampled_from(["softmax", "sigmoid"]),
       st.lists(st.tuples(st.integers(0, 39), st.sampled_from([NAN, INF, -INF, 1e30, -1e30])),
                max_size=12), st.integers(0, 2**16))
def test_fused_topk_property(tokens, experts, topk, scoring, pokes, seed):
    """Any logits with NaN/inf anywhere: both backends give the same valid ids (docs/moe.md)."""
    tried_example()
    logits = torch.randn(tokens, experts, generator=torch.Generator().manual_seed(seed))
    for pos, val in pokes:
        logits.view(-1)[pos % logits.numel()] = val
    out = {b: fused_topk(gating_logits=logits, topk=topk, scoring=scoring, backend=b)
           for b in BACKENDS}
    for w, ids in out.values():
        check_rule(logits, w, ids, topk)
    assert torch.equal(out["torch"][1], out["triton"][1])
    torch.testing.assert_close(out["torch"][0], out["triton"][0], atol=1e-5, rtol=1e-5)


LOGITS = torch.randn(3, 8)
IDS = torch.tensor([[0, 1], [2, 3], [7, 0]], dtype=torch.int32)


def topk(**over):
    kw = dict(gating_logits=LOGITS, topk=2, backend="torch")
    kw.update(over)
    return lambda: fused_topk(**kw)


def align(**over):
    kw = dict(topk_ids=IDS, block_size=16, num_experts=8)
    kw.update(over)
    return lambda: moe_align_block_size(**kw)


def moe(**over):
    kw = dict(hidden_states=torch.randn(3, 16), w1=torch.randn(8, 64, 16),
              w2=torch.randn(8, 16, 32), topk_weights=torch.ones(3, 2), topk_ids=IDS,
              backend="torch")
    kw.update(over)
    return lambda: fused_moe(**kw)


test_routing = table([
    Case("topk-int-logits", topk(gating_logits=LOGITS.int()), ValueError, r"gating_logits must be"),
    Case("topk-1d", topk(gating_logits=LOGITS[0]), ValueError, r"gating_logits must be 2-D"),
    Case("topk-zero-experts", topk(gating_logits=torch.zeros(3, 0)), ValueError,
         r"gating_logits must have at least one expert"),
    Case("topk-zero-tokens", topk(gating_logits=torch.zeros(0, 8)), None, r"tensor\(\[\]"),
    Case("topk-k-zero", topk(topk=0), ValueError, r"topk must be a positive int"),
    Case("topk-k-past-experts", topk(topk=9), ValueError, r"topk must be <= 8"),
    Case("topk-k-float", topk(topk=2.0), ValueError, r"topk must be a positive int"),
    Case("topk-scoring", topk(scoring="softplus"), ValueError, r"scoring must be one of"),
    Case("topk-bias-shape", topk(correction_bias=torch.zeros(7)), ValueError, r"correction_bias"),
    Case("topk-bias-meta", topk(correction_bias=torch.zeros(8, device=META)), ValueError,
         r"correction_bias must be on cpu"),
    Case("topk-groups-alone", topk(num_expert_groups=2), ValueError, r"must be given together"),
    Case("topk-groups-divide", topk(num_expert_groups=3, topk_group=1), ValueError,
         r"num_expert_groups \(3\) must divide"),
    Case("topk-group-past", topk(num_expert_groups=2, topk_group=3), ValueError,
         r"topk_group must"),
    Case("topk-backend", topk(backend="cutlass"), ValueError, r"backend must be one of"),
    Case("align-block-2**40", align(block_size=2**40), ValueError, r"block_size must be in"),
    Case("align-block-zero", align(block_size=0), ValueError, r"block_size must be in"),
    Case("align-block-float", align(block_size=16.0), ValueError, r"block_size must be an int"),
    Case("align-experts-huge", align(num_experts=2**40), ValueError, r"num_experts must be in"),
    Case("align-id-past", align(num_experts=4), ValueError, r"topk_ids must be in \[0, 4\)"),
    Case("align-id-negative", align(topk_ids=-IDS), ValueError, r"topk_ids must be in"),
    Case("align-float-ids", align(topk_ids=IDS.float()), ValueError, r"topk_ids must be int32"),
    Case("moe-w1-dtype", moe(w1=torch.randn(8, 64, 16).half()), ValueError, r"w1"),
    Case("moe-ids-past", moe(topk_ids=IDS + 1), ValueError, r"topk_ids must be in \[0, 8\)"),
    Case("moe-weights-shape", moe(topk_weights=torch.ones(3, 3)), ValueError, r"topk_weights"),
    Case("moe-hidden-meta", moe(hidden_states=torch.randn(3, 16, device=META)), ValueError,
         r"must be on meta"),
    Case("moe-activation", moe(activation="relu"), ValueError, r"activation"),
])

test_fused_moe_constructor = table([
    Case("experts-zero", lambda: FusedMoE(0, 1, 16, 32), ValueError, r"num_experts"),
    Case("topk-past-experts", lambda: FusedMoE(4, 5, 16, 32), ValueError, r"topk must be <= 4"),
    Case("scoring", lambda: FusedMoE(4, 2, 16, 32, scoring="softplus"), ValueError, r"scoring"),
    Case("groups-divide", lambda: FusedMoE(6, 2, 16, 32, num_expert_groups=4, topk_group=1),
         ValueError, r"num_expert_groups \(4\) must divide the number of experts \(num_experts"),
    Case("groups-alone", lambda: FusedMoE(8, 2, 16, 32, topk_group=2), ValueError, r"together"),
    Case("topk-past-kept", lambda: FusedMoE(8, 4, 16, 32, num_expert_groups=4, topk_group=1),
         ValueError, r"topk \(4\) must be <= topk_group"),
    Case("backend", lambda: FusedMoE(4, 2, 16, 32, backend="cutlass"), ValueError, r"backend"),
    Case("dtype", lambda: FusedMoE(4, 2, 16, 32, dtype=torch.int8), ValueError, r"dtype"),
    Case("renormalize-str", lambda: FusedMoE(4, 2, 16, 32, renormalize="yes"), ValueError,
         r"renormalize must be a bool"),
    Case("hidden-float", lambda: FusedMoE(4, 2, 16.0, 32), ValueError, r"hidden_size"),
    Case("forward-wrong-hidden", lambda: FusedMoE(4, 2, 16, 32)(torch.randn(2, 8)), ValueError,
         r"hidden_size=16"),
])


def _g(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


OPS = {
    "fused_topk": (fused_topk, lambda: dict(gating_logits=_g(3, 8), topk=2, backend="torch")),
    "fused_topk_bias": (fused_topk, lambda: dict(gating_logits=_g(3, 8), topk=2,
                                                 correction_bias=_g(8, seed=1),
                                                 num_expert_groups=2, topk_group=1,
                                                 backend="torch")),
    "moe_align_block_size": (moe_align_block_size, lambda: dict(topk_ids=IDS.clone(),
                                                                block_size=4, num_experts=8)),
    "fused_moe": (fused_moe, lambda: dict(hidden_states=_g(3, 16), w1=_g(8, 64, 16, seed=1),
                                          w2=_g(8, 16, 32, seed=2),
                                          topk_weights=torch.ones(3, 2), topk_ids=IDS.clone(),
                                          backend="torch")),
}


@settings(max_examples=120, deadline=None, database=None)
@given(st.sampled_from(sorted(OPS)), st.data())
def test_moe_mutation_property(op, data):
    """Every MoE op, one bad tensor at a time (tests/robustness/mutations.py)."""
    mutate_one(OPS, op, data)
