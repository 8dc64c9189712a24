"""Policies on hand-made cases whose best host is known; capacity is never exceeded."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flashkit.placement import POLICIES, LifetimeModel, PlacementEngine, Predictor, make_policy

MODEL = LifetimeModel(np.arange(1.0, 101.0), np.zeros(100, np.int64))


def engine(policy, n_hosts, cpu, mem, ends, starts=None):
    """Items with oracle lifetimes, so each one's predicted remaining time is known exactly."""
    n = len(cpu)
    pred = Predictor(MODEL, "oracle")
    pred.bind(np.zeros(n, np.int64), np.zeros(n) if starts is None else starts,
              np.asarray(ends, float))
    return PlacementEngine(n_hosts, make_policy(policy), pred, cpu, mem, r0=1.0)


def test_first_and_best_fit():
    # hosts 0, 1, 2 left with 0.5, 0.25, 0.75 free; an item of 0.25 fits all three
    cpu = [0.5, 0.75, 0.25, 0.25]
    for policy, want in (("first-fit", 0), ("best-fit", 1)):
        e = engine(policy, 3, cpu, cpu, [10.0] * 4)
        for item, h in ((0, 0), (1, 1), (2, 2)):
            e.assign(item, h, 0.0)
        assert e.place(3, 0.0) == want


def test_best_fit_weighs_both_resources():
    # host 0: 0.5 cpu / 0.125 mem free, host 1: 0.25 / 0.5; item (0.25, 0.125): host 0 leaves
    # 0.25 + 0 free, host 1 leaves 0 + 0.375: best fit takes host 0
    e = engine("best-fit", 2, [0.5, 0.75, 0.25], [0.875, 0.5, 0.125], [10.0] * 3)
    e.assign(0, 0, 0.0)
    e.assign(1, 1, 0.0)
    assert e.place(2, 0.0) == 0


def test_lava_puts_long_items_where_they_extend_nothing():
    # equal fill; host 0 empties at t=2, host 1 is anchored by an item living to t=100
    cpu = [0.5, 0.5, 0.25, 0.25]
    for policy, long_to in (("best-fit", 0), ("lava", 1), ("lars", 1)):
        e = engine(policy, 3, cpu, cpu, [2.0, 100.0, 60.0, 1.5])
        e.assign(0, 0, 0.0)
        e.assign(1, 1, 0.0)
        assert e.place(2, 0.0) == long_to, policy      # lives to 60
    e = engine("lava", 3, cpu, cpu, [2.0, 100.0, 60.0, 1.5])
    e.assign(0, 0, 0.0)
    e.assign(1, 1, 0.0)
    assert e.place(3, 0.0) == 0                         # short item: both ext 0, lowest id


@pytest.mark.parametrize("scan", [True, False])
def test_lava_leaves_hosts_balanced(scan):
    # equal lifetimes and equal leftover sums: best fit takes the lowest id, LAVA's balance
    # term the host whose cpu and memory are left equally free (nothing stranded)
    cases = [
        # host 0 left (0.75, 0.25) free, host 1 (0.5, 0.5); item (0.25, 0.25): after it host 0
        # has (0.5, 0.0) free (its cpu stranded), host 1 (0.25, 0.25)
        ([0.25, 0.5, 0.25], [0.75, 0.5, 0.25]),
        # a cpu-heavy item (0.5, 0.25) on host 0 (0.5, 0.75 free) or host 1 (0.75, 0.5):
        # leftovers (0, 0.5) and (0.25, 0.25)
        ([0.5, 0.25, 0.5], [0.25, 0.5, 0.25]),
    ]
    for cpu, mem in cases:
        for policy, want in (("best-fit", 0), ("lava", 1), ("lars", 1)):
            e = engine(policy, 3, cpu, mem, [10.0] * 3)
            e.scan = scan
            e.assign(0, 0, 0.0)
            e.assign(1, 1, 0.0)
            assert e.place(2, 0.0) == want, (policy, cpu)
        e = engine("best-fit", 3, cpu, mem, [10.0] * 3)
        e.policy = make_policy("best-fit", balance=1.0)
        e.assign(0, 0, 0.0)
        e.assign(1, 1, 0.0)
        assert e.place(2, 0.0) == 1


def test_balance_never_outweighs_lifetime():
    # the balanced host empties at t=2, the other outlives the item (to t=100): LAVA still
    # puts the item where it extends nothing
    e = engine("lava", 3, [0.5, 0.25, 0.25], [0.5, 0.75, 0.25], [2.0, 100.0, 50.0])
    e.assign(0, 0, 0.0)
    e.assign(1, 1, 0.0)
    assert e.place(2, 0.0) == 1


def test_nilas_groups_similar_exit_times():
    cpu = [0.25, 0.25, 0.25]
    e = engine("nilas", 3, cpu, cpu, [3.0, 100.0, 90.0])
    e.assign(0, 0, 0.0)
    e.assign(1, 1, 0.0)
    assert e.place(2, 0.0) == 1
    e = engine("nilas", 3, cpu, cpu, [3.0, 100.0, 2.5])
    e.assign(0, 0, 0.0)
    e.assign(1, 1, 0.0)
    assert e.place(2, 0.0) == 0


