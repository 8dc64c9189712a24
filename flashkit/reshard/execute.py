"""reshard: execute a ReshardPlan over torch.distributed point-to-point (gloo or NCCL)."""
from __future__ import annotations

import time
from collections import defaultdict

import torch
import torch.distributed as dist

from .plan import ReshardPlan

__all__ = ["reshard", "shard"]


def _offset(ivs, x: int, y: int) -> int:
    """Local start of global rows [x, y) in a tensor holding the concatenation of ``ivs``."""
    off = 0
    for a, b in ivs:
        if a <= x and y <= b:
            return off + x - a
        off += b - a
    raise AssertionError(f"rows [{x}, {y}) are not inside {ivs}")


def shard(full_state_dict, rules, layout, rank: int) -> dict:
    """What ``rank`` holds of a full state dict under ``layout``.

    Returns a dict with the names of the tensors on the rank's stage, each value its TP slice
    (a contiguous copy), e.g. q_proj [heads * head_dim / tp, hidden] on every rank of a layer's
    stage under llama_rules.
    """
    from .layout import resolve

    if not hasattr(full_state_dict, "items"):
        raise TypeError("full_state_dict must be a mapping name -> tensor")
    for name, t in full_state_dict.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"full_state_dict[{name!r}] must be a tensor, got {type(t).__name__}")
    place = resolve({n: t.shape for n, t in full_state_dict.items()}, rules, layout)
    layout.coords(rank)
    out = {}
    for name, t in full_state_dict.items():
        p = place[name]
        ivs = p.intervals(layout, rank)
        if ivs:
            out[name] = torch.cat([t.narrow(p.dim, a, b - a) for a, b in ivs], p.dim).contiguous()
    return out


def _validate(local_state, plan: ReshardPlan, rank: int, dtype):
    if not isinstance(plan, ReshardPlan):
        raise TypeError(f"plan must be a ReshardPlan (from plan_reshard), got "
                        f"{type(plan).__name__}")
    world = plan.src.world_size
    if not isinstance(rank, int) or not 0 <= rank < world:
        raise ValueError(f"rank must be an int in [0, {world}), got {rank!r}")
    if not hasattr(local_state, "items"):
        raise TypeError("local_state must be a mapping name -> tensor")
    for name in local_state:
        if name not in plan.shapes:
            raise ValueError(f"local_state[{name!r}]: the plan has no tensor of that name")
    devices = set()
    for name in plan.shapes:
        want = plan.local_shape(name, rank, "src")
        have = local_state.get(name)
        if want is None:
            if have is not None:
                raise ValueError(f"local_state[{name!r}]: rank {rank} does not hold it under "
                                 f"{plan.src}, but it is present")
            continue
        if have is None:
            raise ValueError(f"local_state is missing {name!r} (expected shape {want} on rank "
                             f"{rank} under {plan.src})")
        if not isinstance(have, torch.Tensor) or tuple(have.shape) != want:
            got = tuple(have.shape) if isinstance(have, torch.Tensor) else type(have).__name__
            raise ValueError(f"local_state[{name!r}] must have shape {want} on rank {rank} "
                             f"under {plan.src}, got {got}")
        if have.element_size() != plan.itemsize[name]:
            raise ValueError(f"local_state[{name!r}] has {have.element_size()}-byte elements; "
                             f"the plan was made for {plan.itemsize[name]}")
        devices.add(have.device)
    if len(devices) > 1:
        raise ValueError(f"local_state tensors must share one device, got "
                         f"{sorted(map(str, devices))}")
    dtypes = {n: t.dtype for n, t in local_state.items()}
    uniform = set(dtypes.values())
    resolved = {}
    for name in plan.shapes:
        dt = plan.dtypes.get(name) or dtypes.get(name) or dtype
        if dt is None and len(uniform) == 1:
            dt = next(iter(uniform))
        if dt is None:
            raise ValueError(f"dtype of {name!r} is unknown on rank {rank}: build the plan from "
                             f"(meta) tensors or pass dtype=")
        resolved[name] = dt
    device = devices.pop() if devices else torch.device("cpu")
    return resolved, device


