"""VMs on hosts: replay a trace through the engine under one policy and measure.

The lifetime model is fitted on the VMs that arrive in the first ``fit_fraction`` of the trace,
censored at that time (what a scheduler knows from history); metrics are taken after it, so
predictions are out of sample. Classes: (tenant, VM type) where the history has 50 VMs of it,
else the tenant, else all VMs.

Maintenance: halfway through the measured window, ``maint_frac`` of the occupied hosts stop
taking VMs and must be empty by ``deadline_days``; one VM is migrated every ``1 / mig_per_day``
days in the policy's drain order, and whatever is left at the deadline is migrated then
(deadline: one day, or 90 % of what is left of the trace if less).
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
                seed: int = 0) -> dict:
    """Replay ``trace`` under ``policy``; returns the metrics as a dict.

    ``balance`` overrides the policy's weight of the leftover-balance term (policies.py; None:
    the policy's own, 1 for lava and lars, 0 for the others).

    Keys: policy, mode, noise, balance, hosts, vms, rejected, empty_hosts_mean (fraction of hosts
    empty, averaged over ``samples`` instants after the fit window), stranded_cpu_frac /
    stranded_mem_frac (free cpu on hosts whose free memory is below the median VM's, and the
    converse, as fractions of all capacity), migrations, migrations_failed, drain_hours_mean,
    hosts_drained, seconds, and the sampled series (t_days, empty_frac, stranded_cpu,
    stranded_mem).
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
    t_maint = t_maint_start = cut + (horizon - cut) / 2 if maint_frac > 0 else math.inf
    if deadline_days is None:           # a day, or what is left of the trace if less
        deadline_days = min(1.0, 0.9 * (horizon - t_maint)) if t_maint < math.inf else 1.0
    deadline = t_maint + deadline_days
    if deadline < math.inf and deadline > horizon:
        raise ValueError(f"deadline_days {deadline_days} runs past the trace: maintenance starts "
                         f"at day {t_maint:.2f} of {horizon:.2f}")
    starts, ends = trace.start.tolist(), trace.end.tolist()
    departures: list = []
    rejected = migrations = failed = 0
    drained: dict = {}
    queue: list = []
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
        if not eng.items[src] and src in drained and drained[src] is None:
            drained[src] = now

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
                if h in drained and drained[h] is None and not eng.items[h]:
                    drained[h] = now
        elif now == t_arr:
            if eng.place(i, now) < 0:
                rejected += 1
            elif ends[i] <= horizon:
                heapq.heappush(departures, (ends[i], i))
            i += 1
        elif now == next_refresh:
            eng.refresh(now)
            next_refresh += refresh_days
        elif now == t_maint:
            occupied = [h for h in range(n_hosts) if eng.items[h]]
            k = max(1, round(maint_frac * n_hosts))
            chosen = occupied[:: max(1, len(occupied) // k)][:k]
            items = []
            for h in chosen:
                eng.exclude(h)
                drained[h] = None
                items.extend(eng.items[h])
            move, _wait = pol.drain_order(eng, items, now, deadline, rng)
            queue = list(reversed(move))
            next_mig = now + 1 / mig_per_day if queue else math.inf
            t_maint = math.inf
        elif now == next_mig:
            while queue and eng.item_host[queue[-1]] < 0:
                queue.pop()
            if queue:
                migrate(queue.pop(), now)
            next_mig = now + 1 / mig_per_day if queue else math.inf
        elif now == deadline:
            for h in [h for h, v in drained.items() if v is None]:
                for item in sorted(eng.items[h]):
                    migrate(item, now)
            for h in drained:
                eng.excluded.discard(h)
                eng._reindex(h, now)
            queue, next_mig, deadline = [], math.inf, math.inf
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
    done = [v - t_maint_start for v in drained.values() if v is not None]
    return {
        "policy": policy, "mode": mode, "noise": noise, "balance": pol.balance,
        "hosts": n_hosts, "vms": n,
        "rejected": rejected,
        "empty_hosts_mean": float(np.mean(series["empty_frac"])),
        "stranded_cpu_frac": float(np.mean(series["stranded_cpu"])),
        "stranded_mem_frac": float(np.mean(series["stranded_mem"])),
        "migrations": migrations, "migrations_failed": failed, "hosts_drained": len(drained),
        "drain_hours_mean": float(np.mean(done) * 24) if done else None,
        "seconds": time.perf_counter() - t0, "series": series,
    }
