"""Plain-Python split-KV planner: the oracle of the tests and the ``backend="python"`` path.

It follows the algorithm in :func:`flashkit.ops.scheduler.plan_split_kv` step by step, on Python
ints, with no numpy and no shared code with the C++ planner (csrc/scheduler/split_kv.h).
"""
from __future__ import annotations

import heapq

import torch

from .plan import SplitKVPlan

__all__ = ["naive_plan_split_kv"]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _num_items(pages: list[int], c: int) -> int:
    return sum(_ceil_div(p, c) for p in pages)


def naive_plan_split_kv(kv_lens, num_workers: int, *, page_size: int = 1,
                        min_chunk_tokens: int = 128, item_overhead: int = 32) -> SplitKVPlan:
    """The split-KV plan of :func:`~flashkit.ops.scheduler.plan_split_kv`, in plain Python.

    Arguments are assumed valid (``plan_split_kv`` checks them): ``kv_lens`` is a sequence or
    1-D tensor of non-negative ints, the scalars are ints in range.

    Examples
    --------
    >>> naive_plan_split_kv([300, 0, 40], 4, min_chunk_tokens=100).chunk_size
    100
    """
    lens = [int(x) for x in (kv_lens.tolist() if hasattr(kv_lens, "tolist") else kv_lens)]
    pages = [_ceil_div(n, page_size) for n in lens]
    min_chunk_pages = max(1, _ceil_div(min_chunk_tokens, page_size))
    hi = max([min_chunk_pages, *pages])
    max_len, sum_len = max(lens, default=0), sum(lens)

    def longest(c):  # the longest item's cost
        return min(c * page_size, max_len) + item_overhead

    def mean(c):  # the mean load, rounded up
        return _ceil_div(sum_len + _num_items(pages, c) * item_overhead, num_workers)

    lo, up = min_chunk_pages, hi
    while lo < up:  # smallest c with longest(c) >= mean(c); hi if none
        mid = (lo + up) // 2
        if longest(mid) >= mean(mid):
            up = mid
        else:
            lo = mid + 1
    c = lo
    if c > min_chunk_pages and max(longest(c - 1), mean(c - 1)) < max(longest(c), mean(c)):
        c -= 1
    chunk_size = c * page_size

    request, kv_start, kv_end, merge_indptr = [], [], [], [0]
    for i, n in enumerate(lens):
        for start in range(0, n, chunk_size):
            request.append(i)
            kv_start.append(start)
            kv_end.append(min(start + chunk_size, n))
        merge_indptr.append(len(request))

    cost = [e - s + item_overhead for s, e in zip(kv_start, kv_end)]
    order = sorted(range(len(cost)), key=lambda j: (-cost[j], j))
    heap = [(0, w) for w in range(num_workers)]  # sorted, hence already a heap
    assigned: list[list[int]] = [[] for _ in range(num_workers)]
    for j in order:
        load, w = heap[0]
        assigned[w].append(j)
        heapq.heapreplace(heap, (load + cost[j], w))

    worker_indptr, worker_items, worker_load = [0], [], []
    for items in assigned:
        worker_items.extend(items)
        worker_indptr.append(len(worker_items))
        worker_load.append(sum(cost[j] for j in items))

    def i32(values):
        return torch.tensor(values, dtype=torch.int32)

    return SplitKVPlan(
        chunk_size=chunk_size, request=i32(request), kv_start=i32(kv_start), kv_end=i32(kv_end),
        merge_indptr=i32(merge_indptr), worker_indptr=i32(worker_indptr),
        worker_items=i32(worker_items), worker_load=torch.tensor(worker_load, dtype=torch.int64))
