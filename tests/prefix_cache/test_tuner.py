"""The online alpha: shadow caches equal a replay from the first eviction, the choice is their
argmax (ties: the smallest alpha), deterministic, and bounded per request."""
import numpy as np
import pytest

from flashkit.prefix_cache import HybridModelConfig, PrefixCache
from flashkit.prefix_cache.simulator import simulate
from flashkit.prefix_cache.traces import TraceConfig, generate_trace
from flashkit.prefix_cache.tuner import GRID, AlphaTuner

CFG = HybridModelConfig()


@pytest.fixture(scope="module")
def trace():
    return generate_trace(TraceConfig(profile="sharegpt", sessions=40, seed=5))


def test_grid_is_log_spaced_from_zero_to_1e5():
    assert GRID[0] == 0 and GRID[-1] == 1e5 and len(GRID) == 14
    ratios = [b / a for a, b in zip(GRID[1:], GRID[2:])]
    assert all(abs(r - 10 / 3) < 0.01 or abs(r - 3) < 0.01 for r in ratios)


@pytest.mark.parametrize("window,margin", [(None, 0.0), (100, 0.0), (None, 0.5)])
def test_shadows_equal_a_replay_from_the_first_eviction(trace, window, margin):
    # the shadows' own choice: no probe or guard between it and the real cache's alpha
    cache = PrefixCache(CFG, 1.5e9, "marconi", tuner=AlphaTuner(
        grid=(0.0, 1.0, 30.0), every=20, window=window, margin=margin, guard=None, probe=False))
    snapshots, started_at = None, None
    for i, r in enumerate(trace):
        cache.serve(r["input_tokens"], r["output_tokens"])
        if cache.tuner.started and snapshots is None:
            # the oracle: independent copies made when the tuner started, replayed with each
            # fixed alpha over the rest of the trace
            snapshots, started_at = [cache.clone(a) for a in cache.tuner.grid], i + 1
    assert snapshots is not None
    rest = trace[started_at:]
    per_request = [[CFG.prefill_flops(s.serve(r["input_tokens"], r["output_tokens"]))
                    for r in rest] for s in snapshots]
    decided = len(rest) // 20 * 20
    lo = 0 if window is None else max(0, decided - window)
    want = [sum(f[lo:decided]) for f in per_request]
    np.testing.assert_allclose(cache.tuner.totals, want, rtol=1e-12)
    best = max(range(3), key=lambda i: (want[i], -i))
    if want[best] <= (1 + margin) * want[0]:
        best = 0  # LRU unless beaten by the margin
    assert cache.tuner.history[-1][1] == cache.tuner.grid[best] == cache.alpha
    if window is None:  # this trace and size reward FLOP efficiency, by less than 50%
        assert (best != 0) == (margin == 0.0)


def test_ties_go_to_the_smallest_alpha_and_lru_is_kept_where_nothing_differs(trace):
    # a cache so large that nothing is ever evicted: the tuner never starts, alpha stays 0
    r = simulate(trace, CFG, 1e15, "marconi")
    assert r["evictions"] == 0 and r["alpha"] == 0.0 and r["alpha_history"] == []
    # every shadow identical (one-alpha grid repeated is refused; equal totals pick the first)
    t = AlphaTuner(grid=(0.0, 1.0), every=1)
    t.totals, t._period, t.shadows = [0.0, 0.0], [5.0, 5.0], []
    t.seen = 0

    class C:
        config, requests = CFG, 0
    assert t.observe(C, [1, 2], [3], 0) == 0.0


def test_deterministic_and_recorded(trace):
    a = simulate(trace, CFG, 3e9, "marconi")
    b = simulate(trace, CFG, 3e9, "marconi")
    assert a["alpha_history"] == b["alpha_history"] and len(a["alpha_history"]) > 2
    assert a["flops_saved"] == b["flops_saved"] and a["alpha"] == a["alpha_history"][-1][1]
    steps = [n for n, _ in a["alpha_history"]]
    assert all(y - x == 50 for x, y in zip(steps[1:], steps[2:]))


@pytest.mark.parametrize("kw,msg", [
    (dict(grid=()), "grid"), (dict(grid=(1.0, 0.0)), "grid"), (dict(grid=(0.0, float("nan"))),
                                                             "grid"),
    (dict(every=0), "every"), (dict(every=10, window=15), "window"),
    (dict(every=10, window=5), "window"), (dict(margin=1.0), "margin"),
    (dict(margin=-0.1), "margin"), (dict(guard=1.0), "guard"), (dict(guard=-0.1), "guard"),
    (dict(grid=(1.0, 2.0)), "guard")])
def test_bad_tuner_arguments(kw, msg):
    with pytest.raises(ValueError, match=msg):
        AlphaTuner(**kw)
    with pytest.raises(TypeError, match="tuner"):
        PrefixCache(CFG, 1e9, tuner="fast")
