"""Small helpers shared by the Triton launchers of every op family."""
from __future__ import annotations

import torch

from flashkit.jit.env import interpreted_bf16_dot_upcast


def pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1): Triton block shapes must be powers of 2."""
    return 1 << max(0, (n - 1).bit_length())


def dtype_tag(dtype: torch.dtype) -> str:
    """Short dtype name for spec uris."""
    return {torch.float16: "f16", torch.bfloat16: "bf16", torch.float32: "f32"}[dtype]


def dot_dtype(dtype: torch.dtype) -> str:
    """tl dtype of a kernel's dot operands for ``dtype`` inputs: fp16/bf16 on tensor cores, but
    float32 for bf16 under Triton's interpreter (see jit.env.interpreted_bf16_dot_upcast)."""
    if dtype == torch.bfloat16 and interpreted_bf16_dot_upcast():
        return "tl.float32"
    return {torch.float16: "tl.float16", torch.bfloat16: "tl.bfloat16"}.get(dtype, "tl.float32")