def test_misprediction_is_corrected_by_reprediction():
    # one-shot: a survivor past its predicted lifetime makes its host look about to empty
    rng = np.random.default_rng(0)
    life = 1 + rng.pareto(1.5, 20_000)
    m = LifetimeModel(life, np.zeros(life.size, np.int64))
    for mode, cls in (("one-shot", 0), ("repredict", 7)):
        p = Predictor(m, mode, age0=0.01)
        p.bind(np.zeros(1, np.int64), np.zeros(1), np.full(1, np.inf))
        e = PlacementEngine(1, make_policy("lava"), p, [0.5], [0.5], r0=1.0)
        e.assign(0, 0, 0.0)
        e.refresh(60.0)     # age 60: Pareto remaining t / (alpha - 1) = 120, class 1 + log2 = 7
        assert e.host_cls[0] == cls, mode


def test_lars_waits_while_the_slots_left_suffice_then_moves_the_likeliest_survivor():
    # class 0: 90 % live 0.1, 10 % live 100 (mean residual at age 0: 10.09, P(alive at 1): 0.1);
    # class 1: all live 3 (mean residual 3, P(alive at 1): 1). The VM that must move is the
    # class-1 one: it will still be there at the deadline; the longest mean residual is not
    life = np.array([0.1] * 900 + [100.0] * 100 + [3.0] * 1000)
    m = LifetimeModel(life, np.repeat([0, 1], 1000))
    pred = Predictor(m, "repredict", age0=0.01)
    pred.bind(np.array([0, 1]), np.zeros(2), np.full(2, np.inf))
    e = PlacementEngine(2, make_policy("lars"), pred, [0.1, 0.1], [0.1, 0.1], r0=1.0)
    assert pred.remaining(0, 0.0) > pred.remaining(1, 0.0)
    np.testing.assert_allclose(pred.alive_at(np.array([0, 1]), 0.0, 1.0), [0.1, 1.0])
    lars = make_policy("lars")
    q = lars.drain_order(e, [1, 0], 0.0, 1.0, None)
    assert lars.drain_next(e, q, {0, 1}, 0.0, 1.0, slots_left=2) is None
    assert lars.drain_next(e, q, {0, 1}, 0.0, 1.0, slots_left=1) == 1
    assert lars.drain_next(e, q, {0}, 0.5, 1.0, slots_left=0) == 0


def test_baselines_drain_in_a_random_order_waiting_for_none():
    e = engine("best-fit", 2, [0.1] * 4, [0.1] * 4, [5.0, 100.0, 1.0, 50.0])
    bf = make_policy("best-fit")
    q = bf.drain_order(e, [0, 1, 2, 3], 0.0, 10.0, np.random.default_rng(0))
    assert sorted(q) == [0, 1, 2, 3]
    order = list(q)
    pending = {0, 1, 3}                                   # item 2 exited before its turn
    got = [bf.drain_next(e, q, pending, 0.0, 10.0, slots_left=99) for _ in range(3)]
    assert got == [i for i in order if i != 2]
    assert bf.drain_next(e, q, pending, 0.0, 10.0, slots_left=99) is None


def test_no_room_returns_minus_one():
    e = engine("best-fit", 1, [0.75, 0.5], [0.25, 0.25], [5.0, 5.0])
    assert e.place(0, 0.0) == 0
    assert e.place(1, 0.0) == -1


@settings(max_examples=40, deadline=None)
@given(policy=st.sampled_from(sorted(POLICIES)), n_hosts=st.integers(1, 6),
       ops=st.lists(st.tuples(st.integers(1, 64), st.integers(0, 64), st.floats(0.1, 50)),
                    min_size=1, max_size=60),
       seed=st.integers(0, 2**16))
def test_capacity_never_exceeded(policy, n_hosts, ops, seed):
    rng = np.random.default_rng(seed)
    cpu = np.array([o[0] for o in ops]) / 64
    mem = np.array([o[1] for o in ops]) / 64
    starts = np.cumsum(rng.uniform(0, 2, len(ops)))
    ends = starts + np.array([o[2] for o in ops])
    e = engine(policy, n_hosts, cpu, mem, ends, starts)
    for i in range(len(ops)):
        now = starts[i]
        for j in range(i):
            if e.item_host[j] >= 0 and ends[j] <= now:
                e.release(j, now)
        if i % 7 == 3:
            e.refresh(now)
        h = e.place(i, now)
        if h < 0:       # refused only when no host has room
            assert not any(e.free0[k] >= cpu[i] - 1e-9 and e.free1[k] >= mem[i] - 1e-9
                           for k in range(n_hosts))
        e.check()


def test_engine_bad_inputs():
    p = Predictor(MODEL)
    with pytest.raises(ValueError, match="predictor"):
        PlacementEngine(2, make_policy("lava"), p, [0.5], [0.5])
    p.bind(np.zeros(1, np.int64), np.zeros(1), np.ones(1))
    with pytest.raises(ValueError, match="need0"):
        PlacementEngine(2, make_policy("lava"), p, [1.5], [0.5])
    with pytest.raises(ValueError, match="n_hosts"):
        PlacementEngine(0, make_policy("lava"), p, [0.5], [0.5])
    with pytest.raises(ValueError, match="policy"):
        make_policy("worst-fit")
    for bad in (-1.0, 0.3, 5.0, "1"):
        with pytest.raises(ValueError, match="balance"):
            make_policy("lava", balance=bad)
    with pytest.raises(TypeError, match="policy"):
        PlacementEngine(2, "lava", p, [0.5], [0.5])
