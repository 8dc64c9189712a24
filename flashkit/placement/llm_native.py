"""The llm-domain event loop compiled: llm_sim's loop as C++ host code (csrc/placement/llm_loop.h,
bound by templates/placement/llm_loop.cpp.j2), built by flashkit's ninja JIT backend.

What it runs: the event loop of :func:`flashkit.placement.simulate_llm` (arrivals, departures,
"KV full" preemptions, the hourly-style reprediction pass every ``refresh_steps``, the sampled
series, the instance drain and its migrations) with the engine's host scan, release and refresh
and the predictor's ``remaining`` and ``alive_at``. What stays in Python: everything fixed
during a run, passed in as arrays (the policy's cell scores per lifetime class and tilt from
``Policy.cell_score``, the predictor's table, survival table, means, noise factors and classes,
arrivals, contexts, generated tokens, the baselines' drain order), and what is computed from the
loop's output (the metrics, the KV-block replay). The Python loop (llm_sim._python_loop) is the
reference: tests/placement/test_llm_native.py runs both on random traces for every policy and
predictor mode and asserts every metric and every sampled value equal.

Engines of up to 512 instances (the engine's host scan, engine._SCAN_HOSTS); above that the
Python loop's cell walk runs. A cell of more than 32 hosts is searched in ascending host id in
both (the llm engine's index is built with ``ordered=True``).
"""
from __future__ import annotations

import functools
import logging

import numpy as np

from flashkit import jit

from .lifetimes import _GRID_PER_DOUBLING, _GRID_POINTS
from .policies import LARS, FirstFit

__all__ = ["BACKENDS", "llm_loop_spec", "shipped_specs", "native_available", "resolve_backend",
           "run_llm_loop"]

log = logging.getLogger("flashkit.placement")

BACKENDS = ("auto", "python", "ninja")
_MODES = {"repredict": 0, "one-shot": 1, "oracle": 2}


@functools.lru_cache(maxsize=None)
def llm_loop_spec() -> jit.KernelSpec:
    """The one ninja spec of the loop (nothing in it varies)."""
    return jit.KernelSpec.create("llm_loop_ninja", "ninja", "placement/llm_loop.cpp.j2", {})


def shipped_specs(arch: str) -> list[jit.KernelSpec]:
    """What ``flashkit jit build`` prebuilds; host code, so ``arch`` does not matter."""
    return [llm_loop_spec()]


jit.register_shipped("placement", shipped_specs)

_module = None          # the loaded extension, once a run has needed it
_why_not: str | None = None   # why the compiled loop does not run here ("": it does), once known
_warned = False


def native_available() -> tuple[bool, str]:
    """(whether the compiled loop loads here, why not): a C++ compiler, ninja and pybind11,
    then the build (once; cached on disk by the JIT) and the import. Known after one call."""
    global _module, _why_not
    if _why_not is None:
        ok, why = jit.get_backend("ninja").available()
        if ok:
            try:
                _module = jit.load(llm_loop_spec())
            except jit.JitError as exc:     # one line; a compile error names its build log
                log_path = getattr(exc, "log_path", None)
                ok, why = False, str(exc).splitlines()[0] + (f" (log: {log_path})"
                                                             if log_path else "")
        _why_not = "" if ok else why
    return not _why_not, _why_not


def resolve_backend(backend: str, scan: bool) -> str:
    """The loop ``backend`` runs: ``"python"`` or ``"ninja"``. ``scan``: whether the engine
    scans its hosts (at most 512 instances), the only placement path compiled."""
    global _warned
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "python":
        return "python"
    if not scan:
        if backend == "ninja":
            raise ValueError("backend='ninja' runs engines of up to 512 instances (the host "
                             "scan); pass n_instances <= 512, or backend='auto' or 'python'")
        return "python"
    ok, why = native_available()
    if ok:
        return "ninja"
    if backend == "ninja":
        raise jit.BackendUnavailableError(f"the compiled llm loop does not run here: {why}")
    if not _warned:
        log.warning("llm event loop: %s; using the Python loop (same results, slower)", why)
        _warned = True
    return "python"


