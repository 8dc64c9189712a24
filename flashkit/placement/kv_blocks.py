"""One decode instance page by page: KV pages from an allocator, blocks that empty or not.

Each request holds ceil(tokens / page_size) pages, takes one more page whenever its KV crosses
a page boundary, and frees all of them when it ends. When no page is free the newest request
is preempted (its pages freed, it waits at the head of the queue with context + generated
tokens). The allocator is the plain free list or the lifetime-aware one, which is told each
request's predicted remaining lifetime at every page it takes.
"""
from __future__ import annotations

import collections
import heapq
import math

import numpy as np

from .allocator import LifetimeAwarePageAllocator, OutOfPages, PageAllocator
from .lifetimes import Predictor

__all__ = ["simulate_kv_blocks"]


def simulate_kv_blocks(arrive, context, generated, predictor: Predictor | None, *,
                       num_pages: int, page_size: int = 16, block_pages: int = 16,
                       max_batch: int = 256, samples: int = 200) -> dict:
    """Replay requests (arrival step [n], context [n], generated [n]) on one instance.

    ``predictor`` (bound to these n requests) selects the lifetime-aware allocator; None the
    free list. Returns kv_empty_blocks_mean (fraction of blocks with no page in use),
    kv_fragmentation (free pages in partly used blocks / free pages), kv_preemptions, each
    averaged over ``samples`` instants of the replay.
    """
    arrive = np.asarray(arrive, np.float64)
    n = arrive.size
    if arrive.ndim != 1 or n == 0 or np.any(np.diff(arrive) < 0):
        raise ValueError("arrive must be a non-empty 1-D array in time order")
    if np.shape(context) != (n,) or np.shape(generated) != (n,):
        raise ValueError(f"context and generated must have shape ({n},)")
    if predictor is not None and not isinstance(predictor, Predictor):
        raise TypeError(f"predictor must be a Predictor or None, got {type(predictor).__name__}")
    ctx0 = np.asarray(context, np.int64).tolist()
    gen0 = np.asarray(generated, np.int64).tolist()
    if max(c + g for c, g in zip(ctx0, gen0)) > num_pages * page_size:
        raise ValueError("a request needs more KV than num_pages * page_size")
    alloc = (PageAllocator(num_pages, block_pages) if predictor is None
             else LifetimeAwarePageAllocator(num_pages, block_pages, r0=float(page_size)))
    arr = arrive.tolist()
    ctx, done = list(ctx0), [0] * n
    start, ver = [0.0] * n, [0] * n
    events: list = []                      # (time, kind 0 exit / 1 page, request, version)
    queue: collections.deque = collections.deque()
    stack: list = []
    active: set = set()
    preempt = i = finished = 0
    dt = max((arr[-1] - arr[0]) / samples, 1e-9)
    next_sample = arr[0] + dt
    empty, frag = [], []

    def remaining(j, now):
        if predictor is None:
            return 0.0
        age = done[j] + (now - start[j])            # tokens generated so far (j is active)
        predictor.start_l[j] = now - age
        return predictor.remaining(j, now)

    def schedule(j, now):
        tokens = ctx[j] + (now - start[j])
        # next boundary: tokens reach a multiple of page_size + 1
        nxt = start[j] + (math.floor(tokens / page_size) * page_size + 1 - ctx[j])
        if nxt <= now:
            nxt += page_size
        end = start[j] + gen0[j] - done[j]
        heapq.heappush(events, (end, 0, j, ver[j]) if nxt >= end else (nxt, 1, j, ver[j]))

    def admit(now):
        while queue and len(active) < max_batch:
            j = queue[0]
            need = -(-ctx[j] // page_size)
            if alloc.free_pages < need + 1:
                return
            queue.popleft()
            start[j] = now
            active.add(j)
            stack.append(j)
            alloc.allocate(j, need, now=now, remaining=remaining(j, now))
            ver[j] += 1
            schedule(j, now)

    while finished < n:
        t_arr = arr[i] if i < n else math.inf
        t_ev = events[0][0] if events else math.inf
        now = min(t_arr, t_ev, next_sample)
        if now == math.inf:
            break
        if now == next_sample:
            empty.append(alloc.empty_blocks / alloc.num_blocks)
            frag.append(alloc.fragmentation())
            next_sample += dt
        elif now == t_arr:
            queue.append(i)
            i += 1
            admit(now)
        else:
            _, kind, j, v = heapq.heappop(events)
            if v != ver[j]:
                continue
            if kind == 0:
                alloc.free(j)
                active.discard(j)
                finished += 1
                admit(now)
                continue
            try:
                alloc.allocate(j, 1, now=now, remaining=remaining(j, now))
                schedule(j, now)
            except OutOfPages:
                while stack and stack[-1] not in active:
                    stack.pop()
                victim = stack.pop()
                alloc.free(victim)
                active.discard(victim)
                done[victim] += int(round(now - start[victim]))
                ctx[victim] = ctx0[victim] + done[victim]
                ver[victim] += 1
                preempt += 1
                queue.appendleft(victim)
                if victim != j:
                    heapq.heappush(events, (now, 1, j, ver[j]))   # retry its page
                admit(now)
    return {"kv_empty_blocks_mean": float(np.mean(empty)) if empty else 0.0,
            "kv_fragmentation": float(np.mean(frag)) if frag else 0.0,
            "kv_preemptions": preempt}
