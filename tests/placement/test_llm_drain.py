"""The llm domain's instance drain (simulate_llm(..., drain_frac=...)) on hand-made traces whose
answer is known, in both event loops, and its argument checks. The compiled loop against the
Python loop on random drains: test_llm_native.py."""
import numpy as np
import pytest

from flashkit import jit
from flashkit.placement.llm_sim import MIG_PER_S, simulate_llm
from flashkit.placement.llm_trace import LLMTrace, generate_llm_trace

_HAS_CXX, _ = jit.get_backend("ninja").available()
BACKENDS = ["python"] + (["ninja"] if _HAS_CXX else [])


def _two_on_one(extra=()):
    """Steps of 1 s. Two short requests in the fit window (gone by t = 7), then A (arrives at
    10, ends at 31) and B (11, ends at 211) that every policy puts on instance 0, ``extra``
    (arrival, tokens) long requests after them, and one at t = 101 that sets the horizon. With
    drain_at 0.25 the drain starts at 1 + 0.25 x 100 = 26, its deadline 20 s later at 46; one
    slot every 2 s: 28, 30, ..., 46."""
    rows = [(0, 5), (1, 5), (10, 21), (11, 200), *extra, (101, 5)]
    t, g = np.array(rows, np.float64).T
    return LLMTrace(t, np.full(len(rows), 100, np.int64), g.astype(np.int64))


_DRAIN = dict(n_instances=2, kv_tokens=10_000, step_s=1.0, mode="oracle", kv_block_requests=0,
              drain_frac=0.5, drain_at=0.25, drain_deadline_s=20.0, mig_per_s=0.5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("policy", ["best-fit", "first-fit", "lava"])
def test_baselines_move_both_from_the_first_slots(policy, backend):
    # A and B migrate in the slots at 28 and 30, in either order; A would have ended at 31
    r = simulate_llm(_two_on_one(), policy, backend=backend, max_batch=8, **_DRAIN)
    assert (r["instances_drained"], r["drain_requests"]) == (1, 2)
    assert (r["migrations"], r["drain_exited"], r["migrations_at_deadline"]) == (2, 0, 0)
    assert r["drain_s_mean"] == 4.0 and r["migrations_failed"] == 0
    # B decodes on where it was: 200 tokens from 11, migrated or not, the last exit at 211
    assert r["makespan_s"] == 211.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_lars_waits_for_the_short_one_and_moves_the_long_one_last(backend):
    # slots pass while the slots left (floor((46 - t) / 2)) can move what is pending; A exits
    # at 31; B moves in the slot at 46, the last one that meets the deadline
    r = simulate_llm(_two_on_one(), "lars", backend=backend, max_batch=8, **_DRAIN)
    assert (r["migrations"], r["drain_exited"], r["migrations_at_deadline"]) == (1, 1, 0)
    assert r["drain_s_mean"] == 20.0 and r["migrations_failed"] == 0
    assert r["makespan_s"] == 211.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_room_anywhere_fails_in_every_slot_and_at_the_deadline(backend):
    # two batch slots per instance, C and D (long) fill instance 1: nothing can move. Best fit
    # tries one request per slot, 28 to 46 (10 slots), and B once more at the deadline; LARS
    # tries B only in the slot at 46 and at the deadline. A exits at 31; B stays
    tr = _two_on_one(extra=[(12, 300), (13, 300)])
    kw = dict(_DRAIN, max_batch=2, fit_fraction=0.3)      # the fit window: 2 of 7 requests
    bf = simulate_llm(tr, "best-fit", backend=backend, **kw)
    lars = simulate_llm(tr, "lars", backend=backend, **kw)
    for r, failed in ((bf, 11), (lars, 2)):
        assert (r["drain_requests"], r["migrations"], r["migrations_failed"]) == (2, 0, failed)
        assert r["drain_exited"] == 1
        assert r["drain_s_mean"] is None and r["tokens_per_s"] > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_short_deadline_moves_what_is_left_at_once(backend):
    # a 3 s deadline (at 29) and one slot every 4 s: no slot before it, both move then
    kw = dict(_DRAIN, drain_deadline_s=3.0, mig_per_s=0.25)
    for policy in ("best-fit", "lars"):
        r = simulate_llm(_two_on_one(), policy, backend=backend, max_batch=8, **kw)
        assert (r["migrations"], r["migrations_at_deadline"], r["drain_exited"]) == (2, 2, 0)
        assert r["drain_s_mean"] == 3.0


def test_no_drain_by_default():
    tr = generate_llm_trace(400, rate=20, seed=0)
    r = simulate_llm(tr, "lars", n_instances=4, kv_block_requests=0, backend="python")
    assert (r["migrations"], r["migrations_failed"], r["migrations_at_deadline"],
            r["instances_drained"], r["drain_requests"], r["drain_exited"]) == (0,) * 6
    assert r["drain_s_mean"] is None and MIG_PER_S == 16.0


@pytest.mark.parametrize("policy", ["best-fit", "lars"])
def test_every_drained_request_finishes_once(policy):
    # every request finishes and its tokens count once, whatever moved; the drained requests
    # are accounted for: moved, finished there, preempted off, or still there at the end
    tr = generate_llm_trace(1500, rate=60, seed=3)
    r = simulate_llm(tr, policy, n_instances=8, kv_block_requests=0, backend="python",
                     drain_frac=0.25, drain_deadline_s=5.0)
    assert r["migrations"] > 0 and r["instances_drained"] == 2
    assert r["tokens_per_s"] * r["makespan_s"] == pytest.approx(tr.generated.sum(), rel=1e-12)
    moved = r["migrations"] + r["drain_exited"] + r["drain_preempted"]
    assert moved == r["drain_requests"] and r["drain_s_mean"] is not None


@pytest.mark.parametrize("kw, match", [
    (dict(drain_frac=1.0), r"drain_frac must be a number in \[0, 1\)"),
    (dict(drain_frac=-0.1), "drain_frac must be"),
    (dict(drain_at=1.5), "drain_at must be"),
    (dict(drain_deadline_s=0.0), "drain_deadline_s must be a finite number > 0"),
    (dict(mig_per_s=float("inf")), "mig_per_s must be a finite number > 0"),
    (dict(drain_offset=-1), "drain_offset must be an int >= 0"),
    (dict(drain_frac=0.5, drain_deadline_s=1e6), "drain_deadline_s 1000000.0 runs past the trace"),
])
def test_drain_arguments_are_checked(kw, match):
    tr = generate_llm_trace(50, rate=20, seed=0)
    with pytest.raises(ValueError, match=match):
        simulate_llm(tr, "lars", n_instances=2, kv_block_requests=0, **kw)
