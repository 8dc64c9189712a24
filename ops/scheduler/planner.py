"""Split-KV work planner: the host-side plan() of paged attention.

A decode batch of a few long requests leaves most SMs idle if each request is one work item. The
planner cuts every request's KV range into chunks of one size, chosen to minimize the estimated
makespan (never smaller than ``min_chunk_tokens``), then balances the chunks over the workers
(CTAs) with LPT. Each chunk writes a partial output and LSE that ``merge_states`` combines.

Algorithm (the C++ planner, csrc/scheduler/split_kv.h, and the Python one, reference.py, agree
exactly):

1. ``pages_i = ceil(kv_len_i / page_size)``; ``min_chunk_pages = max(1, ceil(min_chunk_tokens /
   page_size))``; ``hi = max(min_chunk_pages, max_i pages_i)``.
2. The chunk ``c`` (in pages, in ``[min_chunk_pages, hi]``) minimizes the makespan model
   ``M(c) = max(L(c), A(c))``: the longest item ``L(c) = min(c * page_size, max_len) +
   item_overhead`` and the mean load ``A(c) = ceil((sum_len + n_items(c) * item_overhead) /
   num_workers)``, with ``n_items(c) = sum_i ceil(pages_i / c)``. ``L`` grows with ``c`` and
   ``A`` shrinks, so a binary search finds the smallest ``c`` with ``L(c) >= A(c)`` (``hi`` if
   none); ``c - 1`` is taken instead if its ``M`` is strictly lower. Ties go to the larger chunk
   (fewer partial states to merge). ``chunk_size = c * page_size`` tokens.
   (Capping the items at ``num_workers`` instead left a 256-request batch on 264 workers
   unsplit, its longest worker at 14x the mean load; this model brings it to ~1x.)
3. Items in request order, then chunk order: item ``j`` of request ``i`` covers
   ``[j * chunk_size, min((j + 1) * chunk_size, kv_len_i))``; empty requests get none.
4. ``cost = (kv_end - kv_start) + item_overhead``.
5. LPT: items by cost descending (ties: lower item first), each to the least-loaded worker
   (ties: lower worker first). Makespan <= mean load + max item cost.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import operator

import numpy as np
import torch

from flashkit import jit

log = logging.getLogger("flashkit.ops.scheduler")

__all__ = ["SplitKVPlan", "plan_split_kv", "planner_spec", "shipped_specs"]

_BACKENDS = ("auto", "ninja", "python")
# Positions and item indices are stored as int32 (what the attention kernels read).
_INT32_MAX = 2**31 - 1


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class SplitKVPlan:
    """A split-KV plan: work items (KV chunks of requests) and their assignment to workers.

    All tensors are on the CPU; ``n_items`` is ``num_items``, ``batch`` is ``batch_size``.

    Attributes
    ----------
    chunk_size : int
        Tokens per chunk (a multiple of the page size); the last chunk of a request may be shorter.
    request, kv_start, kv_end : int32 [n_items]
        Item ``j`` covers tokens ``kv_start[j]:kv_end[j]`` of request ``request[j]``. Items are in
        request order, then position order.
    merge_indptr : int32 [batch + 1]
        The items of request ``i`` are ``merge_indptr[i]:merge_indptr[i + 1]``: where its partial
        outputs go before ``merge_states``.
    worker_indptr : int32 [num_workers + 1], worker_items : int32 [n_items]
        CSR: worker ``w`` runs items ``worker_items[worker_indptr[w]:worker_indptr[w + 1]]``, in
        the order they were assigned (cost descending).
    worker_load : int64 [num_workers]
        Sum of the costs ``(kv_end - kv_start) + item_overhead`` of each worker's items.
    """

    chunk_size: int
    request: torch.Tensor
    kv_start: torch.Tensor
    kv_end: torch.Tensor
    merge_indptr: torch.Tensor
    worker_indptr: torch.Tensor
    worker_items: torch.Tensor
    worker_load: torch.Tensor

    @property
    def num_items(self) -> int:
        return self.request.shape[0]

    @property
    def batch_size(self) -> int:
        return self.merge_indptr.shape[0] - 1

    @property
    def num_workers(self) -> int:
        return self.worker_load.shape[0]

    def __repr__(self) -> str:
        load = self.worker_load
        busy = int((self.worker_indptr[1:] > self.worker_indptr[:-1]).sum())
        max_load = int(load.max()) if load.numel() else 0
        mean_load = float(load.double().mean()) if load.numel() else 0.0
        return (f"SplitKVPlan(batch={self.batch_size}, items={self.num_items}, "
                f"chunk_size={self.chunk_size}, workers={busy}/{self.num_workers} busy, "
                f"max_load={max_load}, mean_load={mean_load:.1f})")


@functools.lru_cache(maxsize=None)
def planner_spec() -> jit.KernelSpec:
    """The one ninja spec of the planner (nothing in it varies)."""
    return jit.KernelSpec.create("split_kv_planner", "ninja", "scheduler/split_kv.cpp.j2", {})


def shipped_specs(arch: str) -> list[jit.KernelSpec]:
    """What ``flashkit jit build`` prebuilds; host code, so ``arch`` does not matter."""
    return [planner_spec()]


_module = None  # the loaded extension, once plan_split_kv has needed it
_auto_backend: str | None = None  # what "auto" resolved to, decided once per process


def _ninja_module():
    global _module
    if _module is None:
        _module = jit.load(planner_spec())
    return _module


def _resolve_auto() -> str:
    """The ninja planner when it can build and load here, else the Python one (same plans).
    With the JIT allowed, a planner not yet cached is built in the background (background.py)
    and the Python planner serves until it has loaded."""
    global _auto_backend, _module
    if _auto_backend is None:
        ok, why = jit.get_backend("ninja").available()
        if not ok:
            log.warning("split-KV planner: %s; using the Python planner", why)
            _auto_backend = "python"
        elif jit.jit_disabled():
            try:
                _ninja_module()
                _auto_backend = "ninja"
            except jit.JitDisabledError as exc:
                log.warning("split-KV planner: %s; using the Python planner", exc)
                _auto_backend = "python"
        else:
            from .background import module_if_ready

            try:
                module = module_if_ready(planner_spec())
            except jit.JitError:  # logged by the build
                _auto_backend = "python"
            else:
                if module is None:
                    return "python"  # still building: decide again on the next plan
                _module, _auto_backend = module, "ninja"
    return _auto_backend


def _check_int(name: str, value, lo: int) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an int in [{lo}, {_INT32_MAX}], got "
                         f"{type(value).__name__} {value!r}") from None
    if not lo <= v <= _INT32_MAX:
        raise ValueError(f"{name} must be an int in [{lo}, {_INT32_MAX}], got {v}")
    return v


def _check_kv_lens(kv_lens) -> np.ndarray:
    """kv_lens as a contiguous int64 numpy array, or a ValueError naming it."""
    if isinstance(kv_lens, torch.Tensor):
        if kv_lens.is_floating_point() or kv_lens.is_complex() or kv_lens.dtype == torch.bool:
            raise ValueError(f"kv_lens must hold integers, got dtype {kv_lens.dtype}")
        arr = kv_lens.detach().cpu().numpy()  # a CUDA tensor costs a copy and a sync
    elif isinstance(kv_lens, np.ndarray):
        arr = kv_lens
    else:
        try:
            arr = np.asarray(kv_lens)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"kv_lens must be a 1-D sequence of ints ({exc})") from None
        if arr.size == 0:
            arr = arr.astype(np.int64)  # [] parses as float64
    if arr.ndim != 1:
        raise ValueError(f"kv_lens must be 1-D [batch], got shape {tuple(arr.shape)}")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"kv_lens must hold integers, got dtype {arr.dtype}")
    if arr.size:
        lo, hi = arr.min(), arr.max()
        if lo < 0:
            raise ValueError(f"kv_lens must be non-negative, got {int(lo)} at index "
                             f"{int(arr.argmin())}")
        if hi > _INT32_MAX:
            raise ValueError(f"kv_lens must be <= {_INT32_MAX} (int32 positions), got {int(hi)} "
                             f"at index {int(arr.argmax())}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def plan_split_kv(kv_lens, num_workers: int, *, page_size: int = 1, min_chunk_tokens: int = 128,
                  item_overhead: int = 32, backend: str = "auto") -> SplitKVPlan:
    """Split requests' KV ranges into chunks and balance them over ``num_workers`` workers.

    Parameters
    ----------
    kv_lens : int tensor, numpy array or list [batch]
        KV length of each request in tokens (>= 0). A CUDA tensor is copied to the host (a sync).
    num_workers : int
        Workers to fill, typically CTAs resident at once (SMs x CTAs per SM).
    page_size : int
        Tokens per KV page; chunks are whole pages.
    min_chunk_tokens : int
        No chunk is shorter than this (rounded up to pages), except a request's last one: below
        it, a chunk's fixed cost outweighs the parallelism it adds.
    item_overhead : int
        Fixed cost of one work item in KV-token equivalents: loading q, the pipeline prologue,
        writing a partial output and LSE and reading it back in ``merge_states``. It makes LPT
        count a 1-token tail chunk as more than free. The default 32 is a model, not a
        measurement (about two 16-token pages of streaming per item); retune it against the
        paged-attention benchmark.
    backend : {"auto", "ninja", "python"}
        ``"ninja"``: the C++ planner (compiled on first use, a few seconds, then cached on disk).
        ``"python"``: the plain-Python reference. ``"auto"``: ninja when a C++ toolchain is
        present and the JIT is allowed to run (or the planner is already cached), else python;
        a planner not yet cached builds in a background thread while python serves, so the
        first plan never waits for the compiler. Both give identical plans.

    Returns
    -------
    SplitKVPlan
        CPU tensors: ``request``/``kv_start``/``kv_end`` [n_items], ``merge_indptr`` [batch + 1],
        ``worker_indptr`` [num_workers + 1], ``worker_items`` [n_items], ``worker_load``
        [num_workers].

    Examples
    --------
    >>> plan = plan_split_kv([1000, 0, 100], num_workers=4, min_chunk_tokens=256)
    >>> plan.chunk_size, plan.request.tolist(), plan.kv_end.tolist()
    (283, [0, 0, 0, 0, 2], [283, 566, 849, 1000, 100])
    """
    lens = _check_kv_lens(kv_lens)
    num_workers = _check_int("num_workers", num_workers, 1)
    page_size = _check_int("page_size", page_size, 1)
    min_chunk_tokens = _check_int("min_chunk_tokens", min_chunk_tokens, 1)
    item_overhead = _check_int("item_overhead", item_overhead, 0)
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = _resolve_auto()
    if backend == "python":
        from .reference import naive_plan_split_kv

        return naive_plan_split_kv(lens.tolist(), num_workers, page_size=page_size,
                                   min_chunk_tokens=min_chunk_tokens, item_overhead=item_overhead)
    chunk_size, *arrays = _ninja_module().plan(lens, num_workers, page_size, min_chunk_tokens,
                                               item_overhead)
    return SplitKVPlan(chunk_size, *map(torch.from_numpy, arrays))
