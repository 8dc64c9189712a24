"""Split-KV planner: the C++ planner against the Python reference, and both against properties
checked here independently of either (tiling, assignment, loads, the list-scheduling bound and
the minimality of the chunk size)."""
import doctest
import zlib

import numpy as np
import pytest
import torch

from flashkit.jit import JitDisabledError, registry
from flashkit.ops import scheduler
from flashkit.ops.scheduler import SplitKVPlan, naive_plan_split_kv, plan_split_kv
from flashkit.ops.scheduler import planner as planner_module
from flashkit.ops.scheduler import reference as reference_module

FIELDS = ("request", "kv_start", "kv_end", "merge_indptr", "worker_indptr", "worker_items",
          "worker_load")
DTYPES = dict(request=torch.int32, kv_start=torch.int32, kv_end=torch.int32,
              merge_indptr=torch.int32, worker_indptr=torch.int32, worker_items=torch.int32,
              worker_load=torch.int64)


def rng_for(case_id: str) -> np.random.Generator:
    """A fresh, reproducible seed per case."""
    return np.random.default_rng(zlib.crc32(case_id.encode()))


def mixed_lens(rng: np.random.Generator, batch: int, page_size: int) -> np.ndarray:
    """Zero, short, page-aligned, long and very long requests, shuffled together."""
    kind = rng.choice(5, size=batch, p=[0.2, 0.3, 0.15, 0.25, 0.1])
    lens = np.select(
        [kind == 0, kind == 1, kind == 2, kind == 3],
        [0, rng.integers(1, 300, batch), page_size * rng.integers(1, 64, batch),
         rng.integers(300, 20_000, batch)],
        rng.integers(100_000, 2_000_000, batch))
    return lens.astype(np.int64)


