"""The compiled llm event loop (llm_native.py) against the Python loop (the reference): every
metric and every sampled value equal, for every policy and predictor mode; backend selection,
the fallback and argument checks."""
import logging

import numpy as np
import pytest

from flashkit import jit
from flashkit.placement import LifetimeModel, PlacementEngine, Predictor, make_policy
from flashkit.placement import engine as engine_mod
from flashkit.placement import llm_native
from flashkit.placement.llm_sim import simulate_llm
from flashkit.placement.llm_trace import LLMTrace, generate_llm_trace

_HAS_CXX, _WHY = jit.get_backend("ninja").available()
native = pytest.mark.skipif(not _HAS_CXX, reason=f"the ninja backend cannot build here: {_WHY}")


def _metrics(r):
    return {k: v for k, v in r.items() if k not in ("seconds", "kv_seconds", "backend")}


# (requests, rate /s, instances, kv_tokens, max_batch, policy, mode, noise, balance, seed) and
# what each exercises in the reference (counted once with an instrumented engine)
CASES = [
    # a queue of 240 s on average, 1,509 preemptions, 419 stale-index retries
    (3000, 200, 4, 16384, 64, "best-fit", "repredict", 0.0, 0.0, 1),
    (3000, 60, 12, 32768, 64, "lava", "repredict", 0.0, 0.0, 2),
    (3000, 60, 12, 32768, 64, "first-fit", "one-shot", 0.5, 0.0, 3),
    # noisy oracle predictions under one token: the admission retry ends (it spun for ever
    # before the reference asked for the token admission needs)
    (3000, 300, 7, 32768, 64, "nilas", "oracle", 0.5, 0.5, 3),
    # 40 % of the instances empty, cells of more than 32 hosts that all fit
    (3000, 100, 70, 32768, 32, "lava", "repredict", 1.0, 0.0, 4),
    (3000, 100, 70, 32768, 32, "lars", "oracle", 0.0, 2.0, 5),
    (3000, 100, 70, 16384, 64, "best-fit", "one-shot", 0.0, 1.0, 6),
    # one request per instance: the empty cell (more than 32 hosts, ids up to 69) is searched
    # host by host with more than 32 fitting, 440 times
    (1500, 4, 70, 16384, 1, "best-fit", "repredict", 0.0, 0.0, 11),
    (1500, 4, 70, 16384, 1, "first-fit", "oracle", 0.25, 0.0, 14),
    (1500, 12, 70, 16384, 2, "nilas", "one-shot", 0.0, 0.5, 13),
    # 600 reprediction passes over a long queue
    (3000, 100, 3, 65536, 256, "nilas", "repredict", 2.0, 0.0, 8),
]


@native
@pytest.mark.parametrize("n, rate, hosts, kv, batch, policy, mode, noise, balance, seed", CASES,
                         ids=[f"{c[5]}-{c[6]}-{c[2]}hosts-noise{c[7]}-bal{c[8]}" for c in CASES])
def test_compiled_loop_matches_python(n, rate, hosts, kv, batch, policy, mode, noise, balance,
                                      seed):
    tr = generate_llm_trace(n, rate=rate, seed=seed)
    kw = dict(n_instances=hosts, kv_tokens=kv, max_batch=batch, mode=mode, noise=noise,
              balance=balance, kv_block_requests=300, seed=seed)
    want = simulate_llm(tr, policy, backend="python", **kw)
    got = simulate_llm(tr, policy, backend="ninja", **kw)
    assert (want["backend"], got["backend"]) == ("python", "ninja")
    # exactly: the same doubles in the same order, every sampled value of the series included
    assert _metrics(got) == _metrics(want)
    assert len(want["series"]["t_s"]) >= 390
    assert want["preemptions"] > 0 or want["empty_hosts_mean"] > 0