def _cell_scores(eng) -> np.ndarray:
    """Policy.cell_score per (lifetime class, tilt + q), flat per cell, as the engine caches
    them: tilt is the item's buckets nb0 - nb1 when the policy has a balance term, else 0."""
    pol, q = eng.policy, eng.index.q
    tilts = range(-q, q + 1) if pol.balance else (0,)
    return np.stack([np.stack([np.asarray(pol.cell_score(eng, c, t), np.float64).reshape(-1)
                               for t in tilts]) for c in range(eng.n_classes)])


def run_llm_loop(trace, eng, pred, arrive, *, cap, max_batch, step_s, t_cut, horizon, sample_dt,
                 refresh_steps, probe, drain_t, drain_len, drain_k, drain_offset, mig_rate, mig_dt,
                 rank) -> dict:
    """llm_sim._python_loop in compiled code: the same arguments, the same dict (counters and
    the series as lists). ``eng``: a fresh engine (nothing placed) that scans its hosts;
    ``pred``: bound to the requests (its arrays are read, not written). The drain's order is
    the policy's ``drain_next``: LARS's just-in-time one (``alive_at`` from the predictor's
    survival table, passed in), else the baselines' (``rank``, drawn in Python)."""
    ok, why = native_available()
    if not ok:
        raise jit.BackendUnavailableError(f"the compiled llm loop does not run here: {why}")
    if not eng.scan or eng.index.ordered is not True or (eng.item_host >= 0).any():
        raise ValueError("eng must be a fresh PlacementEngine that scans its hosts, built with "
                         "ordered=True")
    n = len(arrive)
    need1 = np.asarray(eng.need1)
    if need1.shape != (n,) or np.any(need1 != 1.0 / max_batch):
        raise ValueError("eng.need1 must be one batch slot (1 / max_batch) per request")
    jit_drain = isinstance(eng.policy, LARS)
    empty = np.zeros(0)
    knots = surv = base = t_ref = empty
    if drain_t < np.inf and jit_drain and pred.mode == "repredict":
        knots, surv, base, t_ref = pred.survival_table()
    r = _module.run(
        arrive=np.asarray(arrive, np.float64), ctx0=trace.context, gen0=trace.generated,
        cls=pred.cls, mult=pred.mult, start=pred.start, end=pred.end, mode=_MODES[pred.mode],
        table=pred.table, means=pred.means, age0=pred.age0,
        grid_per_doubling=float(_GRID_PER_DOUBLING), grid_points=_GRID_POINTS,
        hosts=eng.n_hosts, q=eng.index.q, n_classes=eng.n_classes, r0=eng.r0,
        statics=_cell_scores(eng), balance=eng.policy.balance, by_id=eng.policy.by_id,
        uses_lifetime=eng.policy.uses_lifetime, key_is_id=isinstance(eng.policy, FirstFit),
        cap=cap, max_batch=max_batch, next_sample=t_cut, sample_dt=sample_dt, horizon=horizon,
        refresh_steps=refresh_steps, probe=probe, step_s=step_s, drain_t=drain_t,
        drain_len=drain_len, drain_k=drain_k, drain_offset=drain_offset, mig_rate=mig_rate,
        mig_dt=mig_dt, rank=np.zeros(n, np.int64) if rank is None else rank,
        just_in_time=jit_drain, knots=knots, surv=surv, base=base, t_ref=t_ref)
    preemptions, waited, wait_steps, tokens_done, last_exit, *drain, drain_empty = r[:12]
    keys = ("t_s", "empty_frac", "stranded_kv", "stranded_slots")
    mig = ("migrations", "migrations_failed", "migrations_at_deadline", "drain_requests",
           "drain_exited", "drain_preempted")
    return {"preemptions": preemptions, "waited": waited, "wait_steps": wait_steps,
            "tokens_done": tokens_done, "last_exit": last_exit,
            "series": {k: s.tolist() for k, s in zip(keys, r[12:])}, **dict(zip(mig, drain)),
            "drain_empty": drain_empty.tolist()}
