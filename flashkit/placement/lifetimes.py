"""Lifetime models: empirical survival curves per class and reprediction from age.

LAVA's point is that a lifetime *distribution* lets a scheduler repredict: an item that has
already lived ``t`` is expected to live ``E[T - t | T > t] = integral_t^inf S(u) du / S(t)``
more, which for heavy tails grows with age (Pareto: ``t / (alpha - 1)``), whereas a one-shot
point prediction only counts down to zero and then calls every survivor "about to exit".
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["SurvivalCurve", "LifetimeModel", "Predictor", "encode_classes", "PREDICTOR_MODES"]

PREDICTOR_MODES = ("repredict", "one-shot", "oracle")
# Reprediction table: ages on a log grid, four points per doubling (2^(1/4) = 1.19: an age is
# rounded down by at most 19 %), 96 points cover 2^24 times the first age.
_GRID_PER_DOUBLING = 4
_GRID_POINTS = 96


def _as_float_1d(name, x):
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError(f"{name} must hold finite values >= 0")
    return a


class SurvivalCurve:
    """Kaplan-Meier survival curve of one class, with remaining-lifetime reprediction.

    Parameters
    ----------
    durations : array [n]
        Lifetimes (or ages at the end of observation for censored items), >= 0.
    observed : bool array [n], optional
        False where the item was still alive (censored). Default: all observed.

    The curve is a step function truncated at the largest duration (the restricted mean). Where
    fewer than 10 items remain at risk, ``remaining`` extrapolates linearly in age (the Pareto
    shape): a survivor older than nearly everything seen is evidence of a long tail, not of an
    imminent exit.
    """

    def __init__(self, durations, observed=None):
        d = _as_float_1d("durations", durations)
        obs = np.ones(d.size, bool) if observed is None else np.asarray(observed, bool)
        if obs.shape != d.shape:
            raise ValueError(f"observed must have shape {d.shape}, got {obs.shape}")
        order = np.argsort(d, kind="stable")
        d, obs = d[order], obs[order]
        times, first = np.unique(d, return_index=True)
        at_risk = d.size - first                                  # alive just before each time
        deaths = np.add.reduceat(obs.astype(np.int64), first)
        surv = np.cumprod(1.0 - deaths / at_risk)                 # S on [times[j], times[j+1])
        # knots 0 = tau_0 < ... < tau_k = max duration; S_j constant on [tau_j, tau_j+1)
        if times[0] > 0:
            knots, s = np.concatenate([[0.0], times]), np.concatenate([[1.0], surv])
        else:
            knots, s = times, surv
        widths = np.diff(knots)
        s = s[:-1]                                                # truncated at the last knot
        tail = np.concatenate([np.cumsum((s * widths)[::-1])[::-1], [0.0]])
        self.knots, self.s, self.tail = knots, s, tail
        self.n = int(d.size)
        # Past the age where fewer than 10 items remain at risk the step curve is noise; from
        # there on remaining lifetime is extrapolated linearly in age (the Pareto shape).
        sparse = np.nonzero(s * self.n < 10)[0]
        self._t_ref = float(knots[sparse[0]]) if sparse.size else float(knots[-1])
        self._r_ref = self._remaining_scalar(self._t_ref) if self._t_ref > 0 else 0.0

    @property
    def mean(self) -> float:
        """Restricted mean lifetime (E[T] truncated at the largest duration)."""
        return float(self.tail[0])

    def survival(self, t):
        """S(t) = P(T > t) for ages ``t`` (array or scalar)."""
        t = np.asarray(t, dtype=np.float64)
        j = np.searchsorted(self.knots, t, side="right") - 1
        ok = j < self.s.size
        return np.where(ok, self.s[np.minimum(j, self.s.size - 1)], 0.0)

    def _remaining_scalar(self, t: float) -> float:
        j = int(np.searchsorted(self.knots, t, side="right")) - 1
        if j >= self.s.size or self.s[j] <= 0:
            return 0.0
        return (self.tail[j + 1] + self.s[j] * (self.knots[j + 1] - t)) / self.s[j]

    def remaining(self, t):
        """E[T - t | T > t] for ages ``t`` >= 0 (array or scalar), same shape as ``t``."""
        t = np.asarray(t, dtype=np.float64)
        if np.any(t < 0):
            raise ValueError("t (age) must be >= 0")
        j = np.searchsorted(self.knots, t, side="right") - 1
        jj = np.minimum(j, self.s.size - 1)
        sj = self.s[jj]
        inside = (j < self.s.size) & (sj > 0) & ((t < self._t_ref) | (self._t_ref <= 0))
        with np.errstate(divide="ignore", invalid="ignore"):
            r = (self.tail[jj + 1] + sj * (self.knots[jj + 1] - t)) / sj
            beyond = self._r_ref * t / self._t_ref if self._t_ref > 0 else np.zeros_like(t)
        return np.where(inside, r, beyond)


    def _raw_quantile(self, t, q):
        target = (1 - q) * self.survival(t)
        # s is non-increasing: the first interval whose S <= target starts at that knot
        j = np.searchsorted(-self.s, -target, side="left")
        return np.maximum(self.knots[np.minimum(j, self.knots.size - 1)] - t, 0.0)

    def quantile_remaining(self, t, q: float = 0.5):
        """The ``q`` quantile of T - t given T > t (the median residual life for q = 0.5): the
        age where S first falls to (1 - q) S(t), minus t; extrapolated like :meth:`remaining`
        where the curve is sparse."""
        if not 0 < q < 1:
            raise ValueError(f"q must be in (0, 1), got {q!r}")
        t = np.asarray(t, dtype=np.float64)
        if np.any(t < 0):
            raise ValueError("t (age) must be >= 0")
        r = self._raw_quantile(t, q)
        if self._t_ref <= 0:
            return r
        ref = float(self._raw_quantile(np.float64(self._t_ref * (1 - 1e-9)), q))
        return np.where(t < self._t_ref, r, ref * t / self._t_ref)


def encode_classes(*features):
    """Integer class codes for rows of categorical features.

    Parameters
    ----------
    *features : arrays [n] each (ints or strings), e.g. vm type, tenant, prompt-length bucket

    Returns
    -------
    codes : int64 array [n], keys : list of the feature tuples, one per code
    """
    if not features:
        raise ValueError("features: pass at least one feature array")
    cols = [np.asarray(f) for f in features]
    n = cols[0].shape[0]
    if any(c.shape != (n,) for c in cols):
        raise ValueError("features must be 1-D arrays of one length")
    rows = list(zip(*[c.tolist() for c in cols]))
    keys: dict = {}
    codes = np.fromiter((keys.setdefault(r, len(keys)) for r in rows), np.int64, count=n)
    return codes, list(keys)


class LifetimeModel:
    """Survival curves per class, with a global curve for classes with too few samples.

    Parameters
    ----------
    lifetimes : array [n]
        Lifetimes (censored ones: age at the end of the trace), >= 0.
    classes : int array [n]
        Class code per item (see :func:`encode_classes`), >= 0.
    observed : bool array [n], optional
        False for censored items (still alive at the end of the trace).
    min_samples : int
        A class with fewer items uses the global curve (50: below that the tail is noise).
    """

    def __init__(self, lifetimes, classes, observed=None, *, min_samples: int = 50):
        life = _as_float_1d("lifetimes", lifetimes)
        cls = np.asarray(classes)
        if cls.shape != life.shape or not np.issubdtype(cls.dtype, np.integer) or np.any(cls < 0):
            raise ValueError(f"classes must be non-negative ints of shape {life.shape}")
        if not isinstance(min_samples, int) or min_samples < 1:
            raise ValueError(f"min_samples must be an int >= 1, got {min_samples!r}")
        obs = None if observed is None else np.asarray(observed, bool)
        self.global_curve = SurvivalCurve(life, obs)
        self.n_classes = int(cls.max()) + 1
        self.curves: list[SurvivalCurve] = []
        counts = np.bincount(cls, minlength=self.n_classes)
        for c in range(self.n_classes):
            if counts[c] >= min_samples:
                m = cls == c
                self.curves.append(SurvivalCurve(life[m], None if obs is None else obs[m]))
            else:
                self.curves.append(self.global_curve)

    def curve(self, c: int) -> SurvivalCurve:
        """The curve for class ``c`` (the global one for an unseen class)."""
        return self.curves[c] if 0 <= c < self.n_classes else self.global_curve

    def remaining(self, c: int, age):
        """E[T - age | T > age] for class ``c``."""
        return self.curve(c).remaining(age)


class Predictor:
    """Per-item remaining-lifetime predictions for a simulator: repredicted, one-shot or oracle.

    Parameters
    ----------
    model : LifetimeModel
    mode : 'repredict' (E[T - age | T > age] from the class curve, updated as the item ages),
        'one-shot' (the class mean at arrival, counting down: max(mean - age, 0)) or 'oracle'
        (the true remaining lifetime; an upper bound for what prediction can buy).
    noise : float >= 0
        Prediction quality knob: each item's prediction is multiplied by exp(noise * z), z a
        standard normal drawn once per item (noise 1.0: a factor 2.7 off at one sigma), in
        every mode: an oracle with noise is the true remaining time that far off.
    age0 : float > 0
        First age of the reprediction table (ages below it use the age-0 prediction).
    stat : 'mean' (E[T - age | T > age]) or 'median' (the median residual life: for heavy
        tails the mean is set by the few very long items, the median by the typical one).
    seed : int
    """

    def __init__(self, model: LifetimeModel, mode: str = "repredict", *, noise: float = 0.0,
                 age0: float = 1.0, stat: str = "mean", seed: int = 0):
        if not isinstance(model, LifetimeModel):
            raise TypeError(f"model must be a LifetimeModel, got {type(model).__name__}")
        if mode not in PREDICTOR_MODES:
            raise ValueError(f"mode must be one of {PREDICTOR_MODES}, got {mode!r}")
        if not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise >= 0):
            raise ValueError(f"noise must be a finite float >= 0, got {noise!r}")
        if not (isinstance(age0, (int, float)) and age0 > 0):
            raise ValueError(f"age0 must be > 0, got {age0!r}")
        self.model, self.mode, self.noise, self.seed = model, mode, float(noise), seed
        self.age0 = float(age0)
        ages = np.concatenate([[0.0], age0 * 2.0 ** (np.arange(_GRID_POINTS) / _GRID_PER_DOUBLING)])
        if stat not in ("mean", "median"):
            raise ValueError(f"stat must be 'mean' or 'median', got {stat!r}")
        self.stat = stat
        # one row per class, and a last one (the pooled curve) for classes the model never saw
        curves = [model.curve(c) for c in range(model.n_classes + 1)]
        if stat == "mean":
            rows = [c.remaining(ages) for c in curves]
        else:
            rows = [c.quantile_remaining(ages) for c in curves]
        self.table = np.stack(rows)
        self.means = self.table[:, 0].copy()
        self.table_l, self.means_l = self.table.tolist(), self.means.tolist()
        self._survival = None               # survival_table(), once alive_at needs it
        self._items = 0

    def bind(self, classes, starts, ends):
        """Fix the simulated items: class [n], arrival time [n], true end time [n] (for
        'oracle'; np.inf where unknown). Draws each item's noise factor. A class the model
        has no curve for (an LLM prompt longer than any of the fit window) is predicted from
        the pooled curve, as :meth:`LifetimeModel.curve` does."""
        cls = np.asarray(classes, np.int64)
        k = self.model.n_classes
        self.cls = np.where((cls >= 0) & (cls < k), cls, k)
        self.start = np.asarray(starts, np.float64)
        self.end = np.asarray(ends, np.float64)
        n = self.cls.size
        if self.start.shape != (n,) or self.end.shape != (n,):
            raise ValueError("classes, starts and ends must be 1-D arrays of one length")
        rng = np.random.default_rng(self.seed)
        self.mult = np.exp(self.noise * rng.standard_normal(n)) if self.noise else np.ones(n)
        self.cls_l = self.cls.tolist()
        self.start_l = self.start.tolist()
        self.mult_l = self.mult.tolist()
        self.end_l = self.end.tolist()
        self._items = n

    def remaining(self, item: int, now: float) -> float:
        """Predicted remaining lifetime of a bound item at time ``now``."""
        age = now - self.start_l[item]
        if self.mode == "repredict":
            k = 0 if age < self.age0 else min(
                _GRID_POINTS, 1 + int(_GRID_PER_DOUBLING * math.log2(age / self.age0)))
            return self.table_l[self.cls_l[item]][k] * self.mult_l[item]
        if self.mode == "oracle":
            return max(self.end_l[item] - now, 0.0) * self.mult_l[item]
        return max(self.means_l[self.cls_l[item]] * self.mult_l[item] - age, 0.0)

    def alive_at(self, items: np.ndarray, now: float, until: float) -> np.ndarray:
        """P(item still alive at ``until`` | alive at ``now``) for an int array of bound items.

        'repredict': ``S(age + d) / S(age)`` from the item's class curve, ``d = (until - now) /
        mult`` (the noisy item believes its remaining time ``mult`` x the curve's); where the
        curve is sparse (fewer than 10 at risk) the Pareto shape that :meth:`SurvivalCurve.remaining`
        extrapolates, ``(age / (age + d))^(1 + age / remaining)``. 'one-shot' and 'oracle': 1
        where the predicted remaining time outlasts ``until - now``, else 0."""
        items = np.asarray(items, np.int64)
        d = until - now
        if self.mode != "repredict":
            return (self.remaining_many(items, now) > d).astype(np.float64)
        knots, surv, bases, t_ref = self.survival_table()
        age = np.maximum(now - self.start[items], 0.0)
        cls = self.cls[items]
        base, half = bases[cls], bases[1] / 2 if bases.size > 1 else np.inf
        s0 = surv[np.searchsorted(knots, base + np.minimum(age, half), side="right") - 1]
        s1 = surv[np.searchsorted(knots, base + np.minimum(age + d / self.mult[items], half),
                                  side="right") - 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = s1 / s0
            r = np.maximum(self.remaining_many(items, now) / self.mult[items], 1e-12)
            pareto = (age / (age + d / self.mult[items])) ** (1 + age / r)
        dense = (s0 > 0) & (age < t_ref[cls])
        return np.where(dense, ratio, np.where(age > 0, pareto, 0.0))

    def survival_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every class's step curve in one sorted array, built once: (knots [k], S [k] on
        [knots[i], knots[i + 1]), base [classes], t_ref [classes]). Class c's knots are shifted
        by base[c] = c x a span longer than any age, S beyond a curve's last knot is 0, so one
        searchsorted looks up S(age) for items of mixed classes (ages up to half the span, 1e6
        time units); t_ref: where each curve turns sparse (:class:`SurvivalCurve`)."""
        if self._survival is None:
            curves = [self.model.curve(c) for c in range(self.model.n_classes + 1)]
            span = max(1e6, 4.0 * max(float(c.knots[-1]) for c in curves))
            base = span * np.arange(len(curves), dtype=np.float64)
            self._survival = (np.concatenate([c.knots + b for c, b in zip(curves, base)]),
                              np.concatenate([np.append(c.s, 0.0) for c in curves]), base,
                              np.array([c._t_ref for c in curves]))
        return self._survival

    def remaining_many(self, items: np.ndarray, now: float) -> np.ndarray:
        """Vectorized :meth:`remaining` for an int array of bound items."""
        age = now - self.start[items]
        if self.mode == "oracle":
            return np.maximum(self.end[items] - now, 0.0) * self.mult[items]
        if self.mode == "one-shot":
            return np.maximum(self.means[self.cls[items]] * self.mult[items] - age, 0.0)
        with np.errstate(divide="ignore"):
            k = 1 + np.floor(_GRID_PER_DOUBLING * np.log2(np.maximum(age, 1e-300) / self.age0))
        k = np.where(age < self.age0, 0, np.clip(k, 0, _GRID_POINTS)).astype(np.int64)
        return self.table[self.cls[items], k] * self.mult[items]