# the same with an instance drain: (..., seed, drain_frac, drain_deadline_s, mig_per_s), the
# drain starting at 0.2 of the measured window. Every case has failed migrations (no instance
# with room: retried per slot, and at the deadline) and all but the last moves some at the
# deadline; first-fit and lars on 40 instances also preempt requests off drained instances
DRAIN_CASES = [
    (2000, 200, 4, 16384, 64, "best-fit", "repredict", 0.0, 0.0, 1, 0.5, 3.0, 16.0),
    (2000, 200, 4, 16384, 64, "lars", "repredict", 0.0, 1.0, 1, 0.5, 3.0, 16.0),
    (2000, 60, 12, 32768, 64, "lars", "repredict", 1.0, 0.0, 2, 0.25, 5.0, 4.0),
    (2000, 60, 12, 32768, 64, "lava", "one-shot", 0.5, 0.0, 3, 0.25, 5.0, 4.0),
    (2000, 300, 7, 32768, 64, "nilas", "oracle", 0.5, 0.5, 3, 0.3, 2.0, 30.0),
    (2000, 300, 7, 32768, 64, "lars", "oracle", 0.25, 0.0, 3, 0.3, 1.5, 10.0),
    (2000, 100, 40, 32768, 32, "first-fit", "repredict", 0.0, 0.0, 4, 0.5, 5.0, 50.0),
    (2000, 100, 40, 32768, 32, "lars", "one-shot", 0.0, 2.0, 5, 0.5, 5.0, 50.0),
    # three instances, one drained: no failures, LARS waits and empties it at the deadline
    (2000, 100, 3, 65536, 256, "lars", "repredict", 2.0, 0.0, 8, 0.34, 8.0, 2.0),
]


@native
@pytest.mark.parametrize("n, rate, hosts, kv, batch, policy, mode, noise, balance, seed, frac, "
                         "deadline, mig", DRAIN_CASES,
                         ids=[f"{c[5]}-{c[6]}-{c[2]}hosts-drain{c[10]}" for c in DRAIN_CASES])
def test_compiled_loop_matches_python_with_a_drain(n, rate, hosts, kv, batch, policy, mode, noise,
                                                   balance, seed, frac, deadline, mig):
    tr = generate_llm_trace(n, rate=rate, seed=seed)
    kw = dict(n_instances=hosts, kv_tokens=kv, max_batch=batch, mode=mode, noise=noise,
              balance=balance, kv_block_requests=0, seed=seed, drain_frac=frac, drain_at=0.2,
              drain_deadline_s=deadline, mig_per_s=mig)
    want = simulate_llm(tr, policy, backend="python", **kw)
    assert _metrics(simulate_llm(tr, policy, backend="ninja", **kw)) == _metrics(want)
    assert want["migrations"] > 0 and want["instances_drained"] >= 1
    assert want["migrations_failed"] > 0 or want["drain_s_mean"] is not None
    assert want["drain_requests"] >= (want["migrations"] + want["drain_exited"]
                                      + want["drain_preempted"])


def test_ordered_index_searches_the_lowest_ids():
    # 40 hosts with ids 100-139 in one cell: their set's table has 128 slots, so its order
    # wraps (128 first); the ordered index compares the 32 lowest fitting ids, whatever the set
    from flashkit.placement.index import HostIndex

    idx = HostIndex(200, 14, 16, ordered=True)
    for h in range(100, 140):
        idx.put(h, 7)
    # 100-132 but 105 are the 32 lowest that fit; the key prefers the highest id among them
    assert idx.pick(7, False, lambda h: h != 105, lambda h: -h) == 132
    with pytest.raises(TypeError, match="ordered must be a bool"):
        PlacementEngine(2, make_policy("lava"), _bound_predictor(), [0.5], [0.5], ordered=1)


def _bound_predictor():
    model = LifetimeModel(np.ones(60), np.zeros(60, np.int64))
    p = Predictor(model)
    p.bind([0], [0.0], [1.0])
    return p


