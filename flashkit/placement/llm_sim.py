"""LLM requests on decode instances: KV that grows one token per decode step, and preemption.

Time is in decode steps (``step_s`` seconds each; every instance steps in lockstep). A request
admitted with ``c`` tokens of context holds ``c + age`` tokens of KV and leaves after its
generated tokens. An instance holds ``kv_tokens`` of KV and ``max_batch`` requests; when its
KV is full the newest request is preempted (vLLM's recompute preemption): it frees its KV and
waits at the head of the queue to be admitted again with context + what it generated so far.
The engine routes requests (resource 0: KV, resource 1: batch slots). Lifetime = generated
tokens, repredicted from the tokens generated so far; classes: log2 bucket of the context.
Lifetime-aware policies also ask for room for the predicted growth, not just the prompt.
"""
from __future__ import annotations

import collections
import heapq
import math
import time

import numpy as np

from . import engine as engine_mod
from . import llm_native
from .engine import PlacementEngine
from .kv_blocks import simulate_kv_blocks
from .lifetimes import LifetimeModel, Predictor
from .llm_trace import LLMTrace
from .policies import LARS, make_policy

__all__ = ["simulate_llm", "MIG_PER_S"]

# Migration slots per second, the KV-transfer rate of one drain: a 7B-class model with full
# multi-head attention (Llama-2-7B: 32 layers x K and V x 4,096 x 2 bytes) holds 512 KiB of KV
# per token; a request in flight on the generated traces holds ~1,550 tokens (context plus half
# its generation, weighted by how long it runs), so ~0.81 GB; over one 100 Gb/s link (12.5 GB/s)
# that is 65 ms, 15.4 transfers a second: 16.
MIG_PER_S = 16.0


def _drain_args(n, t_cut, horizon, drain_frac, drain_at, drain_deadline_s, mig_per_s,
                drain_offset, n_instances, step_s, seed) -> dict:
    """The drain scenario as the loops read it, in decode steps (drain_t inf: no drain), and
    ``rank``: a random permutation of all requests drawn before the run, the baselines' drain
    order (restricted to the drained requests, a uniformly random order of them), fixed
    before the loop so that the compiled loop reads the same one."""
    for name, v in (("drain_frac", drain_frac), ("drain_at", drain_at)):
        if not (isinstance(v, (int, float)) and 0 <= v < 1):
            raise ValueError(f"{name} must be a number in [0, 1), got {v!r}")
    for name, v in (("drain_deadline_s", drain_deadline_s), ("mig_per_s", mig_per_s)):
        if not (isinstance(v, (int, float)) and 0 < v < math.inf):
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    if not isinstance(drain_offset, int) or drain_offset < 0:
        raise ValueError(f"drain_offset must be an int >= 0, got {drain_offset!r}")
    off = dict(drain_t=math.inf, drain_len=0.0, drain_k=0, drain_offset=0, mig_rate=1.0,
               mig_dt=1.0, rank=None)
    if drain_frac == 0:
        return off
    t = t_cut + (horizon - t_cut) * drain_at
    steps = drain_deadline_s / step_s
    if t + steps > horizon:
        raise ValueError(f"drain_deadline_s {drain_deadline_s} runs past the trace: the drain "
                         f"starts at {t * step_s:.1f} s of {horizon * step_s:.1f} s")
    rate = mig_per_s * step_s                           # slots per decode step
    return dict(drain_t=t, drain_len=steps, drain_k=max(1, round(drain_frac * n_instances)),
                drain_offset=drain_offset, mig_rate=rate, mig_dt=1.0 / rate,
                # a stream of its own: the predictor's noise factors come from default_rng(seed)
                rank=np.random.default_rng([seed, 1]).permutation(n))


