"""apollo_fused_update: APOLLO's elementwise step for one 2-D parameter, in place.

Everything after the projection matmul R = P G (moments, channel/tensor scaling, norm-growth
limiter, decoupled weight decay, the weight write) as one op; the math is reference.py's.
Registered as a torch.library custom op (flashkit::apollo_fused_update) that mutates param,
exp_avg, exp_avg_sq and limiter_norm, with a fake implementation, so it traces under
torch.compile.
"""
from __future__ import annotations

import math

import torch

from .._common.backends import resolve_backend
from .._common.checks import FLOAT_DTYPES, check_int, check_tensor
from .._common.custom_op import custom_op, eager_or_op
from . import reference

__all__ = ["apollo_fused_update", "check_apollo_hparams"]

SCALE_TYPES = ("channel", "tensor")


def _apollo_impl(param: torch.Tensor, grad: torch.Tensor, proj_grad: torch.Tensor,
                 exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, limiter_norm: torch.Tensor,
                 step: int, lr: float, beta1: float, beta2: float, eps: float,
                 weight_decay: float, scale: float, scale_type: str, limiter_gamma: float,
                 backend: str) -> None:
    kw = dict(step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
              scale=scale, scale_type=scale_type, limiter_gamma=limiter_gamma)
    if backend == "triton":
        from .apollo_triton import apollo_update_triton

        apollo_update_triton(param, grad, proj_grad, exp_avg, exp_avg_sq, limiter_norm, **kw)
    else:
        reference.naive_apollo_update(param, grad, proj_grad, exp_avg, exp_avg_sq, limiter_norm,
                                      **kw)


_apollo_op = custom_op("apollo_fused_update", _apollo_impl,
                       mutates_args=("param", "exp_avg", "exp_avg_sq", "limiter_norm"))


@_apollo_op.register_fake
def _(param, grad, proj_grad, exp_avg, exp_avg_sq, limiter_norm, step, lr, beta1, beta2, eps,
      weight_decay, scale, scale_type, limiter_gamma, backend):
    return None


def _check_number(name: str, value, *, low=None, high=None, low_open=False, high_open=False,
                  allow_inf=False):
    """A real number in range; inf only with ``allow_inf`` (lr=inf or weight_decay=inf would
    turn every parameter into inf or NaN in one step)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if math.isinf(value) and not allow_inf:
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value}")


def check_apollo_hparams(*, lr, beta1, beta2, eps, weight_decay, scale, scale_type,
                         limiter_gamma) -> None:
    """Raise a ValueError naming the first out-of-range hyper-parameter."""
    _check_number("lr", lr, low=0.0)
    _check_number("beta1", beta1, low=0.0, high=1.0, high_open=True)
    _check_number("beta2", beta2, low=0.0, high=1.0, high_open=True)
    _check_number("eps", eps, low=0.0, low_open=True)
    _check_number("weight_decay", weight_decay, low=0.0)
    _check_number("scale", scale, low=0.0, low_open=True)
    if scale_type not in SCALE_TYPES:
        raise ValueError(f"scale_type must be one of {SCALE_TYPES}, got {scale_type!r}")
    # A cap below 1 would shrink every update geometrically towards zero; inf disables it.
    _check_number("limiter_gamma", limiter_gamma, low=1.0, allow_inf=True)


def apollo_fused_update(param: torch.Tensor, grad: torch.Tensor, proj_grad: torch.Tensor,
                        exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                        limiter_norm: torch.Tensor, *, step: int, lr: float, beta1: float = 0.9,
                        beta2: float = 0.999, eps: float = 1e-6, weight_decay: float = 0.0,
                        scale: float = 1.0, scale_type: str = "channel",
                        limiter_gamma: float = 1.01, backend: str = "auto") -> None:
    """One APOLLO step after the projection, in place.

    Parameters
    ----------
    param : [m, n] float32/bfloat16/float16 (float64: torch backend only), last dim contiguous;
        updated in place
    grad : [m, n], param's dtype, dense, last dim contiguous (the full-rank raw gradient)
    proj_grad : [rank, max(m, n)], float, last dim contiguous: R = P G (rows of G projected when
        m <= n) or R = P G^T (m > n), with 1 <= rank <= min(m, n)
    exp_avg, exp_avg_sq : [rank, max(m, n)] float32 (float64 for float64 params), contiguous;
        updated in place
    limiter_norm : [2], exp_avg's dtype (zeros before the first step); the limiter's two slots
    step : 1-based step count (bias correction, limiter slot)
    lr, beta1, beta2, eps, weight_decay : AdamW's hyper-parameters (decoupled decay)
    scale : the update is multiplied by sqrt(scale) (APOLLO-Mini: 128)
    scale_type : "channel" (one factor per channel, along max(m, n)) | "tensor"
    limiter_gamma : the norm of the update grows at most by this factor per step (inf: off)
    backend : "auto" | "triton" | "torch" (auto: triton on CUDA, torch on CPU)

    Example
    -------
    >>> r = p_mat @ w.grad                                   # [rank, n] for w [m, n], m <= n
    >>> apollo_fused_update(w, w.grad, r, m, v, lim, step=1, lr=1e-3)
    """
    check_tensor("param", param, dtypes=FLOAT_DTYPES + (torch.float64,), ndim=2,
                 last_dim_contiguous=True)
    state_dtype = torch.promote_types(param.dtype, torch.float32)
    if isinstance(grad, torch.Tensor) and grad.layout != torch.strided:
        raise ValueError(f"grad must be a dense tensor; APOLLO does not support sparse "
                         f"gradients, got layout {grad.layout}")
    check_tensor("grad", grad, dtypes=(param.dtype,), shape=param.shape, device=param.device,
                 last_dim_contiguous=True)
    check_tensor("proj_grad", proj_grad, dtypes=FLOAT_DTYPES + (torch.float64,), ndim=2, device=param.device,
                 last_dim_contiguous=True)
    rows, cols = param.shape
    rank = proj_grad.shape[0]
    if not 1 <= rank <= min(rows, cols) or proj_grad.shape[1] != max(rows, cols):
        raise ValueError(f"proj_grad must have shape [rank, {max(rows, cols)}] with 1 <= rank <= "
                         f"{min(rows, cols)} for param {tuple(param.shape)}, "
                         f"got {tuple(proj_grad.shape)}")
    for name, t in (("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        check_tensor(name, t, dtypes=(state_dtype,), shape=proj_grad.shape, device=param.device)
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous, got strides {tuple(t.stride())}")
    check_tensor("limiter_norm", limiter_norm, dtypes=(state_dtype,), shape=(2,),
                 device=param.device)
    if not limiter_norm.is_contiguous():
        raise ValueError("limiter_norm must be contiguous")
    # The kernels take step as int32 (bias correction beta**step, limiter slot step % 2).
    check_int("step", step, 1)
    check_apollo_hparams(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                         scale=scale, scale_type=scale_type, limiter_gamma=limiter_gamma)
    backend = resolve_backend("apollo_fused_update", backend, param.device)
    if backend == "triton" and param.dtype == torch.float64:
        raise ValueError("param must be float16/bfloat16/float32 for backend='triton', "
                         "got torch.float64")
    # The optimizer calls this once per matrix per step: the eager bypass matters here.
    eager_or_op(_apollo_op, _apollo_impl)(
        param, grad, proj_grad, exp_avg, exp_avg_sq, limiter_norm, step, float(lr), float(beta1),
        float(beta2), float(eps), float(weight_decay), float(scale), scale_type,
        float(limiter_gamma), backend)
