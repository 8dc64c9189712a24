"""Offline-batch simulator of prefill/decode scheduling across two layouts (Seesaw).

Every request is there at t = 0. Decode advances event to event: between two finishes every
running sequence gains the same number of tokens, so a stretch of k steps costs k steps at its
mid-stretch context (step time is piecewise linear in the context). GPU KV is reserved for
prompt + output at admission (no preemption), the same for every policy.

Policies
--------
- ``static``: one layout, prefill-first continuous batching (vLLM's default without chunked
  prefill): admit and prefill whenever memory allows, decode otherwise.
- ``transition-minimizing`` (Seesaw): prefill in P, parking KV in the CPU tier, until the tier
  is full or nothing waits; switch to D; decode with continuous batching, refilling from the
  tier, until the tier is empty and the batch has fallen under half the phase's peak; park the
  rest in the tier and switch back.
- ``prefill-first``: switch to P whenever a waiting request fits in GPU memory.
- ``decode-first``: decode until the batch is empty, then prefill what fits in GPU memory.
"""
from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

from .costs import LayoutCost, decode_order, reshard_time
from .layout import Layout
from .profiles import Hardware, ModelProfile

__all__ = ["POLICIES", "SimResult", "simulate"]

POLICIES = ("static", "transition-minimizing", "prefill-first", "decode-first")
PREFILL_TOKENS = 16384  # prefill batch token budget per replica (vLLM max_num_batched_tokens)