def simulate_llm(trace: LLMTrace, policy: str, *, n_instances: int = 64,
                 kv_tokens: int = 131_072, max_batch: int = 256, step_s: float = 0.025,
                 mode: str = "repredict", noise: float = 0.0, fit_fraction: float = 0.5,
                 samples: int = 400, refresh_steps: float = 256.0, kv_block_requests: int = 5000,
                 balance: float = 0.0, seed: int = 0, backend: str = "auto",
                 drain_frac: float = 0.0, drain_at: float = 0.5, drain_deadline_s: float = 30.0,
                 mig_per_s: float = MIG_PER_S, drain_offset: int = 0) -> dict:
    """Replay ``trace`` under ``policy`` on ``n_instances``; returns the metrics as a dict.

    ``balance`` is the policy's weight of the leftover-balance term (policies.py), 0 here
    for every policy: a request's KV grows after admission, so how balanced KV and batch
    slots are left at admission says little about what is stranded later.

    ``backend``: ``"python"`` runs the event loop below (the reference), ``"ninja"`` the same
    loop compiled (llm_native.py: identical results, for up to 512 instances, the engine's
    host scan), ``"auto"`` the compiled loop where it builds and loads here and the engine
    scans, else the Python loop (a missing toolchain is logged once).

    Drain (off unless ``drain_frac`` > 0): at ``drain_at`` of the measured window (after the
    fit window), ``drain_frac`` x the instances (at least one; busy ones, every
    ``busy // k``-th from the ``drain_offset``-th: disjoint choices for offsets below the stride) stop
    admitting, for a weight update, maintenance or scale-down. Their requests finish there or
    migrate (a KV transfer: context and generated tokens move, the target is the policy's
    placement of an admission needing that whole KV, retried in the next slot where none has
    room) in one migration slot every ``1 / mig_per_s`` s, as the policy's ``drain_next`` says
    (baselines: a random order from the first slot; LARS: just in time, the request likeliest
    to be still decoding at the deadline first); what is left ``drain_deadline_s`` after the
    start migrates then, and the instances return to service.

    Keys: policy, mode, noise, balance, hosts, requests, backend (the loop that ran),
    preemptions, empty_hosts_mean (fraction of
    instances with no request, sampled after the fit window), stranded_mem_frac (free KV on
    instances whose batch is full) and stranded_cpu_frac (free batch slots on instances
    whose free KV is below the median context), queue_wait_s_mean, tokens_per_s (generated
    tokens over the makespan), makespan_s, seconds, and the sampled series; and, from one
    instance's fair share (every ``n_instances``-th request, the first ``kv_block_requests``
    of them) replayed page by page (16-token pages, 16-page blocks; the lifetime-aware
    allocator for lifetime-aware policies, else the free list): kv_empty_blocks_mean,
    kv_fragmentation, kv_preemptions; the drain's migrations (slots and deadline; failed
    attempts in migrations_failed, those at the deadline also in migrations_at_deadline),
    instances_drained, drain_requests (on the drained instances at the start), drain_exited
    (finished before being moved), drain_preempted (preempted off a drained instance: they
    re-enter the queue), drain_s_mean (from the start until each drained instance is empty;
    None if none emptied).
    """
    if not isinstance(trace, LLMTrace):
        raise TypeError(f"trace must be an LLMTrace, got {type(trace).__name__}")
    for name, v in (("n_instances", n_instances), ("kv_tokens", kv_tokens),
                    ("max_batch", max_batch), ("samples", samples)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if not 0 < fit_fraction < 1 or not step_s > 0:
        raise ValueError("fit_fraction must be in (0, 1) and step_s > 0")
    if not (isinstance(refresh_steps, (int, float)) and 0 < refresh_steps < math.inf):
        raise ValueError(f"refresh_steps must be a finite number > 0, got {refresh_steps!r}")
    n = len(trace)
    cut_i = max(1, int(fit_fraction * n))
    # the measured window, in decode steps: after the fit window up to the last arrival
    t_cut, horizon = float(trace.arrival[cut_i - 1] / step_s), float(trace.arrival[-1] / step_s)
    drain = _drain_args(n, t_cut, horizon, drain_frac, drain_at, drain_deadline_s, mig_per_s,
                        drain_offset, n_instances, step_s, seed)
    if backend not in llm_native.BACKENDS:
        raise ValueError(f"backend must be one of {llm_native.BACKENDS}, got {backend!r}")
    big = np.flatnonzero(trace.context + trace.generated > kv_tokens)
    if big.size:
        j = int(big[0])
        raise ValueError(f"trace line {j + 2}: request needs {trace.context[j]} + "
                         f"{trace.generated[j]} tokens of KV, larger than an instance "
                         f"(kv_tokens={kv_tokens})")
    pol = make_policy(policy, balance=balance)
    # before the clock starts: a first call may build the compiled loop (seconds, then cached)
    backend = llm_native.resolve_backend(backend, n_instances <= engine_mod._SCAN_HOSTS)
    t0 = time.perf_counter()
    arrive = (trace.arrival / step_s).tolist()
    classes = np.floor(np.log2(np.maximum(trace.context, 1))).astype(np.int64)
    # history: requests of the fit window, their lifetimes fully observed
    model = LifetimeModel(trace.generated[:cut_i].astype(float), classes[:cut_i])
    pred = Predictor(model, mode, noise=noise, age0=1.0, seed=seed)
    pred.bind(classes, np.asarray(arrive), np.asarray(arrive) + trace.generated)
    need0 = ((trace.context + 1) / float(kv_tokens)).clip(max=1.0)
    eng = PlacementEngine(n_instances, pol, pred, np.maximum(need0, 1e-9),
                          np.full(n, 1.0 / max_batch), r0=16.0, ordered=True)
    consts = dict(max_batch=max_batch, step_s=step_s, t_cut=t_cut, horizon=horizon,
                  sample_dt=max((horizon - t_cut) / samples, 1e-9), refresh_steps=refresh_steps,
                  probe=float(np.median(trace.context)), **drain)
    if backend == "ninja":
        out = llm_native.run_llm_loop(trace, eng, pred, arrive, cap=float(kv_tokens), **consts)
    else:
        out = _python_loop(trace, eng, pred, arrive, cap=float(kv_tokens), **consts)
    seconds = time.perf_counter() - t0
    kv = {"kv_empty_blocks_mean": None, "kv_fragmentation": None, "kv_preemptions": None}
    if kv_block_requests > 0:
        sub = np.arange(0, n, n_instances)[:kv_block_requests]
        kv_pred = None
        if pol.uses_lifetime:
            kv_pred = Predictor(model, mode, noise=noise, age0=1.0, seed=seed + 1)
            a = np.asarray(arrive)[sub]
            kv_pred.bind(classes[sub], a, a + trace.generated[sub])
        kv = simulate_kv_blocks(np.asarray(arrive)[sub], trace.context[sub],
                                trace.generated[sub], kv_pred,
                                num_pages=kv_tokens // 256 * 16, max_batch=max_batch)
    series = out["series"]
    last_exit = out["last_exit"]
    done_s = [t for t in out["drain_empty"] if t >= 0]
    return {
        "policy": policy, "mode": mode, "noise": noise, "balance": pol.balance,
        "hosts": n_instances, "requests": n, "backend": backend,
        **kv,
        "preemptions": out["preemptions"],
        "empty_hosts_mean": float(np.mean(series["empty_frac"])),
        "stranded_cpu_frac": float(np.mean(series["stranded_slots"])),
        "stranded_mem_frac": float(np.mean(series["stranded_kv"])),
        "migrations": out["migrations"], "migrations_failed": out["migrations_failed"],
        "migrations_at_deadline": out["migrations_at_deadline"],
        "instances_drained": len(out["drain_empty"]), "drain_requests": out["drain_requests"],
        "drain_exited": out["drain_exited"], "drain_preempted": out["drain_preempted"],
        "drain_s_mean": float(np.mean(done_s)) * step_s if done_s else None,
        "queue_wait_s_mean": out["wait_steps"] / max(out["waited"], 1) * step_s,
        "makespan_s": last_exit * step_s,
        "tokens_per_s": out["tokens_done"] / max(last_exit * step_s, 1e-9),
        "seconds": seconds, "kv_seconds": time.perf_counter() - t0 - seconds, "series": series,
    }


def _python_loop(trace, eng, pred, arrive, *, cap, max_batch, step_s, t_cut, horizon, sample_dt,
                 refresh_steps, probe, drain_t, drain_len, drain_k, drain_offset, mig_rate, mig_dt,
                 rank) -> dict:
    """The event loop (the reference of llm_native.py): counters and the sampled series."""
    n, n_instances, pol = len(arrive), eng.n_hosts, eng.policy
    ctx0, gen0 = trace.context.tolist(), trace.generated.tolist()
    start_l = pred.start_l                              # age = tokens generated so far
    slot = 1.0 / max_batch
    lifetime_aware = pol.uses_lifetime
    used = [0.0] * n_instances                          # KV tokens at t_upd
    active = [0] * n_instances
    t_upd = [0.0] * n_instances
    newest = [[] for _ in range(n_instances)]           # admission order, for preemption
    ver = [0] * n_instances
    ctx, done = list(ctx0), [0] * n                     # context now, tokens generated so far
    admitted_at = [0.0] * n
    dep_ver = [0] * n
    # departures (time, request, version) and "KV full" times (time, instance, version), in
    # two heaps: every publish() moves an instance's full time, so that heap would fill with
    # stale entries (about 2 per request); it is rebuilt from the live ones when it outgrows
    # the instances. At equal times a departure goes first.
    events: list = []
    fulls: list = []
    full_at = [math.inf] * n_instances
    queue: collections.deque = collections.deque()
    preemptions = waited = 0
    wait_steps = 0.0
    queued_at = [0.0] * n
    i = 0
    next_sample, next_refresh = t_cut, refresh_steps
    series = {"t_s": [], "empty_frac": [], "stranded_kv": [], "stranded_slots": []}
    tokens_done = completed = 0
    last_exit = 0.0
    # the drain: its instances (wave), which are draining now, the steps from the start until
    # each is empty (-1: not yet), the requests still on them, the baselines' queue
    wave: list = []
    draining = [False] * n_instances
    empty_after = [-1.0] * n_instances
    pending: set = set()
    dqueue: list = []
    deadline = next_mig = math.inf
    jit = isinstance(pol, LARS)
    mig = {"migrations": 0, "migrations_failed": 0, "migrations_at_deadline": 0,
           "drain_requests": 0, "drain_exited": 0, "drain_preempted": 0}

    def sync(h, now):
        used[h] += active[h] * (now - t_upd[h])
        t_upd[h] = now

    def publish(h, now):
        ver[h] += 1
        if active[h]:
            full_at[h] = t = now + (cap - used[h]) / active[h]
            if len(fulls) > 4 * n_instances + 64:
                fulls[:] = [(full_at[k], k, ver[k]) for k in range(n_instances)
                            if full_at[k] < math.inf and k != h]
                heapq.heapify(fulls)
            heapq.heappush(fulls, (t, h, ver[h]))
        else:
            full_at[h] = math.inf
        f0 = 1 - used[h] / cap                          # eng.set_free(h, ...), inlined
        eng.free0[h], eng.free1[h] = 0.0 if f0 < 0.0 else f0, 1 - active[h] * slot
        eng._reindex(h, now)

    def leave(j, h, now):
        sync(h, now)
        used[h] -= ctx[j] + (now - admitted_at[j])
        active[h] -= 1
        eng.release(j, now, reindex=False)              # publish() re-indexes h

    def place(j, c, now, r):
        """The instance request ``j`` (``c`` tokens of KV, predicted remaining ``r``) is placed
        on, or -1 where none has room; ``eng.need0[j]`` is set by the caller."""
        failed = -1
        while True:
            h = eng.place(j, now, reindex=False, r=r)   # publish() re-indexes h
            if h < 0:
                return -1
            sync(h, now)
            if used[h] + c + 1 <= cap and active[h] < max_batch:
                return h
            eng.release(j, now, reindex=False)          # the index was stale: KV grew
            publish(h, now)
            if h == failed:
                # h was exact already and the same pick would follow for ever: a prediction
                # under one token (r < 1) asked for less than the token that admission
                # needs. Ask for that token; wait if even that is not exact.
                one = (c + 1) / cap
                if eng.need0[j] >= one:
                    return -1
                eng.need0[j] = min(1.0, one)
            failed = h

    def settle(j, h, now):
        """Request ``j`` starts (or goes on) decoding on ``h``, placed there already."""
        rem = gen0[j] - done[j]
        used[h] += ctx[j]
        active[h] += 1
        admitted_at[j] = now
        pred.end_l[j] = pred.end[j] = now + rem            # the oracle knows the delay too
        newest[h].append(j)
        dep_ver[j] += 1
        heapq.heappush(events, (now + rem, j, dep_ver[j]))
        publish(h, now)

    def admit(now):
        nonlocal waited, wait_steps
        while queue:
            j = queue[0]
            # age = tokens generated so far: time spent in the queue is not decoding
            start_l[j] = pred.start[j] = now - done[j]
            r = pred.remaining(j, now)
            eng.need0[j] = min(1.0, (ctx[j] + (r if lifetime_aware else 1)) / cap)
            h = place(j, ctx[j], now, r)
            if h < 0:
                return
            queue.popleft()
            wait_steps += now - queued_at[j]
            waited += 1
            settle(j, h, now)

    def drained_left(j, h, now):
        pending.discard(j)
        if active[h] == 0 and empty_after[h] < 0:
            empty_after[h] = now - drain_start

    def migrate(j, now):
        """Move request ``j`` off its draining instance with its KV (context + generated
        tokens): True if it moved, False (it stays, untouched) where no instance has room."""
        src = int(eng.item_host[j])
        sync(src, now)
        g = int(round(now - admitted_at[j]))
        c = ctx0[j] + done[j] + g
        r = pred.remaining(j, now)
        eng.release(j, now, reindex=False)
        eng.need0[j] = min(1.0, (c + (r if lifetime_aware else 1)) / cap)
        h = place(j, c, now, r)
        if h < 0:
            mig["migrations_failed"] += 1
            eng.need0[j] = 0.0          # its KV is in used[] already; publish() sets the free KV
            eng.assign(j, src, now, r, reindex=False)
            publish(src, now)
            return False
        used[src] -= ctx[j] + (now - admitted_at[j])
        active[src] -= 1
        done[j] += g
        ctx[j] = c
        start_l[j] = now - done[j]
        pred.start[j] = start_l[j]
        mig["migrations"] += 1
        settle(j, h, now)
        publish(src, now)
        drained_left(j, src, now)
        return True

    now = drain_start = 0.0
    while True:
        t_arr = arrive[i] if i < n else math.inf
        t_dep = events[0][0] if events else math.inf
        t_full = fulls[0][0] if fulls else math.inf
        # the earliest of them, min() unrolled (this runs once per event)
        t_ev = t_dep if t_dep < t_full else t_full
        t_nx = next_sample if next_sample < next_refresh else next_refresh
        if drain_t < t_nx:
            t_nx = drain_t
        if next_mig < t_nx:
            t_nx = next_mig
        if deadline < t_nx:
            t_nx = deadline
        now = t_arr if t_arr < t_ev else t_ev
        if t_nx < now:
            now = t_nx
        if completed == n or now == math.inf:
            break
        if now == t_ev:
            if t_dep <= t_full:                         # departure
                _, x, v = heapq.heappop(events)
                if v != dep_ver[x]:
                    continue
                h = int(eng.item_host[x])
                leave(x, h, now)
                tokens_done += gen0[x]
                completed += 1
                last_exit = now
                publish(h, now)
                if draining[h]:
                    mig["drain_exited"] += 1
                    drained_left(x, h, now)
                admit(now)
            else:                                       # instance x's KV is full
                _, x, v = heapq.heappop(fulls)
                if v != ver[x]:
                    continue
                stack = newest[x]
                while stack and eng.item_host[stack[-1]] != x:
                    stack.pop()
                j = stack.pop()
                leave(j, x, now)
                done[j] += int(round(now - admitted_at[j]))
                ctx[j] = ctx0[j] + done[j]          # its age is set when admit() takes it
                dep_ver[j] += 1
                preemptions += 1
                queued_at[j] = now
                queue.appendleft(j)
                publish(x, now)
                if draining[x]:
                    mig["drain_preempted"] += 1
                    drained_left(j, x, now)
                admit(now)
        elif now == t_arr:
            queued_at[i] = now
            queue.append(i)
            i += 1
            admit(now)
        elif now == next_refresh:
            eng.refresh(now)
            next_refresh += refresh_steps
        elif now == drain_t:                # the drain: busy instances, spread over the ids
            wave, items = eng.drain([h for h in range(n_instances) if active[h]], drain_k,
                                    drain_offset)
            for h in wave:
                draining[h] = True
            pending.update(items)
            mig["drain_requests"] = len(pending)
            dqueue = sorted(pending, key=rank.__getitem__)
            drain_start, deadline, drain_t = now, now + drain_len, math.inf
            next_mig = now + mig_dt if pending else math.inf
        elif now == next_mig:
            slots = math.floor((deadline - now) * mig_rate + 1e-9)
            j = pol.drain_next(eng, dqueue, pending, now, deadline, slots)
            if j is not None and not migrate(j, now) and not jit:
                dqueue.insert(0, j)         # no room anywhere: the next slot tries it again
            next_mig = now + mig_dt if pending else math.inf
        elif now == deadline:               # what is left migrates now; the instances return
            for h in wave:
                if draining[h]:
                    for j in sorted(eng.items[h]):
                        if migrate(j, now):
                            mig["migrations_at_deadline"] += 1
            for h in wave:
                draining[h] = False
                eng.excluded.discard(h)
                eng._reindex(h, now)
            pending.clear()
            deadline = next_mig = math.inf
            admit(now)
        else:
            if now <= horizon:
                # sums in host order, one addition at a time (sum() of floats compensates
                # from Python 3.12 on; the compiled loop adds as this does)
                kv_free = slots_free = 0.0
                for h in range(n_instances):
                    a = active[h]
                    u = used[h] + a * (now - t_upd[h])
                    if a >= max_batch:
                        kv_free += cap - u
                    if a and cap - u < probe:
                        slots_free += (max_batch - a) * slot
                series["t_s"].append(now * step_s)
                series["empty_frac"].append(active.count(0) / n_instances)
                series["stranded_kv"].append(kv_free / (cap * n_instances))
                series["stranded_slots"].append(slots_free / n_instances)
            next_sample = next_sample + sample_dt if now <= horizon else math.inf
    return {"preemptions": preemptions, "waited": waited, "wait_steps": wait_steps,
            "tokens_done": tokens_done, "last_exit": last_exit, "series": series, **mig,
            "drain_empty": [empty_after[h] for h in wave]}