@native
@pytest.mark.parametrize("seed", range(8))
def test_compiled_loop_matches_python_on_random_settings(seed):
    # the settings the fixed cases keep at their defaults too: reprediction period, samples,
    # fit window, step length, balance weights off the usual values, 1 and 130 instances
    rng = np.random.default_rng(seed)
    hosts = int(rng.choice([1, 2, 5, 16, 33, 65, 130]))
    batch = int(rng.choice([1, 3, 32, 100, 256]))
    kw = dict(n_instances=hosts, max_batch=batch, kv_tokens=int(rng.choice([16384, 20000, 65536])),
              mode=str(rng.choice(["repredict", "one-shot", "oracle"])),
              noise=float(rng.choice([0.0, 0.25, 2.0])), balance=float(rng.choice([0, 1 / 32, 3.0])),
              refresh_steps=float(rng.choice([16.0, 1000.5])), samples=int(rng.choice([10, 400])),
              fit_fraction=float(rng.choice([0.3, 0.9])), step_s=float(rng.choice([0.01, 0.1])),
              kv_block_requests=0, seed=seed)
    policy = str(rng.choice(["first-fit", "best-fit", "nilas", "lava", "lars"]))
    tr = generate_llm_trace(int(rng.integers(300, 1500)),
                            rate=float(rng.uniform(0.5, 40) * hosts * batch / 64 + 1), seed=seed)
    # and a drain in most: a deadline within the trace, slots from scarce to plenty
    n = len(tr)
    window = tr.arrival[-1] - tr.arrival[max(1, int(kw["fit_fraction"] * n)) - 1]
    kw.update(drain_frac=float(rng.choice([0.0, 0.3, 0.6])), drain_at=0.3,
              drain_deadline_s=float(window * rng.uniform(0.05, 0.65)),
              mig_per_s=float(rng.choice([2.0, 16.0, 200.0])), drain_offset=int(rng.integers(3)))
    want = simulate_llm(tr, policy, backend="python", **kw)
    assert _metrics(simulate_llm(tr, policy, backend="ninja", **kw)) == _metrics(want)


def test_the_loop_is_a_shipped_spec():
    from flashkit.jit import registry

    spec = llm_native.llm_loop_spec()
    assert (spec.backend, spec.template) == ("ninja", "placement/llm_loop.cpp.j2")
    assert registry._SHIPPED["placement"]("sm_90") == [spec]   # what `flashkit jit build` builds


@pytest.fixture
def fresh_probe(monkeypatch):
    """llm_native as if no run had asked for the compiled loop yet."""
    monkeypatch.setattr(llm_native, "_why_not", None)
    monkeypatch.setattr(llm_native, "_warned", False)


@native
def test_auto_runs_compiled_and_records_it(fresh_probe):
    tr = generate_llm_trace(300, rate=20, seed=0)
    assert simulate_llm(tr, "lava", n_instances=4, kv_block_requests=0)["backend"] == "ninja"
    assert simulate_llm(tr, "lava", n_instances=4, kv_block_requests=0,
                        backend="python")["backend"] == "python"


def test_auto_falls_back_to_python_with_one_warning(fresh_probe, monkeypatch, caplog):
    monkeypatch.setattr(jit.get_backend("ninja"), "available",
                        lambda: (False, "missing a C++ compiler"))
    tr = generate_llm_trace(300, rate=20, seed=0)
    with caplog.at_level(logging.WARNING, logger="flashkit.placement"):
        runs = [simulate_llm(tr, "best-fit", n_instances=4, kv_block_requests=0)
                for _ in range(2)]
    assert [r["backend"] for r in runs] == ["python", "python"]
    warned = [rec.getMessage() for rec in caplog.records if "llm event loop" in rec.getMessage()]
    assert len(warned) == 1 and "missing a C++ compiler" in warned[0]
    with pytest.raises(jit.BackendUnavailableError, match="missing a C\\+\\+ compiler"):
        simulate_llm(tr, "best-fit", n_instances=4, kv_block_requests=0, backend="ninja")


def test_a_failed_build_falls_back_naming_its_log(fresh_probe, monkeypatch, caplog):
    def broken(spec):
        raise jit.JitCompileError(spec.uri, "/x/source.cpp", "/x/build.log", "error: no")

    monkeypatch.setattr(jit, "load", broken)
    tr = generate_llm_trace(300, rate=20, seed=0)
    with caplog.at_level(logging.WARNING, logger="flashkit.placement"):
        r = simulate_llm(tr, "lava", n_instances=4, kv_block_requests=0)
    assert r["backend"] == "python"
    assert "failed to compile llm_loop_ninja" in caplog.text and "(log: /x/build.log)" in caplog.text


def test_more_hosts_than_the_scan_run_in_python(monkeypatch):
    # engines above engine._SCAN_HOSTS walk the cells; only the scan is compiled
    monkeypatch.setattr(engine_mod, "_SCAN_HOSTS", 4)
    tr = generate_llm_trace(300, rate=20, seed=0)
    assert simulate_llm(tr, "lava", n_instances=6, kv_block_requests=0)["backend"] == "python"
    with pytest.raises(ValueError, match="up to 512 instances"):
        simulate_llm(tr, "lava", n_instances=6, kv_block_requests=0, backend="ninja")