def reshard(local_state, plan: ReshardPlan, rank: int, group=None, *, dtype=None,
            return_stats: bool = False):
    """Move this rank's tensors from ``plan.src`` to ``plan.dst``; every rank calls it.

    Parameters
    ----------
    local_state : name -> tensor, what ``rank`` holds under plan.src (shapes as ``shard``)
    plan : from plan_reshard (the same on every rank)
    rank : this rank in ``group`` (the world when None)
    dtype : dtype of tensors this rank does not hold yet, when the plan was made from bare
        shapes and local tensors disagree
    return_stats : also return {"seconds", "bytes_sent", "bytes_received", "peak_staging_bytes",
        "steps"}

    Returns
    -------
    The new local state (same names as ``shard`` under plan.dst). ``local_state`` is never
    modified: tensors whose slice is unchanged are reused as they are, the rest are new. Step by
    step, each step's received bytes land in staging buffers (at most plan.max_step_bytes per
    rank, send buffers included) and are copied into the new tensors only after every transfer
    of the step has completed; if a peer fails, RuntimeError is raised and the caller still has
    its old state.
    """
    dtypes, device = _validate(local_state, plan, rank, dtype)
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("reshard needs an initialized torch.distributed process group")
    size = dist.get_world_size(group)
    if size != plan.src.world_size:
        raise ValueError(f"the process group has {size} ranks; the plan is for "
                         f"{plan.src.world_size} ({plan.src} -> {plan.dst})")
    if dist.get_backend(group) == "nccl":
        # NCCL's batched point-to-point is undefined as a group's first collective unless every
        # rank joins it, and ranks with nothing to move in a step skip it.
        dist.barrier(group)
    t0 = time.perf_counter()
    src_pl, dst_pl = plan.src_placement, plan.dst_placement
    new = {}
    for name in plan.kept[rank]:
        new[name] = local_state[name]
    for name in plan.shapes:
        shape = plan.local_shape(name, rank, "dst")
        if shape is not None and name not in new:
            new[name] = torch.empty(shape, dtype=dtypes[name], device=device)
    for t in plan.local:
        if t.dst != rank:
            continue
        src_iv = src_pl[t.name].intervals(plan.src, rank)
        dst_iv = dst_pl[t.name].intervals(plan.dst, rank)
        n = t.stop - t.start
        new[t.name].narrow(t.dim, _offset(dst_iv, t.start, t.stop), n).copy_(
            local_state[t.name].narrow(t.dim, _offset(src_iv, t.start, t.stop), n))
    peer = (lambda r: r) if group is None else (lambda r: dist.get_global_rank(group, r))
    sent = received = peak = 0
    for step_no, idx in enumerate(plan.steps):
        sends, recvs = defaultdict(list), defaultdict(list)
        for i in idx:
            t = plan.transfers[i]
            if t.src == rank:
                sends[t.dst].append(t)
            elif t.dst == rank:
                recvs[t.src].append(t)
        if not sends and not recvs:
            continue
        ops, staged = [], []
        for q in sorted(sends):
            parts = []
            for t in sends[q]:
                iv = src_pl[t.name].intervals(plan.src, rank)
                piece = local_state[t.name].narrow(t.dim, _offset(iv, t.start, t.stop),
                                                   t.stop - t.start)
                parts.append(piece.contiguous().view(torch.uint8).reshape(-1))
            buf = parts[0] if len(parts) == 1 else torch.cat(parts)
            ops.append(dist.P2POp(dist.isend, buf, peer(q), group, step_no))
            sent += buf.numel()
        for q in sorted(recvs):
            buf = torch.empty(sum(t.nbytes for t in recvs[q]), dtype=torch.uint8, device=device)
            ops.append(dist.P2POp(dist.irecv, buf, peer(q), group, step_no))
            staged.append((buf, recvs[q]))
            received += buf.numel()
        peak = max(peak, sum(op.tensor.numel() for op in ops))
        try:
            for work in dist.batch_isend_irecv(ops):
                work.wait()
        except RuntimeError as e:
            peers = sorted(set(sends) | set(recvs))
            raise RuntimeError(f"reshard {plan.src} -> {plan.dst}: step {step_no} with rank(s) "
                               f"{peers} failed on rank {rank}; nothing was committed, the old "
                               f"local state is intact ({e})") from e
        for buf, ts in staged:
            off = 0
            for t in ts:
                dst = new[t.name]
                iv = dst_pl[t.name].intervals(plan.dst, rank)
                view = dst.narrow(t.dim, _offset(iv, t.start, t.stop), t.stop - t.start)
                chunk = buf[off:off + t.nbytes].view(dst.dtype).view(view.shape)
                view.copy_(chunk)
                off += t.nbytes
    if not return_stats:
        return new
    return new, dict(seconds=time.perf_counter() - t0, bytes_sent=sent, bytes_received=received,
                     peak_staging_bytes=peak, steps=len(plan.steps))
