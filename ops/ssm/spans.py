"""Sequence spans: how the ssm launchers (and the references) walk batched or packed inputs."""
from __future__ import annotations


def sequence_spans(batch: int, seqlen: int, cu_seqlens=None) -> list[tuple[int, int, int]]:
    """``(batch index, start, end)`` per sequence: the rows of a batch, or the packed sequences
    of ``cu_seqlens`` (batch 1), given as a tensor (read on the host: a device-to-host copy) or
    as the list of ints ``_checks.check_cu_seqlens`` returned (no copy)."""
    if cu_seqlens is None:
        return [(b, 0, seqlen) for b in range(batch)]
    cu = cu_seqlens if isinstance(cu_seqlens, list) else [int(v) for v in cu_seqlens.tolist()]
    return [(0, cu[i], cu[i + 1]) for i in range(len(cu) - 1)]
