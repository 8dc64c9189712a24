"""What the Triton launchers of every op family share: block sizes, spec-name dtype tags, the
float32 dot precision and the interpreter's bf16-dot switch."""
from __future__ import annotations

import torch

from flashkit.jit.env import interpreted_bf16_dot_upcast

# Spec names spell dtypes with these tags, in every family and backend (``<op>_<backend>_<tag>``).
_DTYPE_TAGS = {torch.float16: "f16", torch.bfloat16: "bf16", torch.float32: "f32"}
_TL_DTYPES = {torch.float16: "tl.float16", torch.bfloat16: "tl.bfloat16",
              torch.float32: "tl.float32"}

# float32 dot operands run as three tf32 products (tf32x3): about float32's accuracy, on tensor
# cores. "ieee" lowers to FMA loops instead: in chunk_ssd_scan they spilled 9-17 KB a thread on
# sm_80/sm_90 (cuobjdump STACK, tests/jit/test_triton_targets.py). fp16/bf16 operands ignore the
# precision argument.
FLOAT32_DOT_PRECISION = "tf32x3"


def pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1): Triton block shapes must be powers of 2."""
    return 1 << max(0, (n - 1).bit_length())


def dtype_tag(dtype: torch.dtype) -> str:
    """The dtype's tag in spec names: f16, bf16, f32."""
    if dtype not in _DTYPE_TAGS:
        raise ValueError(f"dtype must be one of {list(_DTYPE_TAGS)}, got {dtype}")
    return _DTYPE_TAGS[dtype]


def tl_dtype(dtype: torch.dtype) -> str:
    """The ``tl`` dtype a template renders for ``dtype`` (the dot operands' on a GPU)."""
    return _TL_DTYPES[dtype]


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s input_precision for ``dtype`` operands (see FLOAT32_DOT_PRECISION)."""
    return FLOAT32_DOT_PRECISION if dtype == torch.float32 else "tf32"


def dot_f32(dtype: torch.dtype) -> bool:
    """The ``DOT_F32`` launch constexpr of every kernel with a ``tl.dot``: whether its bf16
    operands are upcast to float32, which happens under Triton's interpreter only (see
    jit.env.interpreted_bf16_dot_upcast). A launch-time switch, not a rendered dtype, so a spec
    renders the same source under the interpreter as on a GPU."""
    return dtype == torch.bfloat16 and interpreted_bf16_dot_upcast()
