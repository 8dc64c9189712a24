"""Input checks shared by the public ops: each failure is a ValueError naming the argument."""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
BACKENDS = ("auto", "cuda", "triton", "torch")


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


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto``: the CUDA kernels on a GPU (Triton where NVRTC is missing), the torch reference
    on CPU. An explicit choice is checked against the device."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type != "cuda":
            return "torch"
        from flashkit.jit import get_backend

        return "cuda" if get_backend("nvrtc").available()[0] else "triton"
    if backend == "cuda" and device.type != "cuda":
        raise ValueError(f"backend='cuda' needs CUDA tensors, got tensors on {device}")
    if backend == "triton" and device.type != "cuda":
        import os

        if os.environ.get("TRITON_INTERPRET", "0") != "1":
            raise ValueError(f"backend='triton' on {device} tensors needs TRITON_INTERPRET=1 "
                             "(Triton's interpreter) set before the first launch")
    return backend
