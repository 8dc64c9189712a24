"""Reprediction E[T - t | T > t] from fitted survival curves against closed forms."""
import math

import numpy as np
import pytest

from flashkit.placement import LifetimeModel, Predictor, SurvivalCurve, encode_classes

N = 200_000


def _phi(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def test_exponential_is_memoryless():
    x = np.random.default_rng(1).exponential(3.0, N)
    c = SurvivalCurve(x)
    t = np.array([0.0, 1.0, 3.0, 6.0, 12.0])
    np.testing.assert_allclose(c.remaining(t), 3.0, rtol=0.03)
    np.testing.assert_allclose(c.survival(t), np.exp(-t / 3.0), rtol=0.03, atol=1e-3)


def test_pareto_remaining_grows_linearly():
    a, xm = 2.5, 1.0
    x = xm * (1 + np.random.default_rng(2).pareto(a, N))
    t = np.array([0.2, 0.5, 1.0, 2.0, 4.0, 8.0])
    want = np.where(t >= xm, t / (a - 1), a * xm / (a - 1) - t)
    np.testing.assert_allclose(SurvivalCurve(x).remaining(t), want, rtol=0.05)


def test_lognormal_remaining():
    mu, s = 0.5, 1.0
    x = np.random.default_rng(3).lognormal(mu, s, N)
    for t in (0.1, 1.0, 3.0, 8.0):
        lt = math.log(t)
        cond_mean = (math.exp(mu + s * s / 2) * _phi((mu + s * s - lt) / s)
                     / (1 - _phi((lt - mu) / s)))
        assert SurvivalCurve(x).remaining(t) == pytest.approx(cond_mean - t, rel=0.05)


def test_censoring_kaplan_meier_recovers_the_mean():
    rng = np.random.default_rng(4)
    life = rng.exponential(2.0, N)
    cens = rng.exponential(4.0, N)             # independent censoring
    seen = np.minimum(life, cens)
    c = SurvivalCurve(seen, observed=life <= cens)
    assert c.remaining(1.0) == pytest.approx(2.0, rel=0.05)
    naive = SurvivalCurve(seen)                # ignoring censoring underestimates
    assert naive.mean < 0.8 * c.mean


def test_model_classes_and_pooled_fallback():
    rng = np.random.default_rng(5)
    life = np.concatenate([rng.exponential(1.0, 5000), rng.exponential(10.0, 5000), [50.0] * 3])
    cls, keys = encode_classes(np.array(["a"] * 5000 + ["b"] * 5000 + ["c"] * 3))
    assert keys == [("a",), ("b",), ("c",)]
    m = LifetimeModel(life, cls)
    assert m.remaining(0, 2.0) == pytest.approx(1.0, rel=0.1)
    assert m.remaining(1, 2.0) == pytest.approx(10.0, rel=0.1)
    assert m.curve(2) is m.global_curve        # 3 samples < min_samples
    assert m.curve(99) is m.global_curve
    # a Predictor predicts a class the model never saw (or a negative code) from that curve
    for mode in ("repredict", "one-shot"):
        p = Predictor(m, mode)
        p.bind(np.array([0, 7, -1]), np.zeros(3), np.full(3, np.inf))
        want = m.global_curve.remaining(4.0)
        assert p.remaining(1, 0.0) == p.remaining(2, 0.0) == pytest.approx(m.global_curve.mean)
        if mode == "repredict":
            assert p.remaining(1, 4.0) == pytest.approx(want, rel=0.1)
            assert list(p.remaining_many(np.array([1, 2]), 4.0)) == [p.remaining(1, 4.0)] * 2


def test_predictor_modes_and_noise():
    rng = np.random.default_rng(6)
    a = 2.0
    life = 1 + rng.pareto(a, N)
    m = LifetimeModel(life, np.zeros(N, np.int64))
    items = np.arange(3)
    starts, ends = np.zeros(3), np.array([5.0, 50.0, np.inf])
    rep = Predictor(m, "repredict", age0=0.01)
    rep.bind(np.zeros(3, np.int64), starts, ends)
    one = Predictor(m, "one-shot")
    one.bind(np.zeros(3, np.int64), starts, ends)
    orc = Predictor(m, "oracle")
    orc.bind(np.zeros(3, np.int64), starts, ends)
    # age 4: repredicted t/(a-1) = 4 (the table rounds ages down by < 19 %), one-shot 2 - 4 -> 0
    assert 4 / 2 ** 0.25 * 0.95 <= rep.remaining(0, 4.0) <= 4 * 1.05
    assert one.remaining(0, 4.0) == 0.0 and one.remaining(0, 0.5) == pytest.approx(1.5, rel=0.05)
    assert orc.remaining(1, 4.0) == 46.0
    np.testing.assert_allclose(rep.remaining_many(items, 4.0),
                               [rep.remaining(i, 4.0) for i in items])
    noisy = Predictor(m, "repredict", noise=1.0, seed=0)
    noisy.bind(np.zeros(20_000, np.int64), np.zeros(20_000), np.full(20_000, np.inf))
    logs = np.log(noisy.mult)
    assert logs.std() == pytest.approx(1.0, rel=0.05) and abs(logs.mean()) < 0.05
    # the noise knob degrades the oracle too: its true remaining time times the item's factor
    noisy_orc = Predictor(m, "oracle", noise=0.5, seed=3)
    noisy_orc.bind(np.zeros(3, np.int64), starts, ends)
    assert noisy_orc.remaining(1, 4.0) == pytest.approx(46.0 * noisy_orc.mult[1])
    assert noisy_orc.mult[1] != 1.0
    np.testing.assert_allclose(noisy_orc.remaining_many(items[:2], 4.0),
                               [1.0 * noisy_orc.mult[0], 46.0 * noisy_orc.mult[1]])


@pytest.mark.parametrize("bad, match", [
    (dict(durations=[-1.0]), "durations"), (dict(durations=[]), "durations"),
    (dict(durations=[1.0, 2.0], observed=[True]), "observed")])
def test_curve_bad_inputs(bad, match):
    with pytest.raises(ValueError, match=match):
        SurvivalCurve(**bad)


def test_model_and_predictor_bad_inputs():
    m = LifetimeModel([1.0, 2.0], np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="classes"):
        LifetimeModel([1.0, 2.0], [0.5, 1.0])
    with pytest.raises(ValueError, match="mode"):
        Predictor(m, "psychic")
    with pytest.raises(ValueError, match="noise"):
        Predictor(m, noise=-1)
    with pytest.raises(TypeError, match="model"):
        Predictor("model")
    with pytest.raises(ValueError, match="age"):
        SurvivalCurve([1.0]).remaining(-1.0)


def test_median_residual_life():
    rng = np.random.default_rng(7)
    c = SurvivalCurve(rng.exponential(2.0, N))                 # memoryless: 2 ln 2 at any age
    np.testing.assert_allclose(c.quantile_remaining([0.0, 1.0, 4.0]), 2 * math.log(2), rtol=0.03)
    a = 2.5
    c = SurvivalCurve(1 + rng.pareto(a, N))                    # t (2^(1/a) - 1) for t >= x_m
    t = np.array([1.0, 2.0, 4.0])
    np.testing.assert_allclose(c.quantile_remaining(t), t * (2 ** (1 / a) - 1), rtol=0.06)
    m = LifetimeModel(rng.exponential(2.0, 5000), np.zeros(5000, np.int64))
    p = Predictor(m, stat="median")
    p.bind(np.zeros(1, np.int64), np.zeros(1), np.ones(1))
    assert p.remaining(0, 0.0) == pytest.approx(2 * math.log(2), rel=0.08)
    with pytest.raises(ValueError, match="stat"):
        Predictor(m, stat="mode")


def test_alive_at_against_closed_forms():
    # P(T > t + d | T > t): exp(-d / mean) for the exponential; (t / (t + d))^alpha for a
    # Pareto past x_m, also past twice the oldest sample, where the curve is extrapolated in
    # the Pareto shape (which an exponential does not have: no such age for it)
    rng = np.random.default_rng(6)
    a, xm = 2.5, 1.0
    expo, pareto = rng.exponential(3.0, N), xm * (1 + rng.pareto(a, N))
    cases = ((expo, (0.0, 2.0, 6.0), lambda t, d: np.exp(-d / 3.0)),
             (pareto, (1.0, 3.0, 8.0, 2 * pareto.max()), lambda t, d: (t / (t + d)) ** a))
    for life, ages, closed in cases:
        m = LifetimeModel(life, np.zeros(N, np.int64))
        ages = np.array(ages)
        p = Predictor(m, "repredict", age0=0.01)
        p.bind(np.zeros(ages.size, np.int64), -ages, np.full(ages.size, np.inf))
        for d in (0.5, 2.0):
            got = p.alive_at(np.arange(ages.size), 0.0, d)
            np.testing.assert_allclose(got, closed(ages, d), rtol=0.08, atol=0.01)
    orc = Predictor(m, "oracle")
    orc.bind(np.zeros(3, np.int64), np.zeros(3), np.array([1.0, 2.0, 5.0]))
    np.testing.assert_array_equal(orc.alive_at(np.arange(3), 0.5, 2.5), [0.0, 0.0, 1.0])
