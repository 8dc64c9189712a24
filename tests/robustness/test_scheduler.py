"""plan_split_kv (the split-KV planner) under bad input, and a property: any accepted input
gives a plan whose items tile every request's KV exactly once and whose workers hold each item
once."""
import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flashkit.ops.scheduler import plan_split_kv

from .framework import Case, table, tried_example
from .mutations import check_mutation, mutation_args

PROPERTY = settings(max_examples=80, deadline=None, database=None)


def plan(kv_lens=(100, 0, 7), **kw):
    kw.setdefault("num_workers", 4)
    kw.setdefault("backend", "python")
    return lambda: plan_split_kv(kv_lens, **kw)


test_plan_split_kv = table([
    Case("lens-float", plan([1.5, 2.0]), ValueError, r"kv_lens must hold integers"),
    Case("lens-nan", plan([math.nan]), ValueError, r"kv_lens must hold integers"),
    Case("lens-bool-tensor", plan(torch.tensor([True])), ValueError, r"kv_lens must hold integers"),
    Case("lens-float-tensor", plan(torch.tensor([3.0])), ValueError, r"kv_lens must hold integers"),
    Case("lens-2d", plan([[1, 2]]), ValueError, r"kv_lens must be 1-D"),
    Case("lens-negative", plan([5, -1]), ValueError, r"kv_lens must be non-negative, got -1 at "
         r"index 1"),
    Case("lens-huge", plan([2**40]), ValueError, r"kv_lens must be <= 2147483647"),
    Case("lens-strings", plan(["a"]), ValueError, r"kv_lens must hold integers"),
    Case("lens-ragged", plan([[1], [1, 2]]), ValueError, r"kv_lens"),
    Case("lens-meta", plan(torch.zeros(2, dtype=torch.int64, device="meta")), ValueError,
         r"kv_lens must be a tensor with values"),
    Case("workers-zero", plan(num_workers=0), ValueError, r"num_workers must be in"),
    Case("workers-float", plan(num_workers=4.0), ValueError, r"num_workers must be an int"),
    Case("workers-huge", plan(num_workers=2**40), ValueError, r"num_workers must be in"),
    Case("page-size-zero", plan(page_size=0), ValueError, r"page_size must be in"),
    Case("min-chunk-zero", plan(min_chunk_tokens=0), ValueError, r"min_chunk_tokens must be in"),
    Case("overhead-negative", plan(item_overhead=-1), ValueError, r"item_overhead must be in"),
    Case("backend", plan(backend="cuda"), ValueError, r"backend must be one of"),
    Case("empty-batch", plan([]), None, r"SplitKVPlan"),
    Case("noncontiguous-tensor", plan(torch.arange(10)[::3]), None, r"SplitKVPlan"),
])


@PROPERTY
@given(st.lists(st.integers(0, 5000), max_size=12), st.integers(1, 64), st.integers(1, 32),
       st.integers(1, 600), st.integers(0, 100))
def test_plan_tiles_every_request(lens, workers, page_size, min_chunk, overhead):
    tried_example()
    p = plan_split_kv(lens, workers, page_size=page_size, min_chunk_tokens=min_chunk,
                      item_overhead=overhead, backend="python")
    assert p.chunk_size % page_size == 0
    req, start, end = p.request.numpy(), p.kv_start.numpy(), p.kv_end.numpy()
    for i, n in enumerate(lens):
        mine = np.nonzero(req == i)[0]
        assert list(range(int(p.merge_indptr[i]), int(p.merge_indptr[i + 1]))) == mine.tolist()
        spans = sorted(zip(start[mine], end[mine]))
        covered = 0
        for s, e in spans:
            assert s == covered and e > s
            covered = e
        assert covered == n
    items = np.sort(p.worker_items.numpy())
    assert np.array_equal(items, np.arange(len(req)))
    assert p.worker_indptr[-1] == len(req) and (np.diff(p.worker_indptr.numpy()) >= 0).all()


def _plan(**kw):
    p = plan_split_kv(**kw)
    return p.request, p.kv_start, p.kv_end, p.merge_indptr, p.worker_items


@settings(max_examples=60, deadline=None, database=None)
@given(st.data())
def test_plan_mutation_property(data):
    """plan_split_kv's kv_lens tensor, mutated (tests/robustness/mutations.py)."""
    make = lambda: dict(kv_lens=torch.tensor([100, 0, 7, 300]), num_workers=4,  # noqa: E731
                        backend="python")
    name, how, dim = data.draw(mutation_args(["kv_lens"]))
    if check_mutation(_plan, make, name, how, dim):
        tried_example()
