"""Triton launcher of APOLLO's elementwise step (templates/optim/apollo_step.py.j2).

Specialized by scale type (channel / tensor) and parameter dtype; one module holds both kernels.
"""
from __future__ import annotations

import math

import torch

from flashkit import jit

from .reference import SCALE_EPS, channel_axis, limiter_slots
from .._common.specs import memoized_spec
from .._common.triton import dtype_tag, pow2

PARAM_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
SCALE_TYPES = ("channel", "tensor")

# Moments kernel: 64 channels per program (64 programs for 4096 channels, 172 for 11008: fewer
# than an H100's 132 SMs in the first case); the rank loop reads [32, 64] fp32 tiles (8 KB per
# moment). Not tuned on a GPU yet (docs/status.md).
_BLOCK_C = 64
_BLOCK_R = 32
_BLOCK_K = 32
# Apply kernel: 4096 elements per program (32 per thread at Triton's default 4 warps) as 8 x 512
# tiles; a 4096 x 11008 matrix gives 512 x 22 = 11264 programs.
_APPLY_ELEMS = 4096
_MAX_BLOCK_N = 512
# The partials vector has one entry per moments program: 172 for an 11008-wide matrix.
_MAX_BLOCK_P = 256



@memoized_spec
def apollo_step_triton_spec(scale_type: str, param_dtype: torch.dtype) -> jit.KernelSpec:
    dtype = PARAM_DTYPES[param_dtype]
    name = f"apollo_fused_update_triton_{dtype_tag(param_dtype)}_{scale_type}"
    return jit.KernelSpec.create(name, "triton", "optim/apollo_step.py.j2",
                                 {"scale_type": scale_type, "param_dtype": dtype,
                                  "scale_eps": float(SCALE_EPS)})


def shipped_triton_specs() -> list[jit.KernelSpec]:
    return [apollo_step_triton_spec(st, dt) for st in SCALE_TYPES for dt in PARAM_DTYPES]


def apollo_update_triton(param, grad, proj_grad, exp_avg, exp_avg_sq, limiter_norm, *, step,
                         lr, beta1, beta2, eps, weight_decay, scale, scale_type,
                         limiter_gamma) -> None:
    rows, cols = param.shape
    rank, n_chan = proj_grad.shape
    if param.numel() == 0:
        return
    module = jit.load(apollo_step_triton_spec(scale_type, param.dtype))
    axis = channel_axis(param.shape)
    k_dim = rows if axis == 1 else cols
    # Strides of G seen as [k, C] (the projected axis first): a transposed view when axis == 0.
    sk_g, sc_g = (grad.stride(0), 1) if axis == 1 else (1, grad.stride(0))
    n_prog = -(-n_chan // _BLOCK_C)
    dev = param.device
    s = torch.empty(n_chan if scale_type == "channel" else 1, dtype=torch.float32, device=dev)
    part = torch.empty((1 if scale_type == "channel" else 3) * n_prog, dtype=torch.float32,
                       device=dev)
    bc1, bc2 = 1 - beta1 ** step, 1 - beta2 ** step
    module._apollo_moments_kernel[(n_prog,)](
        proj_grad, exp_avg, exp_avg_sq, grad, s, part, rank, n_chan, k_dim, n_prog,
        proj_grad.stride(0), sk_g, sc_g, beta1, beta2, 1 / bc1, 1 / math.sqrt(bc2), eps,
        BLOCK_R=min(pow2(rank), _BLOCK_R), BLOCK_C=_BLOCK_C, BLOCK_K=_BLOCK_K,
    )
    block_n = min(pow2(cols), _MAX_BLOCK_N)
    block_m = max(1, min(pow2(rows), _APPLY_ELEMS // block_n))
    grid = (-(-rows // block_m) * -(-cols // block_n),)
    read, _ = limiter_slots(step)
    # The kernel reads gamma = 0 as "limiter off": inf times the first step's zero norm is NaN.
    gamma = limiter_gamma if math.isfinite(limiter_gamma) else 0.0
    module._apollo_apply_kernel[grid](
        param, grad, s, part, limiter_norm, n_prog, rows, cols, param.stride(0), grad.stride(0),
        read, lr, weight_decay, math.sqrt(scale), gamma,
        CHANNEL_AXIS=axis, BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_P=min(pow2(n_prog), _MAX_BLOCK_P),
    )