def expected_pages(kv_lens, page_size, min_chunk_tokens):
    pages = -(-np.asarray(kv_lens, dtype=np.int64) // page_size)
    min_pages = max(1, -(-min_chunk_tokens // page_size))
    hi = max(min_pages, int(pages.max()) if pages.size else 0)
    return pages, min_pages, hi


def assert_plans_equal(a: SplitKVPlan, b: SplitKVPlan):
    assert a.chunk_size == b.chunk_size
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype == DTYPES[name], name
        assert torch.equal(x, y), f"{name} differs: {x} vs {y}"


def check_properties(plan: SplitKVPlan, kv_lens, num_workers, page_size, min_chunk_tokens,
                     item_overhead):
    lens = np.asarray(kv_lens, dtype=np.int64)
    batch, n = lens.shape[0], plan.num_items
    for name in FIELDS:
        assert getattr(plan, name).dtype == DTYPES[name], name
    assert plan.batch_size == batch and plan.num_workers == num_workers
    request, start, end = plan.request.numpy(), plan.kv_start.numpy(), plan.kv_end.numpy()
    merge = plan.merge_indptr.numpy()
    assert request.shape == start.shape == end.shape == (n,)

    # The chunk size: whole pages within bounds, and the largest minimizer of the makespan model
    # max(longest item, mean load) -- checked by brute force over every candidate when few.
    pages, min_pages, hi = expected_pages(lens, page_size, min_chunk_tokens)
    c, rem = divmod(plan.chunk_size, page_size)
    assert rem == 0 and min_pages <= c <= hi
    n_items = lambda cc: int((-(-pages // cc)).sum())  # noqa: E731
    assert n == n_items(c)
    max_len, sum_len = int(lens.max(initial=0)), int(lens.sum())

    def model(cc):
        longest = min(cc * page_size, max_len) + item_overhead
        return max(longest, -(-(sum_len + n_items(cc) * item_overhead) // num_workers))

    if hi - min_pages <= 4096:
        costs = [model(cc) for cc in range(min_pages, hi + 1)]
        best = min(costs)
        assert model(c) == best, f"chunk {c} pages: model {model(c)} > best {best}"
        assert max(cc for cc, m in zip(range(min_pages, hi + 1), costs) if m == best) == c
    else:
        assert c == min_pages or model(c - 1) >= model(c)
        assert c == hi or model(c + 1) >= model(c)

    # Each request's items tile [0, kv_len) in order, full chunks but the last.
    assert merge.shape == (batch + 1,) and merge[0] == 0 and merge[-1] == n
    counts = np.diff(merge)
    assert (counts == -(-lens // plan.chunk_size)).all()
    assert (request == np.repeat(np.arange(batch), counts)).all()
    assert (end > start).all() and (end - start <= plan.chunk_size).all()
    first = merge[:-1][counts > 0]
    last = merge[1:][counts > 0] - 1
    assert (start[first] == 0).all()
    assert (end[last] == lens[counts > 0]).all()
    inner = np.setdiff1d(np.arange(n), last)
    assert (end[inner] == start[inner + 1]).all()
    assert (end[inner] - start[inner] == plan.chunk_size).all()

    # Every item on exactly one worker; loads are the sums of costs; LPT's order and bound.
    indptr, items = plan.worker_indptr.numpy(), plan.worker_items.numpy()
    load = plan.worker_load.numpy()
    assert indptr.shape == (num_workers + 1,) and indptr[0] == 0 and indptr[-1] == n
    assert (np.diff(indptr) >= 0).all()
    assert (np.sort(items) == np.arange(n)).all()
    cost = (end - start).astype(np.int64) + item_overhead
    for w in range(num_workers):
        mine = cost[items[indptr[w]:indptr[w + 1]]]
        assert load[w] == mine.sum()
        assert (np.diff(mine) <= 0).all(), "a worker's items are assigned cost-descending"
    if n:
        assert load.max() * num_workers <= cost.sum() + cost.max() * num_workers


CASES = [
    pytest.param(batch, page_size, workers, id=f"b{batch}-ps{page_size}-w{workers}")
    for batch in (0, 1, 7, 300) for page_size in (1, 16, 32) for workers in (1, 3, 132, 1000)
]


@pytest.mark.parametrize("batch, page_size, num_workers", CASES)
def test_ninja_matches_reference(request, batch, page_size, num_workers):
    lens = mixed_lens(rng_for(request.node.callspec.id), batch, page_size)
    kwargs = dict(page_size=page_size, min_chunk_tokens=128, item_overhead=32)
    ref = naive_plan_split_kv(lens.tolist(), num_workers, **kwargs)
    check_properties(ref, lens, num_workers, **kwargs)
    out = plan_split_kv(torch.from_numpy(lens), num_workers, backend="ninja", **kwargs)
    assert_plans_equal(out, ref)
    assert_plans_equal(plan_split_kv(lens, num_workers, backend="python", **kwargs), ref)


KNOBS = [
    pytest.param(dict(min_chunk_tokens=1, item_overhead=0), id="min1-ovh0"),
    pytest.param(dict(min_chunk_tokens=1, item_overhead=1000), id="min1-ovh1000"),
    pytest.param(dict(min_chunk_tokens=4096, item_overhead=32), id="min4096-ovh32"),
    pytest.param(dict(min_chunk_tokens=100, item_overhead=7, page_size=16), id="min100-ovh7-ps16"),
]
SHAPES = {
    "all-zero": lambda rng: np.zeros(9, np.int64),
    "equal": lambda rng: np.full(13, 4096, np.int64),
    "one-giant": lambda rng: np.r_[np.zeros(5, np.int64), 2**31 - 1, np.zeros(3, np.int64)],
    "zipf": lambda rng: np.minimum(rng.zipf(1.3, 256), 2**24).astype(np.int64) * 64,
    "single-token": lambda rng: np.ones(63, np.int64),
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("knobs", KNOBS)
@pytest.mark.parametrize("num_workers", (1, 3, 60, 264))
def test_knobs_and_shapes(request, shape, knobs, num_workers):
    lens = SHAPES[shape](rng_for(request.node.callspec.id))
    kwargs = dict(dict(page_size=1), **knobs)
    ref = naive_plan_split_kv(lens, num_workers, **kwargs)
    check_properties(ref, lens, num_workers, **kwargs)
    assert_plans_equal(plan_split_kv(lens, num_workers, backend="ninja", **kwargs), ref)


def test_tie_rules_by_hand():
    # Three equal unsplittable items on two workers: 0 -> w0, 1 -> w1, then 2 -> w0 (equal loads
    # go to the lower worker).
    for backend in ("ninja", "python"):
        plan = plan_split_kv([256, 256, 256], 2, min_chunk_tokens=256, item_overhead=0,
                             backend=backend)
        assert plan.chunk_size == 256
        assert plan.worker_indptr.tolist() == [0, 2, 3]
        assert plan.worker_items.tolist() == [0, 2, 1]
        assert plan.worker_load.tolist() == [512, 256]


def test_split_by_hand():
    # 1100 tokens, 4 workers, overhead 32. Chunks of 256..283 tokens give 5 items (4 + 1) and a
    # mean load of ceil((1100 + 5 * 32) / 4) = 315; the longest item is chunk + 32, so 283 is the
    # largest chunk at that makespan -- and LPT meets it exactly: 315 on every worker.
    for backend in ("ninja", "python"):
        plan = plan_split_kv([1000, 0, 100], 4, min_chunk_tokens=256, item_overhead=32,
                             backend=backend)
        assert plan.chunk_size == 283
        assert plan.request.tolist() == [0, 0, 0, 0, 2]
        assert plan.kv_start.tolist() == [0, 283, 566, 849, 0]
        assert plan.kv_end.tolist() == [283, 566, 849, 1000, 100]
        assert plan.merge_indptr.tolist() == [0, 4, 4, 5]
        assert plan.worker_load.tolist() == [315, 315, 315, 315]


def test_skewed_batch_is_balanced():
    """256 Zipf-like requests on 264 workers: the longest worker stays near the mean load."""
    rng = np.random.default_rng(0)
    lens = np.minimum(rng.zipf(1.5, 256) * 256, 1 << 20)
    plan = plan_split_kv(lens, 264, page_size=16, backend="ninja")
    load = plan.worker_load.numpy()
    assert load.max() <= 1.1 * load.mean()


@pytest.mark.parametrize("make", [
    pytest.param(lambda x: torch.tensor(x, dtype=torch.int32), id="torch-int32"),
    pytest.param(lambda x: torch.tensor(x).repeat_interleave(2)[::2], id="torch-strided"),
    pytest.param(lambda x: np.array(x, dtype=np.uint16), id="numpy-uint16"),
    pytest.param(lambda x: tuple(x), id="tuple"),
])
def test_input_types(make):
    lens = [5000, 17, 0, 900, 64]
    ref = naive_plan_split_kv(lens, 12, page_size=16)
    for backend in ("ninja", "python", "auto"):
        assert_plans_equal(plan_split_kv(make(lens), 12, page_size=16, backend=backend), ref)


@pytest.mark.parametrize("backend", ("ninja", "python"))
@pytest.mark.parametrize("kv_lens", ([], torch.zeros(0, dtype=torch.int64), [0, 0, 0]),
                         ids=("empty-list", "empty-tensor", "all-zero"))
def test_no_work(backend, kv_lens):
    plan = plan_split_kv(kv_lens, 5, page_size=16, backend=backend)
    assert plan.num_items == 0 and plan.chunk_size == 128
    assert plan.merge_indptr.tolist() == [0] * (len(kv_lens) + 1)
    assert plan.worker_indptr.tolist() == [0] * 6 and plan.worker_load.tolist() == [0] * 5


BAD = [
    pytest.param(dict(kv_lens=[1.5, 2.0]), "kv_lens", id="kv_lens-float"),
    pytest.param(dict(kv_lens=torch.ones(3, dtype=torch.bool)), "kv_lens", id="kv_lens-bool"),
    pytest.param(dict(kv_lens=torch.ones(2, 3, dtype=torch.int32)), "kv_lens", id="kv_lens-2d"),
    pytest.param(dict(kv_lens=7), "kv_lens", id="kv_lens-scalar"),
    pytest.param(dict(kv_lens=[[1], [2, 3]]), "kv_lens", id="kv_lens-ragged"),
    pytest.param(dict(kv_lens=[4, -1]), "kv_lens", id="kv_lens-negative"),
    pytest.param(dict(kv_lens=[2**31]), "kv_lens", id="kv_lens-too-long"),
    pytest.param(dict(num_workers=0), "num_workers", id="num_workers-zero"),
    pytest.param(dict(num_workers=2.0), "num_workers", id="num_workers-float"),
    pytest.param(dict(num_workers=True), "num_workers", id="num_workers-bool"),
    pytest.param(dict(page_size=0), "page_size", id="page_size-zero"),
    pytest.param(dict(min_chunk_tokens=0), "min_chunk_tokens", id="min_chunk_tokens-zero"),
    pytest.param(dict(min_chunk_tokens=2**40), "min_chunk_tokens", id="min_chunk_tokens-huge"),
    pytest.param(dict(item_overhead=-1), "item_overhead", id="item_overhead-negative"),
    pytest.param(dict(backend="cuda"), "backend", id="backend-unknown"),
]


@pytest.mark.parametrize("bad, name", BAD)
def test_bad_input_names_the_argument(bad, name):
    kwargs = dict(kv_lens=[10, 20], num_workers=4, page_size=16, min_chunk_tokens=128,
                  item_overhead=32, backend="python")
    kwargs.update(bad)
    with pytest.raises(ValueError, match=rf"^{name} "):
        plan_split_kv(**kwargs)


def test_numpy_scalars_accepted():
    plan = plan_split_kv([300, 40], np.int64(4), page_size=np.int32(16), backend="python")
    assert plan.num_workers == 4


def test_repr_summary():
    text = repr(plan_split_kv([1000, 0, 100], 4, min_chunk_tokens=256, backend="python"))
    assert text == ("SplitKVPlan(batch=3, items=5, chunk_size=283, workers=4/4 busy, "
                    "max_load=315, mean_load=315.0)")


def test_spec_is_shipped():
    spec = scheduler.planner_spec()
    assert spec is scheduler.planner_spec()
    assert spec.backend == "ninja" and spec.uri.startswith("plan_split_kv_ninja_")
    assert scheduler.shipped_specs("sm_80") == [spec]
    # Through the registry's table: jit.shipped_specs() would also run every other family's hook.
    assert registry._SHIPPED["scheduler"]("sm_90") == [spec]
    assert any(p.name == "split_kv.h" for p in spec.headers), "the header is hashed into the uri"


@pytest.mark.parametrize("module", (planner_module, reference_module), ids=("planner", "reference"))
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_auto_falls_back_when_jit_disabled(isolated_cache, monkeypatch, caplog):
    monkeypatch.setattr(planner_module, "_module", None)
    monkeypatch.setattr(planner_module, "_ninja_ok", None)
    monkeypatch.setenv("FLASHKIT_DISABLE_JIT", "1")
    lens = [5000, 17, 0, 900]
    with caplog.at_level("WARNING", logger="flashkit.ops.scheduler"):
        assert_plans_equal(plan_split_kv(lens, 8), naive_plan_split_kv(lens, 8))
    assert "FLASHKIT_DISABLE_JIT" in caplog.text and "Python planner" in caplog.text
    with pytest.raises(JitDisabledError):
        plan_split_kv(lens, 8, backend="ninja")