@pytest.mark.parametrize("backend", ["cuda", "Ninja", None, 1])
def test_backend_must_be_one_of_three(backend):
    tr = generate_llm_trace(50, rate=20, seed=0)
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'python', 'ninja'\)"):
        simulate_llm(tr, "lava", n_instances=2, kv_block_requests=0, backend=backend)


@pytest.mark.parametrize("kw, match", [(dict(samples=0), "samples must be an int >= 1"),
                                       (dict(refresh_steps=0.0), "refresh_steps must be"),
                                       (dict(refresh_steps=float("nan")), "refresh_steps must be")])
def test_loop_settings_are_checked(kw, match):
    # refresh_steps 0 would never let the loop's clock pass the first reprediction
    tr = generate_llm_trace(50, rate=20, seed=0)
    with pytest.raises(ValueError, match=match):
        simulate_llm(tr, "lava", n_instances=2, kv_block_requests=0, **kw)


@native
@pytest.mark.parametrize("mode", ["repredict", "one-shot"])
def test_a_prompt_class_unseen_in_the_fit_window_uses_the_pooled_curve(mode):
    # the fit window (first half) has only short prompts: the second half's 8,000-token prompt
    # (class 12) has no curve of its own and is predicted from the pooled one, in both loops
    ctx = np.full(200, 100, np.int64)
    ctx[150] = 8000
    tr = LLMTrace(np.arange(200) * 0.1, ctx, np.full(200, 20, np.int64))
    kw = dict(n_instances=2, kv_block_requests=0, mode=mode)
    a = simulate_llm(tr, "lava", backend="ninja", **kw)
    b = simulate_llm(tr, "lava", backend="python", **kw)
    assert _metrics(a) == _metrics(b)
    assert a["tokens_per_s"] > 0


@native
def test_the_binding_guards_its_arrays():
    llm_native.native_available()
    one = np.ones(3)
    ints = np.ones(3, np.int64)
    kw = dict(arrive=one, ctx0=ints, gen0=ints, cls=ints[:2], mult=one, start=one, end=one,
              mode=0, table=np.ones((2, 97)), means=np.ones(2), age0=1.0,
              grid_per_doubling=4.0, grid_points=96, hosts=2, q=16, n_classes=14, r0=16.0,
              statics=np.zeros((14, 1, 15 * 17 * 17)), balance=0.0, by_id=1.0,
              uses_lifetime=True, key_is_id=False, cap=1000.0, max_batch=4, next_sample=0.0,
              sample_dt=1.0, horizon=1.0, refresh_steps=256.0, probe=10.0, step_s=0.025,
              drain_t=np.inf, drain_len=0.0, drain_k=0, drain_offset=0, mig_rate=1.0,
              mig_dt=1.0, rank=ints, just_in_time=False, knots=np.zeros(0), surv=np.zeros(0),
              base=np.zeros(0), t_ref=np.zeros(0))
    with pytest.raises(ValueError, match="shape \\[n\\]"):
        llm_native._module.run(**kw)
    kw["cls"] = np.array([0, 5, 0])
    with pytest.raises(ValueError, match="class beyond"):
        llm_native._module.run(**kw)
    kw["cls"], kw["mult"] = ints * 0, np.array([1.0, np.nan, 1.0])
    with pytest.raises(ValueError, match="must be finite"):
        llm_native._module.run(**kw)
    kw["mult"], kw["statics"] = one, np.zeros((14, 2, 10))
    with pytest.raises(ValueError, match="statics"):
        llm_native._module.run(**kw)
    kw["statics"] = np.zeros((14, 1, 15 * 17 * 17))
    kw.update(drain_t=0.5, drain_len=10.0, drain_k=1, rank=ints[:2])
    with pytest.raises(ValueError, match="rank must have shape"):
        llm_native._module.run(**kw)
    kw.update(rank=ints, just_in_time=True)
    with pytest.raises(ValueError, match="survival table"):
        llm_native._module.run(**kw)
    kw.update(just_in_time=False, mig_rate=0.0)
    with pytest.raises(ValueError, match="mig_rate"):
        llm_native._module.run(**kw)
