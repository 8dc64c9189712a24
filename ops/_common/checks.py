"""Input checks shared by the public ops: each failure is a ValueError naming the argument."""
from __future__ import annotations

import operator

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Index tensors: what the ssm and moe ops take (int64 ids are converted where a kernel reads
# int32); attention's page tables are int32 only (the kernels read them as int32, as FlashInfer).
INDEX_DTYPES = (torch.int32, torch.int64)
INT32_DTYPES = (torch.int32,)
INT32_MAX = 2**31 - 1


def _names(dtypes) -> str:
    return "/".join(str(d).replace("torch.", "") for d in dtypes)


def check_tensor(name: str, t, *, dtypes=None, ndim: int | None = None, shape=None,
                 device: torch.device | None = None, last_dim_contiguous: bool = False):
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        raise ValueError(f"{name} must be {_names(dtypes)}, got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on {device} (like the other inputs), got {t.device}")
    if last_dim_contiguous and t.dim() and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name} must have a contiguous last dimension (stride 1), "
                         f"got strides {tuple(t.stride())}")


def check_readable(name: str, t: torch.Tensor) -> None:
    """A tensor whose values the host reads (page tables, lengths, ids): not a meta tensor."""
    if t.is_meta:
        raise ValueError(f"{name} must hold values (a CPU or device tensor), got a meta tensor")


def check_int(name: str, value, lo: int, hi: int = INT32_MAX) -> int:
    """A Python (or numpy) int in [lo, hi], returned as an int; bools are refused. The default
    bound is int32's: positions and counts reach the kernels as int32."""
    try:
        if isinstance(value, bool):
            raise TypeError
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an int in [{lo}, {hi}], got "
                         f"{type(value).__name__} {value!r}") from None
    if not lo <= v <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {v}")
    return v


def host_checks_enabled() -> bool:
    """Whether a check that reads device values on the host (one sync) may run: not while
    torch.compile traces, nor while a CUDA graph captures (a sync would end the capture)."""
    if torch.compiler.is_compiling():
        return False
    return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())
