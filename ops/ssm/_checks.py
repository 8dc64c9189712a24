"""Input checks shared by the ssm ops; each failure is a ValueError naming the argument."""
from __future__ import annotations

import torch

from .._common.backends import resolve_backend
from .._common.checks import FLOAT_DTYPES, INDEX_DTYPES, check_readable, check_tensor


def ssm_backend(backend: str, device: torch.device) -> str:
    """The ssm row of the backend table (ops/_common/backends.py)."""
    return resolve_backend("ssm", backend, device)


def check_float(name, t, *, shape=None, ndim=None, device=None, dtypes=FLOAT_DTYPES,
                optional=False, contiguous_last=True):
    if t is None:
        if optional:
            return
        raise ValueError(f"{name} is required, got None")
    check_tensor(name, t, dtypes=dtypes, ndim=ndim, shape=shape, device=device,
                 last_dim_contiguous=contiguous_last)


def check_same_dtype(name, t, like_name, like):
    if t is not None and t.dtype != like.dtype:
        raise ValueError(f"{name} must have the dtype of {like_name} ({like.dtype}), got {t.dtype}")


def check_groups(name: str, heads: int, groups: int, what: str = "nheads"):
    if groups < 1 or heads % groups:
        raise ValueError(f"{name}: ngroups ({groups}) must divide {what} ({heads})")


def check_per_head(name, t, nheads, headdim, device):
    """D: [nheads] or [nheads, headdim]."""
    if t is None:
        return
    check_tensor(name, t, dtypes=FLOAT_DTYPES + (torch.float64,), device=device)
    if tuple(t.shape) not in ((nheads,), (nheads, headdim)):
        raise ValueError(f"{name} must have shape ({nheads},) or ({nheads}, {headdim}), "
                         f"got {tuple(t.shape)}")


def check_cu_seqlens(cu_seqlens, batch: int, seqlen: int, device) -> list[int] | None:
    """Validates cu_seqlens [num_seqs + 1] (batch must be 1) and returns it as a list: the one
    device-to-host read of a varlen call (pass the list on, see spans.sequence_spans)."""
    if cu_seqlens is None:
        return None
    check_tensor("cu_seqlens", cu_seqlens, dtypes=INDEX_DTYPES, ndim=1, device=device)
    if batch != 1:
        raise ValueError(f"cu_seqlens needs packed inputs with batch 1, got batch {batch}")
    check_readable("cu_seqlens", cu_seqlens)
    cu = [int(v) for v in cu_seqlens.tolist()]
    if len(cu) < 2 or cu[0] != 0 or cu[-1] != seqlen or any(b < a for a, b in zip(cu, cu[1:])):
        raise ValueError(f"cu_seqlens must be non-decreasing, start at 0 and end at seqlen "
                         f"({seqlen}), with at least 2 entries; got {cu}")
    return cu


def _holds_bool(x) -> bool:
    if isinstance(x, (list, tuple)):
        return any(_holds_bool(e) for e in x)
    return isinstance(x, bool) or getattr(getattr(x, "dtype", None), "kind", "") == "b"


def check_positions(positions, lengths: list[int]) -> torch.Tensor | None:
    """checkpoint_positions: [K] or [num_seqs, K] ints (a tensor or a list), each in
    [0, seqlen of its sequence] or -1 (unused). Returns int64 [num_seqs, K] on the CPU."""
    if positions is None:
        return None
    name = "checkpoint_positions"
    if isinstance(positions, torch.Tensor):
        if positions.dtype not in INDEX_DTYPES:
            raise ValueError(f"{name} must be int32/int64, got {positions.dtype}")
        check_readable(name, positions)
        pos = positions.detach().to("cpu", torch.int64)
    else:
        # Converted as they are, then checked: as_tensor(dtype=int64) would truncate 1.5 to 1
        # (and [0, True] converts to int64 silently, so bools are looked for first).
        if _holds_bool(positions):
            raise ValueError(f"{name} must hold ints, got a bool in {positions!r}")
        try:
            pos = torch.as_tensor(positions)
        except (TypeError, ValueError, RuntimeError, OverflowError) as e:
            raise ValueError(f"{name} must be a tensor or a list of ints: {e}") from None
        if pos.numel() and pos.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8,
                                             torch.uint8):
            raise ValueError(f"{name} must hold ints, got {pos.dtype} values "
                             f"{pos.flatten()[:4].tolist()}")
        pos = pos.to(torch.int64)
    n = len(lengths)
    if pos.dim() == 1:
        pos = pos[None, :].expand(n, -1)
    if pos.dim() != 2 or pos.shape[0] != n:
        raise ValueError(f"{name} must have shape [K] or [num_seqs={n}, K], "
                         f"got {tuple(pos.shape)}")
    limit = torch.tensor(lengths, dtype=torch.int64)[:, None]
    bad = (pos < -1) | (pos > limit)
    if bad.any():
        s, k = bad.nonzero()[0].tolist()
        raise ValueError(f"{name}[{s}, {k}] = {int(pos[s, k])} is outside [0, {lengths[s]}] "
                         "(the length of its sequence; -1 marks an unused slot)")
    return pos.contiguous()


def check_slot_indices(name, idx, batch: int, nslots: int, device):
    """Slot indices [batch] in [0, nslots) or -1 (padding row); no slot used twice."""
    if idx is None:
        if batch > nslots:
            raise ValueError(f"{name} is needed when batch ({batch}) exceeds the pool's "
                             f"{nslots} slots")
        return
    check_tensor(name, idx, dtypes=INDEX_DTYPES, ndim=1, shape=(batch,), device=device)
    if idx.is_cuda and torch.cuda.is_current_stream_capturing():
        # Reading the values syncs with the device, which a CUDA-graph capture forbids: during
        # capture only shape and dtype are checked (eager calls check the values).
        return
    check_readable(name, idx)
    vals = idx.tolist()
    bad = [v for v in vals if v < -1 or v >= nslots]
    if bad:
        raise ValueError(f"{name} must lie in [0, {nslots}) or be -1 (padding), got {bad[0]}")
    used = [v for v in vals if v >= 0]
    if len(set(used)) != len(used):
        raise ValueError(f"{name} uses a slot twice; each row needs its own slot")
