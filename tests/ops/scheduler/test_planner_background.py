"""The first "auto" plan on an empty cache does not wait for the ninja build of the C++
planner: the Python planner serves (the same plan) until the background build has loaded."""
import os
import threading

import numpy as np
import pytest

from flashkit import jit
from flashkit.ops.scheduler import background, naive_plan_split_kv, plan_split_kv
from flashkit.ops.scheduler import planner as planner_module
from tests.ops.scheduler.test_planner import assert_plans_equal


@pytest.fixture
def fresh_planner(request, monkeypatch):
    """An empty cache and a process that has not planned yet; returns the session's shared
    cache, where the planner's one real build of the test run lands."""
    if not jit.get_backend("ninja").available()[0]:
        pytest.skip("no C++ toolchain for the ninja backend")
    shared = os.environ["FLASHKIT_CACHE_DIR"]
    request.getfixturevalue("isolated_cache")
    monkeypatch.setattr(planner_module, "_module", None)
    monkeypatch.setattr(planner_module, "_ninja_ok", None)
    monkeypatch.setattr(background, "_builds", {})
    return shared


def test_first_plan_does_not_wait_for_the_build(fresh_planner, monkeypatch):
    gate, started = threading.Event(), threading.Event()
    real_build = jit.build

    def gated_build(spec, *a, **kw):  # the compiler "takes" until the test opens the gate
        started.set()
        assert gate.wait(600)
        # The build itself goes to the shared cache (a hit once any test has built it); the
        # main thread only waits from here on, so switching the variable is race-free.
        os.environ["FLASHKIT_CACHE_DIR"] = fresh_planner
        return real_build(spec, *a, **kw)

    monkeypatch.setattr(jit, "build", gated_build)
    rng = np.random.default_rng(3)
    lens = (32768 / np.arange(1, 65) ** 1.1).astype(np.int64)[rng.permutation(64)]
    ref = naive_plan_split_kv(lens.tolist(), 264, page_size=16)
    try:
        # The build cannot finish before the gate opens, so this plan came from Python.
        assert_plans_equal(plan_split_kv(lens, 264, page_size=16), ref)
        assert started.wait(60), "the first plan did not start the background build"
        assert planner_module._ninja_ok is None and planner_module._module is None
        assert_plans_equal(plan_split_kv(lens, 264, page_size=16), ref)  # still building
    finally:
        gate.set()
    spec = planner_module.planner_spec()
    assert background.wait(spec, timeout=600)
    out = plan_split_kv(lens, 264, page_size=16)
    assert planner_module._ninja_ok is True and planner_module._module is not None
    assert_plans_equal(out, ref)


def test_cached_planner_loads_at_once(fresh_planner, monkeypatch):
    monkeypatch.setenv("FLASHKIT_CACHE_DIR", fresh_planner)
    jit.build(planner_module.planner_spec())  # what `flashkit jit build scheduler` leaves

    def no_thread(*a, **kw):
        raise AssertionError("a cached planner must not start a build thread")

    monkeypatch.setattr(background._Build, "__init__", no_thread)
    lens = [5000, 17, 0, 900]
    assert_plans_equal(plan_split_kv(lens, 8), naive_plan_split_kv(lens, 8))
    assert planner_module._ninja_ok is True


def test_failed_background_build_falls_back(fresh_planner, monkeypatch):
    def broken(spec, *a, **kw):
        raise jit.JitCompileError(spec.uri, "source.cpp", "build.log", "c++: error: nope")

    monkeypatch.setattr(jit, "build", broken)
    lens = [300, 40, 4096]
    assert_plans_equal(plan_split_kv(lens, 8), naive_plan_split_kv(lens, 8))
    assert background.wait(planner_module.planner_spec(), timeout=60)
    assert_plans_equal(plan_split_kv(lens, 8), naive_plan_split_kv(lens, 8))
    assert planner_module._ninja_ok is False