@dataclass
class SimResult:
    policy: str
    prefill: str
    decode: str
    seconds: float
    requests: int
    output_tokens: int
    transitions: int
    transition_seconds: float
    occupancy: list = field(default_factory=list)  # (t, CPU-tier bytes)

    @property
    def throughput(self) -> float:
        """Requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        return dict(policy=self.policy, prefill=self.prefill, decode=self.decode,
                    seconds=self.seconds, requests=self.requests,
                    output_tokens=self.output_tokens, throughput_rps=self.throughput,
                    output_tokens_per_s=self.output_tokens / self.seconds if self.seconds else 0,
                    transitions=self.transitions, transition_seconds=self.transition_seconds)


class _Running:
    """The decode batch: every member gains one token per step, so a member is (its context
    and step at admission) and the batch keeps sums; finishes come off a heap. O(log B) per
    admission and finish instead of O(B) per event."""

    def __init__(self):
        self.step = 0
        self.heap = []          # (finish step, id)
        self.members = {}       # id -> (ctx at admission, step at admission, reserve)
        self.offset = 0         # sum of (ctx at admission - step at admission)
        self._next = 0

    def __len__(self):
        return len(self.members)

    @property
    def context(self) -> int:
        return self.offset + len(self.members) * self.step

    def add(self, ctx: int, remaining: int, reserve: int) -> None:
        i = self._next
        self._next += 1
        self.members[i] = (ctx, self.step, reserve)
        self.offset += ctx - self.step
        heapq.heappush(self.heap, (self.step + remaining, i))

    def steps_to_next_finish(self) -> int:
        return self.heap[0][0] - self.step

    def advance(self, k: int) -> int:
        """k steps; returns the reserve freed by the members that finished."""
        self.step += k
        freed = 0
        while self.heap and self.heap[0][0] <= self.step:
            _, i = heapq.heappop(self.heap)
            ctx, at, reserve = self.members.pop(i)
            self.offset -= ctx - at
            freed += reserve
        return freed

    def drain(self) -> list:
        """Every member as [ctx, remaining, reserve]; empties the batch."""
        out = [[self.members[i][0] + self.step - self.members[i][1], f - self.step,
                self.members[i][2]] for f, i in self.heap]
        self.heap, self.members, self.offset = [], {}, 0
        return out


class _Sim:
    def __init__(self, reqs, model: ModelProfile, hw: Hardware, P: Layout, D: Layout, gpus):
        self.reqs, self.model, self.hw = reqs, model, hw
        self.P, self.D = P, D
        # The decode layout's ranks in the order that keeps the most weights in place.
        self.Dx = decode_order(model, P, D) if P != D else D
        self.cp, self.cd = LayoutCost(model, hw, P), LayoutCost(model, hw, D)
        self.kvb = model.kv_bytes_per_token
        # Half the hosts' memory is the tier (the rest holds the OS, pinned buffers, ...).
        self.tier_cap = hw.host_mem * max(1, gpus // 8) * 0.5 / self.kvb
        self.waiting = list(range(len(reqs)))[::-1]  # pop() takes the next one
        self.tier = deque()   # [ctx, remaining, reserve] parked in the CPU tier
        self.tier_tokens = self.tier_reserve = 0
        self.running = _Running()
        self.used = 0         # GPU KV tokens reserved (decode layout)
        self.t = 0.0
        self.transitions, self.tr_sec = 0, 0.0
        self.occ = [(0.0, 0)]
        self.swap_in = 0.0

    def _rec(self):
        self.occ.append((self.t, self.tier_tokens * self.kvb))

    def switch(self, src, dst):
        dt = reshard_time(self.model, self.hw, src, dst)
        self.t += dt
        self.tr_sec += dt
        self.transitions += 1

    def prefill(self, cost: LayoutCost, room_tokens: float, to_tier: bool, full: bool = True,
                fill: bool = True):
        """One prefill batch of waiting requests that fit ``room_tokens`` (prompt + output
        when ``full``, else the prompt: the tier holds prefilled KV only); their KV goes to the
        tier (swap-out overlapped with the prefill) or stays on the GPU."""
        lens, budget = [], PREFILL_TOKENS * cost.lay.dp
        while self.waiting:
            r = self.reqs[self.waiting[-1]]
            need = r["prompt_len"] + r["output_len"] if full else r["prompt_len"]
            if need > room_tokens or (lens and sum(lens) + r["prompt_len"] > budget):
                break
            self.waiting.pop()
            room_tokens -= need
            lens.append(r["prompt_len"])
            entry = [r["prompt_len"], r["output_len"] - 1, r["prompt_len"] + r["output_len"]]
            if to_tier:
                self._park(entry)
            elif entry[1] > 0:  # a one-token output ends at its prefill
                self.running.add(*entry)
                self.used += entry[2]
        if not lens:
            return False
        dt = cost.prefill_time(lens, fill)
        if to_tier:
            dt = max(dt, cost.swap_time(sum(lens) * self.kvb))
        self.t += dt
        self._rec()
        return True

    def _park(self, e):
        self.tier.append(e)
        self.tier_tokens += e[0]
        self.tier_reserve += e[2]

    def refill(self):
        cap = self.cd.kv_capacity_tokens
        while self.tier and self.used + self.tier[0][2] <= cap:
            e = self.tier.popleft()
            self.tier_tokens -= e[0]
            self.tier_reserve -= e[2]
            if e[1] <= 0:
                continue
            self.swap_in += e[0] * self.kvb
            self.running.add(*e)
            self.used += e[2]

    def decode_event(self, cost: LayoutCost):
        """Decode until the next finish."""
        if not self.running:
            return
        k = self.running.steps_to_next_finish()
        B = len(self.running)
        dt = k * cost.decode_step_time(B, self.running.context + B * k / 2)
        if self.swap_in:
            dt = max(dt, cost.swap_time(self.swap_in))
            self.swap_in = 0.0
        self.t += dt
        self.used -= self.running.advance(k)
        self._rec()

    def park_running(self):
        parked = self.running.drain()
        self.t += self.cd.swap_time(sum(e[0] for e in parked) * self.kvb)
        for e in parked:
            self.used -= e[2]
            self._park(e)
        self._rec()

    def done(self):
        return not (self.waiting or self.tier or self.running)


def _zero_output(reqs):
    return [dict(prompt_len=r["prompt_len"], output_len=max(1, r["output_len"])) for r in reqs]


def simulate(reqs, model: ModelProfile, hw: Hardware, prefill: Layout, decode: Layout,
             policy: str, gpus: int) -> SimResult:
    """Simulate ``reqs`` (dicts with prompt_len, output_len >= 1); the first output token
    comes from the prefill."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if policy == "static" and prefill != decode:
        raise ValueError("policy 'static' needs prefill == decode")
    s = _Sim(_zero_output(reqs), model, hw, prefill, decode, gpus)
    cap = s.cd.kv_capacity_tokens
    guard = 0
    if policy == "static":
        last_prefill = False  # back-to-back prefills keep the pipeline full
        while not s.done():
            last_prefill = bool(s.waiting) and s.prefill(s.cd, cap - s.used, False, True,
                                                         not last_prefill)
            if not last_prefill:
                s.decode_event(s.cd)
            guard += 1
            if guard > 10 * len(reqs) + 100:
                raise RuntimeError("simulation made no progress: a request does not fit memory")
    else:
        while not s.done():
            guard += 1
            if guard > 10 * len(reqs) + 100:
                raise RuntimeError("simulation made no progress: a request does not fit memory")
            # Prefill phase (layout P): into the tier until it is full, or (the other two
            # policies) only what the decode layout's GPU memory will take.
            first = True
            while s.waiting:
                if policy == "transition-minimizing":
                    ok = s.prefill(s.cp, s.tier_cap - s.tier_tokens, True, False, first)
                else:
                    ok = s.prefill(s.cp, cap - s.used - s.tier_reserve, True, True, first)
                if not ok:
                    break
                first = False
            if s.P != s.D:
                s.switch(s.P, s.Dx)
            # Decode phase (layout D).
            s.refill()
            peak = len(s.running)
            while s.running:
                s.decode_event(s.cd)
                s.refill()
                peak = max(peak, len(s.running))
                if not s.waiting:
                    continue
                if policy == "transition-minimizing" and not s.tier and len(s.running) < peak / 2:
                    break
                if policy == "prefill-first" and s.reqs[s.waiting[-1]]["prompt_len"] + s.reqs[
                        s.waiting[-1]]["output_len"] <= cap - s.used:
                    break
            if s.running:
                s.park_running()
            if not s.done() and s.P != s.D:
                s.switch(s.Dx, s.P)
    out_tokens = sum(r["output_len"] for r in reqs)
    return SimResult(policy, str(prefill), str(decode), s.t, len(reqs), out_tokens,
                     s.transitions, s.tr_sec, s.occ)
