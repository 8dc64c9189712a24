"""VMs on hosts: replay a trace through the engine under one policy and measure.

The lifetime model is fitted on the VMs that arrive in the first ``fit_fraction`` of the trace,
censored at that time (what a scheduler knows from history); metrics are taken after it, so
predictions are out of sample. Classes: (tenant, VM type) where the history has 50 VMs of it,
else the tenant, else all VMs.

Maintenance: at ``maint_at`` of the measured window (halfway), ``maint_frac`` x the hosts,
occupied ones spread over the host ids, stop taking VMs and must be empty by ``deadline_days``;
one migration slot every ``1 / mig_per_day`` days, used as the policy's drain says
(``Policy.drain_next``), and whatever is left at the deadline is migrated then (deadline: one
day, or 90 % of what is left of the trace if less). ``maint_waves`` > 1: a rolling update,
each wave starting at the previous one's deadline on hosts not drained before (one wave's 34
hosts hold 430-620 VMs depending on which are picked: more waves, less of that noise).
``maint_offset``: which phase of the stride over the occupied hosts a wave takes (0: every
``stride``-th host from the first; the phases are disjoint choices of the drained hosts).
"""
from __future__ import annotations

import heapq
import math
import time

import numpy as np

from .engine import PlacementEngine
from .lifetimes import LifetimeModel, Predictor
from .policies import make_policy
from .vm_trace import VMTrace

__all__ = ["simulate_vm", "fit_vm_model", "default_hosts"]

_MIN_SAMPLES = 50


def fit_vm_model(trace: VMTrace, cut: float):
    """Fit the lifetime model on VMs arriving before ``cut`` (days), censored at ``cut``.
    Returns (model, class code per VM)."""
    train = trace.start < cut
    if not train.any():
        raise ValueError("fit_fraction leaves no VM to fit the lifetime model on")
    fine = trace.tenant * 100_003 + trace.vm_type
    codes = np.full(len(trace), -1, np.int64)
    table: dict = {}
    for key_arr in (fine, trace.tenant):
        keys, counts = np.unique(key_arr[train], return_counts=True)
        good = set(keys[counts >= _MIN_SAMPLES].tolist())
        for k in range(len(trace)):
            if codes[k] < 0 and key_arr[k] in good:
                codes[k] = table.setdefault((key_arr is fine, int(key_arr[k])), len(table))
    codes[codes < 0] = len(table)                      # everything else: one pooled class
    end = np.minimum(trace.end, cut)
    life = np.maximum(end - trace.start, 0.0)[train]
    observed = (trace.end <= cut)[train]
    return LifetimeModel(life, codes[train], observed, min_samples=1), codes


def default_hosts(trace: VMTrace) -> int:
    """Hosts for a trace: 1.1 x the peak of the larger of total cpu and total memory alive."""
    end = np.minimum(trace.end, trace.start.max() + 1)
    t = np.concatenate([trace.start, end])
    o = np.argsort(t, kind="stable")
    peak = max(np.cumsum(np.concatenate([r, -r])[o]).max() for r in (trace.cpu, trace.mem))
    return max(1, math.ceil(1.1 * peak))


