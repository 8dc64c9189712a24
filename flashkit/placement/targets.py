"""Issue 15's targets, measured: ``python -m flashkit.placement.targets {vm,llm,scale} --out F``.

vm: a generated 100,000-VM, 14-day trace on 1.1 x its peak load in hosts; every policy with
repredicted lifetimes, best fit with LAVA's balance term and LAVA without it, then LAVA with
one-shot, oracle (exact and noisy) and noisy repredicted lifetimes, and the fluid bound.
maint: the same trace with 10 % of the hosts (occupied ones) drained for maintenance in one wave,
on four disjoint choices of those hosts, then in a rolling update of six waves (best-fit, LAVA,
LARS, and the last two without the balance term). llm: a
generated trace on decode instances, the baselines and LAVA, then LAVA's prediction variants.
llm-maint: the same trace with 25 % of the instances (busy ones) drained, at three starts and on
three disjoint choices of the instances each, with a 30 s and a 10 s deadline: best-fit, LAVA
(the baselines' random drain order), LARS (just in time), and LARS's prediction variants.
scale: the sizes of the issue (100,000 VMs on 5,000 hosts; 1,000,000 requests on 64 instances), one
policy each, with the machine's load average beside the time. ``--backend`` chooses the llm event
loop (auto: compiled where it builds; each llm row records the one that ran).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time

import numpy as np

from .llm_sim import simulate_llm
from .llm_trace import generate_llm_trace
from .vm_sim import simulate_vm
from .vm_trace import generate_vm_trace

_VARIANTS = [("one-shot", 0.0), ("oracle", 0.0), ("oracle", 0.25), ("oracle", 0.5),
             ("repredict", 0.5), ("repredict", 1.0), ("repredict", 2.0)]


def _row(r, **extra):
    out = {k: v for k, v in r.items() if k != "series"}
    out.update(extra, load_avg_1m=os.getloadavg()[0])
    return out


def _timed(fn, *args, **kw):
    """fn's result with ``cpu_seconds``: this process's CPU time for it (on a shared machine
    wall seconds measure the neighbours as much as the code)."""
    c0 = time.process_time()
    r = fn(*args, **kw)
    r["cpu_seconds"] = time.process_time() - c0
    return r


def fluid_empty(tr, n_hosts, samples=400, fit_fraction=0.5):
    """Empty-host fraction if VMs could be split across hosts: at ``samples`` instants of the
    measured window, ``1 - ceil(max(cpu alive, memory alive)) / n_hosts``, averaged (the
    headroom any placement has)."""
    t0, t1 = float(tr.start[0]), float(tr.start[-1])
    cut = t0 + fit_fraction * (t1 - t0)
    out = []
    for t in cut + (t1 - cut) * np.arange(samples) / samples:
        alive = (tr.start <= t) & (tr.end > t)
        out.append(1 - math.ceil(max(tr.cpu[alive].sum(), tr.mem[alive].sum())) / n_hosts)
    return float(np.mean(out))


def run_vm(n, seed):
    tr = generate_vm_trace(n, days=14.0, seed=seed)
    runs = [(p, {}) for p in ("first-fit", "best-fit", "nilas", "lava", "lars")]
    # the two terms of LAVA's score apart: the balance term alone on best fit, the lifetime
    # term alone (LAVA without the balance term)
    runs += [("best-fit", dict(balance=1.0)), ("lava", dict(balance=0.0))]
    runs += [("lava", dict(mode=m, noise=z)) for m, z in _VARIANTS]
    runs.append(("lava", dict(stat="median")))
    rows = [_row(simulate_vm(tr, p, **kw), seed=seed, stat=kw.get("stat", "mean"))
            for p, kw in runs]
    rows.append({"case": "fluid bound", "seed": seed, "hosts": rows[0]["hosts"],
                 "empty_hosts_mean": fluid_empty(tr, rows[0]["hosts"])})
    return rows


def run_maint(n, seed):
    tr = generate_vm_trace(n, days=14.0, seed=seed)
    runs = [(p, None) for p in ("best-fit", "lava", "lars")]
    runs += [("lava", 0.0), ("lars", 0.0)]          # without the balance term
    # one wave at mid-window on four disjoint choices of its hosts (which 34 hosts it drains
    # moves the VMs to drain by +-20 %: the offsets average that out), then a rolling update
    # of six waves from early in the window
    rows = []
    cases = [dict(maint_waves=1, maint_at=0.5, maint_offset=o) for o in range(4)]
    cases.append(dict(maint_waves=6, maint_at=0.05, maint_offset=0))
    for kw in cases:
        rows += [_row(simulate_vm(tr, p, balance=b, maint_frac=0.1, **kw), seed=seed,
                      maint_frac=0.1, **kw) for p, b in runs]
    return rows


def run_llm(n, rate, instances, seed, backend="auto"):
    tr = generate_llm_trace(n, rate=rate, seed=seed)
    kw = dict(n_instances=instances, kv_block_requests=5000, backend=backend)
    rows = [_row(simulate_llm(tr, p, **kw)) for p in ("first-fit", "best-fit", "lava")]
    rows += [_row(simulate_llm(tr, "lava", mode=m, noise=z, **kw))
             for m, z in (("one-shot", 0.0), ("oracle", 0.0), ("repredict", 1.0))]
    return rows


_MAINT_POLICIES = [("best-fit", {}), ("lava", {}), ("lars", {}),
                   ("lars", dict(mode="one-shot")), ("lars", dict(noise=1.0))]


def run_llm_maint(n, rate, instances, seed, backend="auto"):
    """Per (policy, deadline): each of the nine drains (start x instance choice) as a row, then
    a summary row (``case`` "sum"): migrations, drained requests and those that exited summed,
    the drain time, preemptions and tokens/s averaged over the nine."""
    tr = generate_llm_trace(n, rate=rate, seed=seed)
    rows = []
    for deadline in (30.0, 10.0):
        for p, kw in _MAINT_POLICIES:
            runs = []
            for at in (0.2, 0.5, 0.8):
                for off in range(3):
                    r = _row(simulate_llm(tr, p, n_instances=instances, kv_block_requests=0,
                                          backend=backend, drain_frac=0.25, drain_at=at,
                                          drain_offset=off, drain_deadline_s=deadline, **kw),
                             seed=seed, drain_frac=0.25, drain_at=at, drain_offset=off,
                             drain_deadline_s=deadline)
                    runs.append(r)
            rows += runs
            drains = [r["drain_s_mean"] for r in runs if r["drain_s_mean"] is not None]
            rows.append({
                "case": "sum", "policy": p, "mode": runs[0]["mode"], "noise": runs[0]["noise"],
                "seed": seed, "drain_deadline_s": deadline, "drains": len(runs),
                **{k: sum(r[k] for r in runs) for k in (
                    "migrations", "migrations_failed", "migrations_at_deadline",
                    "drain_requests", "drain_exited", "drain_preempted")},
                "drain_s_mean": float(np.mean(drains)) if drains else None,
                "preemptions_mean": float(np.mean([r["preemptions"] for r in runs])),
                "tokens_per_s_mean": float(np.mean([r["tokens_per_s"] for r in runs])),
                "backend": runs[0]["backend"], "load_avg_1m": os.getloadavg()[0]})
    return rows


def run_scale(which, backend="auto"):
    rows = []
    if which in ("vm", "both"):
        tr = generate_vm_trace(100_000, days=14.0, seed=0)
        rows.append(_row(_timed(simulate_vm, tr, "lava", n_hosts=5000),
                         case="100k VMs on 5,000 hosts"))
    if which in ("llm", "both"):
        tr = generate_llm_trace(1_000_000, rate=400.0, seed=0)
        rows.append(_row(_timed(simulate_llm, tr, "lava", n_instances=64, kv_block_requests=0,
                                backend=backend), case="1M requests on 64 instances"))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m flashkit.placement.targets", description=__doc__)
    p.add_argument("what", choices=["vm", "maint", "llm", "llm-maint", "scale"])
    p.add_argument("--n", type=int, help="VMs (vm, default 100000) or requests (llm, 30000)")
    p.add_argument("--rate", type=float, default=90.0, help="llm: requests per s (90)")
    p.add_argument("--instances", type=int, default=16, help="llm: instances (16)")
    p.add_argument("--scale", choices=["vm", "llm", "both"], default="both")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=["auto", "python", "ninja"], default="auto",
                   help="llm, llm-maint, scale: the llm event loop (auto: compiled where it "
                        "builds)")
    p.add_argument("--out", required=True, help="JSON file to write")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    if a.what == "vm":
        rows = run_vm(a.n or 100_000, a.seed)
    elif a.what == "maint":
        rows = run_maint(a.n or 100_000, a.seed)
    elif a.what == "llm":
        rows = run_llm(a.n or 30_000, a.rate, a.instances, a.seed, a.backend)
    elif a.what == "llm-maint":
        rows = run_llm_maint(a.n or 30_000, a.rate, a.instances, a.seed, a.backend)
    else:
        rows = run_scale(a.scale, a.backend)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    doc = {"command": "python -m flashkit.placement.targets " + " ".join(argv or sys.argv[1:]),
           "commit": commit, "machine": platform.processor() or platform.machine(),
           "cpus": os.cpu_count(), "seconds_total": time.perf_counter() - t0, "rows": rows}
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)
    for r in rows:
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
