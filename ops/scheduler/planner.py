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

import logging

import numpy as np
import torch

from flashkit import jit

from .._common.backends import resolve_backend
from .._common.checks import INT32_MAX, check_int
from .._common.specs import memoized_spec
from .plan import SplitKVPlan
from .reference import naive_plan_split_kv

log = logging.getLogger("flashkit.ops.scheduler")

__all__ = ["SplitKVPlan", "plan_split_kv", "planner_spec", "shipped_specs"]



@memoized_spec
def planner_spec() -> jit.KernelSpec:
    """The one ninja spec of the planner (nothing in it varies)."""
    return jit.KernelSpec.create("plan_split_kv_ninja", "ninja", "scheduler/split_kv.cpp.j2", {})


def shipped_specs(arch: str) -> list[jit.KernelSpec]:
    """What ``flashkit jit build`` prebuilds; host code, so ``arch`` does not matter."""
    return [planner_spec()]


_module = None  # the loaded extension, once plan_split_kv has needed it
_ninja_ok: bool | None = None  # whether the ninja planner loads here, once known


def _ninja_module():
    global _module
    if _module is None:
        _module = jit.load(planner_spec())
    return _module


def _ninja_loads(name: str) -> bool:
    """The probe of ``auto`` (the plan_split_kv row of ops/_common/backends.py): whether the
    ninja planner is loaded here. With the JIT allowed, a planner not yet cached is built in the
    background (background.py) and the Python planner (same plans) serves until it has loaded."""
    global _ninja_ok, _module
    if _ninja_ok is None:
        ok, why = jit.get_backend("ninja").available()
        if not ok:
            log.warning("split-KV planner: %s; using the Python planner", why)
            _ninja_ok = False
        elif jit.jit_disabled():
            try:
                _ninja_module()
                _ninja_ok = True
            except jit.JitDisabledError as exc:
                log.warning("split-KV planner: %s; using the Python planner", exc)
                _ninja_ok = False
        else:
            from .background import module_if_ready

            try:
                module = module_if_ready(planner_spec())
            except jit.JitError:  # logged by the build
                _ninja_ok = False
            else:
                if module is None:
                    return False  # still building: decide again on the next plan
                _module, _ninja_ok = module, True
    return _ninja_ok


def _check_kv_lens(kv_lens) -> np.ndarray:
    """kv_lens as a contiguous int64 numpy array, or a ValueError naming it."""
    if isinstance(kv_lens, torch.Tensor):
        if kv_lens.is_meta:
            raise ValueError("kv_lens must be a tensor with values (CPU or CUDA), got a meta "
                             "tensor")
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
        if hi > INT32_MAX:
            raise ValueError(f"kv_lens must be <= {INT32_MAX} (int32 positions), got {int(hi)} "
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
    num_workers = check_int("num_workers", num_workers, 1)
    page_size = check_int("page_size", page_size, 1)
    min_chunk_tokens = check_int("min_chunk_tokens", min_chunk_tokens, 1)
    item_overhead = check_int("item_overhead", item_overhead, 0)
    backend = resolve_backend("plan_split_kv", backend, None, available=_ninja_loads)
    if backend == "python":
        return naive_plan_split_kv(lens.tolist(), num_workers, page_size=page_size,
                                   min_chunk_tokens=min_chunk_tokens, item_overhead=item_overhead)
    chunk_size, *arrays = _ninja_module().plan(lens, num_workers, page_size, min_chunk_tokens,
                                               item_overhead)
    return SplitKVPlan(chunk_size, *map(torch.from_numpy, arrays))