def simulate_vm(trace: VMTrace, policy: str, *, n_hosts: int | None = None,
                mode: str = "repredict", noise: float = 0.0, stat: str = "mean",
                balance: float | None = None, fit_fraction: float = 0.5,
                samples: int = 400, refresh_days: float = 1 / 24, maint_frac: float = 0.01,
                deadline_days: float | None = None, mig_per_day: float = 480.0,
                maint_waves: int = 1, maint_at: float = 0.5, maint_offset: int = 0,
                seed: int = 0) -> dict:
    """Replay ``trace`` under ``policy``; returns the metrics as a dict.

    ``balance`` overrides the policy's weight of the leftover-balance term (policies.py; None:
    the policy's own, 1 for lava and lars, 0 for the others).

    Keys: policy, mode, noise, balance, hosts, vms, rejected, empty_hosts_mean (fraction of hosts
    empty, averaged over ``samples`` instants after the fit window), stranded_cpu_frac /
    stranded_mem_frac (free cpu on hosts whose free memory is below the median VM's, and the
    converse, as fractions of all capacity), migrations, migrations_failed, drain_hours_mean,
    hosts_drained, drain_vms (VMs on the drained hosts at their wave's start), drain_exited
    (those that exited before being moved), migrations_at_deadline (moved at the deadline,
    beyond the rate), seconds, and the sampled series (t_days, empty_frac, stranded_cpu,
    stranded_mem). Maintenance options (``maint_*``, ``deadline_days``, ``mig_per_day``): the
    module docstring.
    """
    if not isinstance(trace, VMTrace):
        raise TypeError(f"trace must be a VMTrace, got {type(trace).__name__}")
    if not 0 < fit_fraction < 1:
        raise ValueError(f"fit_fraction must be in (0, 1), got {fit_fraction!r}")
    if not (isinstance(samples, int) and samples >= 1) or not refresh_days > 0:
        raise ValueError("samples must be an int >= 1 and refresh_days > 0")
    if not 0 <= maint_frac < 1 or not (deadline_days is None or deadline_days > 0) \
            or not mig_per_day > 0:
        raise ValueError("maint_frac must be in [0, 1), deadline_days and mig_per_day > 0")
    if not (isinstance(maint_waves, int) and maint_waves >= 1) or not 0 <= maint_at < 1 \
            or not (isinstance(maint_offset, int) and maint_offset >= 0):
        raise ValueError(f"maint_waves must be an int >= 1, maint_at in [0, 1) and maint_offset "
                         f"an int >= 0, got {maint_waves!r}, {maint_at!r}, {maint_offset!r}")
    pol = make_policy(policy) if balance is None else make_policy(policy, balance=balance)
    n_hosts = default_hosts(trace) if n_hosts is None else n_hosts
    t0 = time.perf_counter()
    t_begin, horizon = float(trace.start[0]), float(trace.start[-1])
    cut = t_begin + fit_fraction * (horizon - t_begin)
    model, codes = fit_vm_model(trace, cut)
    pred = Predictor(model, mode, noise=noise, age0=1 / 1440, stat=stat, seed=seed)
    pred.bind(codes, trace.start, trace.end)
    eng = PlacementEngine(n_hosts, pol, pred, trace.cpu, trace.mem, r0=1 / 96)
    probe_c, probe_m = float(np.median(trace.cpu)), float(np.median(trace.mem))
    sample_dt = (horizon - cut) / samples
    next_sample, next_refresh = cut, t_begin + refresh_days
    t_maint = cut + (horizon - cut) * maint_at if maint_frac > 0 else math.inf
    if deadline_days is None:           # a day, or what is left of the trace if less
        deadline_days = min(1.0, 0.9 * (horizon - t_maint) / maint_waves) \
            if t_maint < math.inf else 1.0
    deadline = math.inf
    if t_maint < math.inf and t_maint + maint_waves * deadline_days > horizon:
        raise ValueError(f"deadline_days {deadline_days} x maint_waves {maint_waves} runs past "
                         f"the trace: maintenance starts at day {t_maint:.2f} of {horizon:.2f}")
    waves_left = maint_waves if t_maint < math.inf else 0
    starts, ends = trace.start.tolist(), trace.end.tolist()
    departures: list = []
    rejected = migrations = failed = 0
    drain_vms = drain_exited = at_deadline = 0
    drained: dict = {}                  # host -> days from its wave's start to empty (None)
    queue: list = []
    pending: set = set()
    wave: list = []                     # the hosts of the wave under way
    wave_start = math.inf
    next_mig = math.inf
    series = {"t_days": [], "empty_frac": [], "stranded_cpu": [], "stranded_mem": []}
    i, n = 0, len(trace)
    rng = np.random.default_rng(seed)

    def migrate(item, now):
        nonlocal migrations, failed
        src = eng.release(item, now)
        if eng.place(item, now) < 0:
            failed += 1
            eng.assign(item, src, now)                 # no room anywhere: it stays put
            return
        migrations += 1
        pending.discard(item)
        if not eng.items[src] and src in drained and drained[src] is None:
            drained[src] = now - wave_start

    while True:
        t_arr = starts[i] if i < n else math.inf
        t_dep = departures[0][0] if departures else math.inf
        now = min(t_arr, t_dep, next_sample, next_refresh, t_maint, next_mig, deadline)
        if now > horizon:
            break
        if now == t_dep:
            _, item = heapq.heappop(departures)
            if eng.item_host[item] >= 0:
                h = eng.release(item, now)
                if h in drained and drained[h] is None:
                    drain_exited += 1
                    pending.discard(item)
                    if not eng.items[h]:
                        drained[h] = now - wave_start
        elif now == t_arr:
            if eng.place(i, now) < 0:
                rejected += 1
            elif ends[i] <= horizon:
                heapq.heappush(departures, (ends[i], i))
            i += 1
        elif now == next_refresh:
            eng.refresh(now)
            next_refresh += refresh_days
        elif now == next_mig:
            slots = math.floor((deadline - now) * mig_per_day + 1e-9)
            item = pol.drain_next(eng, queue, pending, now, deadline, slots)
            if item is not None:
                migrate(item, now)
            next_mig = now + 1 / mig_per_day if pending else math.inf
        elif now == deadline:           # whatever is left migrates now; the hosts return
            for h in [h for h in wave if drained[h] is None]:
                for item in sorted(eng.items[h]):
                    at_deadline += 1
                    migrate(item, now)
            for h in wave:
                eng.excluded.discard(h)
                eng._reindex(h, now)
            queue, pending, next_mig, deadline = [], set(), math.inf, math.inf
        elif now == t_maint:            # a wave: hosts not drained before, spread over ids
            occupied = [h for h in range(n_hosts) if eng.items[h] and h not in drained]
            wave, items = eng.drain(occupied, max(1, round(maint_frac * n_hosts)), maint_offset)
            for h in wave:
                drained[h] = None
            pending.update(items)
            drain_vms += len(pending)
            queue = pol.drain_order(eng, sorted(pending), now, now + deadline_days, rng)
            wave_start, deadline = now, now + deadline_days
            next_mig = now + 1 / mig_per_day if pending else math.inf
            waves_left -= 1
            t_maint = deadline if waves_left else math.inf
        else:
            f0, f1 = np.asarray(eng.free0), np.asarray(eng.free1)
            live = np.ones(n_hosts, bool)
            live[list(eng.excluded)] = False
            occ = np.fromiter((bool(s) for s in eng.items), bool, count=n_hosts) & live
            cap = max(1, int(live.sum()))
            series["t_days"].append(now)
            series["empty_frac"].append(float((live & ~occ).sum() / cap))
            series["stranded_cpu"].append(float(f0[occ & (f1 < probe_m)].sum() / cap))
            series["stranded_mem"].append(float(f1[occ & (f0 < probe_c)].sum() / cap))
            next_sample += sample_dt
    done = [v for v in drained.values() if v is not None]
    return {
        "policy": policy, "mode": mode, "noise": noise, "balance": pol.balance,
        "hosts": n_hosts, "vms": n,
        "rejected": rejected,
        "empty_hosts_mean": float(np.mean(series["empty_frac"])),
        "stranded_cpu_frac": float(np.mean(series["stranded_cpu"])),
        "stranded_mem_frac": float(np.mean(series["stranded_mem"])),
        "migrations": migrations, "migrations_failed": failed, "hosts_drained": len(drained),
        "drain_vms": drain_vms, "drain_exited": drain_exited, "migrations_at_deadline": at_deadline,
        "drain_hours_mean": float(np.mean(done) * 24) if done else None,
        "seconds": time.perf_counter() - t0, "series": series,
    }
