import math

import pytest
import torch

from flashkit.reshard import Layout, best_order, llama_rules, plan_reshard, shard

from .common import HEAD_DIM, llama_state

PAIRS = [(Layout(4, 1), Layout(1, 4)), (Layout(4, 1), Layout(2, 2)), (Layout(2, 2), Layout(1, 4)),
         (Layout(1, 4), Layout(4, 1)), (Layout(2, 1, 2), Layout(4, 1)),
         (Layout(1, 1, 4), Layout(2, 2)), (Layout(4, 1), Layout(4, 1))]


def _rows(place, layout, rank):
    return {r for a, b in place.intervals(layout, rank) for r in range(a, b)}


def _apply(plan, shards, sd):
    """Execute a plan in one process, piece by piece (the oracle for the executor's bookkeeping):
    every destination row must be written exactly once."""
    out = {}
    for r in range(plan.dst.world_size):
        out[r] = {}
        for name in plan.shapes:
            shape = plan.local_shape(name, r)
            if shape is not None:
                out[r][name] = torch.full(shape, float("nan"))
        for name in plan.kept[r]:
            out[r][name] = shards[r][name]
    for t in list(plan.transfers) + list(plan.local):
        ps, pd = plan.src_placement[t.name], plan.dst_placement[t.name]
        src_rows = [x for a, b in ps.intervals(plan.src, t.src) for x in range(a, b)]
        dst_rows = [x for a, b in pd.intervals(plan.dst, t.dst) for x in range(a, b)]
        for g in range(t.start, t.stop):
            piece = shards[t.src][t.name].select(t.dim, src_rows.index(g))
            target = out[t.dst][t.name].select(t.dim, dst_rows.index(g))
            assert torch.isnan(target).all(), f"{t.name} row {g} on rank {t.dst} written twice"
            target.copy_(piece)
    return out


@pytest.mark.parametrize("src,dst", PAIRS, ids=lambda x: str(x))
def test_plan_moves_exactly_what_is_missing(src, dst):
    sd = llama_state()
    rules = llama_rules(HEAD_DIM)
    plan = plan_reshard(sd, rules, src, dst, max_step_bytes=600)
    assert plan == plan_reshard(sd, rules, src, dst, max_step_bytes=600)  # deterministic
    shards = {r: shard(sd, rules, src, r) for r in range(src.world_size)}
    got = _apply(plan, shards, sd)
    for r in range(dst.world_size):
        want = shard(sd, rules, dst, r)
        assert got[r].keys() == want.keys()
        for n in want:
            assert torch.equal(got[r][n], want[n]), (r, n)
    # Brute force over rows: what a destination needs and its rank does not hold now.
    lower = 0
    for name, shape in plan.shapes.items():
        ps, pd = plan.src_placement[name], plan.dst_placement[name]
        row = math.prod(shape) // shape[ps.dim] * 4
        for r in range(dst.world_size):
            lower += len(_rows(pd, dst, r) - _rows(ps, src, r)) * row
    assert plan.lower_bound == lower
    assert plan.bytes_to_move == lower
    for t in plan.transfers:  # a slice its rank holds never moves
        held = _rows(plan.src_placement[t.name], src, t.dst)
        assert not held & set(range(t.start, t.stop)), t
    for step in plan.steps:
        load = [0] * src.world_size
        for i in step:
            t = plan.transfers[i]
            load[t.src] += t.nbytes
            load[t.dst] += t.nbytes
        assert max(load) <= 600 or len(step) == 1


def test_identity_plan_moves_nothing():
    sd = llama_state()
    plan = plan_reshard(sd, llama_rules(HEAD_DIM), Layout(2, 2), Layout(2, 2))
    assert plan.bytes_to_move == 0 and not plan.transfers and not plan.local
    assert sum(len(k) for k in plan.kept) == sum(
        len(shard(sd, llama_rules(HEAD_DIM), Layout(2, 2), r)) for r in range(4))


def test_replicated_sources_share_the_load():
    sd = llama_state()
    plan = plan_reshard(sd, llama_rules(HEAD_DIM), Layout(1, 1, 4), Layout(4, 1))
    # DP4 -> TP4: every rank already holds everything: only local copies, no traffic.
    assert plan.bytes_to_move == 0
    plan = plan_reshard(sd, llama_rules(HEAD_DIM), Layout(2, 1, 2), Layout(1, 4))
    sends = [sum(t.nbytes for t in plan.transfers if t.src == r) for r in range(4)]
    assert max(sends) <= 1.5 * min(sends), sends


def test_default_step_budget_is_one_layer():
    sd = llama_state()
    plan = plan_reshard(sd, llama_rules(HEAD_DIM), Layout(4, 1), Layout(1, 4))
    layer = sum(t.numel() * 4 for n, t in sd.items() if ".layers.0." in n)
    assert plan.max_step_bytes == layer
    assert all(t.nbytes <= layer for t in plan.transfers)
    assert len(plan.steps) > 1


def test_hybrid_plan_moves_mamba_heads():
    from flashkit.prefix_cache.engine import TinyHybrid
    from flashkit.reshard import hybrid_rules, hybrid_state_dict

    m = TinyHybrid(layers="sasa", d_model=16, d_state=4, headdim=4, expand=2, n_heads=2)
    sd = {k: v.contiguous() for k, v in hybrid_state_dict(m).items()}
    rules = hybrid_rules(d_model=16, d_inner=m.di, d_state=4, headdim=4, attn_head_dim=m.adh)
    for src, dst in ((Layout(2, 1), Layout(1, 2)), (Layout(2, 2), Layout(1, 4))):
        plan = plan_reshard(sd, rules, src, dst)
        shards = {r: shard(sd, rules, src, r) for r in range(src.world_size)}
        got = _apply(plan, shards, sd)
        for r in got:
            want = shard(sd, rules, dst, r)
            assert all(torch.equal(got[r][n], want[n]) for n in want), r


@pytest.mark.parametrize("src,dst", [(Layout(4, 1), Layout(2, 2)), (Layout(4, 1), Layout(2, 1, 2)),
                                     (Layout(2, 2), Layout(1, 2, 2)), (Layout(1, 4), Layout(2, 2))],
                         ids=lambda x: str(x))
def test_best_order_reaches_the_optimum(src, dst):
    import itertools

    sd = llama_state()
    rules = llama_rules(HEAD_DIM)
    best = best_order(sd, rules, src, dst)
    brute = min(plan_reshard(sd, rules, src, Layout(dst.tp, dst.pp, dst.dp, order=o)).lower_bound
                for o in itertools.permutations(range(4)))
    plan = plan_reshard(sd, rules, src, best)
    assert plan.lower_bound == brute <= plan_reshard(sd, rules, src, dst).lower_bound
    shards = {r: shard(sd, rules, src, r) for r in range(4)}
    got = _apply(plan, shards, sd)
    for r in range(4):
        want = shard(sd, rules, best, r)
        assert all(torch.equal(got[r][n], want[n]) for n in want)


def test_layout_order():
    lay = Layout(2, 2, order=(0, 2, 1, 3))
    assert [lay.coords(r) for r in range(4)] == [(0, 0, 0), (0, 1, 0), (0, 0, 1), (0, 1, 1)]
    assert lay.rank(0, 0, 1) == 2 and str(lay) == "TP2PP2[0,2,1,3]"
    assert Layout(2, 2, order=(0, 1, 2, 3)) == Layout(2, 2)
    with pytest.raises(ValueError, match="Layout.order must be a permutation"):
        Layout(2, 2, order=(0, 1, 1, 3))
