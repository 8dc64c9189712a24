"""merge_state, merge_state_in_place, merge_states: combine partial attention states.

Split-KV attention computes, for each chunk of keys, the chunk's softmax-weighted values v and
base-2 log-sum-exp s; these ops combine chunks exactly (FlashInfer's semantics and shapes).
Registered as torch.library custom ops (flashkit::*) with fake implementations, so they trace
under torch.compile and are captured by CUDA graphs.
"""
from __future__ import annotations

import torch

from .._common.backends import resolve_backend
from .._common.checks import FLOAT_DTYPES, check_tensor
from .._common.custom_op import custom_op, eager_or_op
from . import reference

__all__ = ["merge_state", "merge_state_in_place", "merge_states"]


def _run_pair(backend: str, v_a, s_a, v_b, s_b, v_out, s_out, mask=None):
    if backend == "cuda":
        from .merge_state_cuda import merge_state_cuda

        merge_state_cuda(v_a, s_a, v_b, s_b, v_out, s_out, mask)
    elif backend == "triton":
        from .merge_state_triton import merge_state_triton

        merge_state_triton(v_a, s_a, v_b, s_b, v_out, s_out, mask)
    else:
        v, s = reference.naive_merge_state(v_a, s_a, v_b, s_b)
        if mask is None:
            v_out.copy_(v)
            s_out.copy_(s)
        else:
            v_out.copy_(torch.where(mask[:, None, None], v, v_out))
            s_out.copy_(torch.where(mask[:, None], s, s_out))


def _merge_state_impl(v_a: torch.Tensor, s_a: torch.Tensor, v_b: torch.Tensor, s_b: torch.Tensor,
                      backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    v_out = torch.empty(v_a.shape, dtype=v_a.dtype, device=v_a.device)
    s_out = torch.empty(s_a.shape, dtype=torch.float32, device=s_a.device)
    _run_pair(backend, v_a, s_a, v_b, s_b, v_out, s_out)
    return v_out, s_out


_merge_state_op = custom_op("merge_state", _merge_state_impl)


@_merge_state_op.register_fake
def _(v_a, s_a, v_b, s_b, backend):
    return torch.empty_like(v_a, memory_format=torch.contiguous_format), torch.empty_like(
        s_a, dtype=torch.float32, memory_format=torch.contiguous_format)


def _merge_state_in_place_impl(v: torch.Tensor, s: torch.Tensor, v_other: torch.Tensor,
                               s_other: torch.Tensor, mask: torch.Tensor | None,
                               backend: str) -> None:
    _run_pair(backend, v, s, v_other, s_other, v, s, mask)


_merge_state_in_place_op = custom_op("merge_state_in_place", _merge_state_in_place_impl,
                                     mutates_args=("v", "s"))


@_merge_state_in_place_op.register_fake
def _(v, s, v_other, s_other, mask, backend):
    return None


def _merge_states_impl(v: torch.Tensor, s: torch.Tensor,
                       backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    seq, _, heads, dim = v.shape
    if backend == "torch":
        v_out, s_out = reference.naive_merge_states(v, s)
        return v_out.contiguous(), s_out.to(torch.float32).contiguous()
    v_out = torch.empty((seq, heads, dim), dtype=v.dtype, device=v.device)
    s_out = torch.empty((seq, heads), dtype=torch.float32, device=v.device)
    if backend == "cuda":
        from .merge_state_cuda import merge_states_cuda

        merge_states_cuda(v, s, v_out, s_out)
    else:
        from .merge_state_triton import merge_states_triton

        merge_states_triton(v, s, v_out, s_out)
    return v_out, s_out


_merge_states_op = custom_op("merge_states", _merge_states_impl)


@_merge_states_op.register_fake
def _(v, s, backend):
    seq, _, heads, dim = v.shape
    return v.new_empty((seq, heads, dim)), s.new_empty((seq, heads), dtype=torch.float32)


def _check_state(prefix: str, v, s, like=None):
    """v [seq, heads, dim] (fp16/bf16/fp32, last dim contiguous), s [seq, heads] float32."""
    vn, sn = f"v_{prefix}" if prefix else "v", f"s_{prefix}" if prefix else "s"
    check_tensor(vn, v, dtypes=FLOAT_DTYPES, ndim=3, last_dim_contiguous=True,
                 shape=like.shape if like is not None else None,
                 device=like.device if like is not None else None)
    if like is not None and v.dtype != like.dtype:
        raise ValueError(f"{vn} must have the dtype of the first state ({like.dtype}), got {v.dtype}")
    check_tensor(sn, s, dtypes=(torch.float32,), shape=v.shape[:2], device=v.device)


def merge_state(v_a: torch.Tensor, s_a: torch.Tensor, v_b: torch.Tensor, s_b: torch.Tensor,
                *, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two attention states.

    Parameters
    ----------
    v_a, v_b : [seq, num_heads, head_dim], fp16/bf16/fp32 (same dtype), last dim contiguous
    s_a, s_b : [seq, num_heads], float32 base-2 log-sum-exp (-inf: an empty state; +inf: a
        state that takes all the weight, both +inf: their mean, s = +inf; NaN gives NaN)
    backend : "auto" | "cuda" | "triton" | "torch" (auto: the CUDA kernel on a GPU where NVRTC
        works, else Triton; the torch reference on CPU)

    Returns
    -------
    v : [seq, num_heads, head_dim], v_a's dtype;  s : [seq, num_heads], float32

    Example
    -------
    >>> v, s = flashkit.merge_state(v_a, s_a, v_b, s_b)   # attention over both key sets
    """
    _check_state("a", v_a, s_a)
    _check_state("b", v_b, s_b, like=v_a)
    backend = resolve_backend("merge_state", backend, v_a.device)
    return eager_or_op(_merge_state_op, _merge_state_impl)(v_a, s_a, v_b, s_b, backend)


def merge_state_in_place(v: torch.Tensor, s: torch.Tensor, v_other: torch.Tensor,
                         s_other: torch.Tensor, mask: torch.Tensor | None = None, *,
                         backend: str = "auto") -> None:
    """Merge (v_other, s_other) into (v, s) in place; rows whose ``mask`` is False keep theirs.

    v, v_other : [seq, num_heads, head_dim];  s, s_other : [seq, num_heads] float32;
    mask : optional bool [seq]. backend as in merge_state.
    """
    _check_state("", v, s)
    _check_state("other", v_other, s_other, like=v)
    if mask is not None:
        check_tensor("mask", mask, dtypes=(torch.bool,), shape=v.shape[:1], device=v.device)
    backend = resolve_backend("merge_state", backend, v.device)
    eager_or_op(_merge_state_in_place_op, _merge_state_in_place_impl)(v, s, v_other, s_other, mask,
                                                                    backend)


def merge_states(v: torch.Tensor, s: torch.Tensor, *,
                 backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Merge ``num_states`` attention states per (token, head).

    Parameters
    ----------
    v : [seq, num_states, num_heads, head_dim], fp16/bf16/fp32, last dim contiguous
    s : [seq, num_states, num_heads], float32 base-2 log-sum-exp
    backend : "auto" | "cuda" | "triton" | "torch" (auto: the CUDA kernel on a GPU where NVRTC
        works, else Triton; the torch reference on CPU)

    Returns
    -------
    v : [seq, num_heads, head_dim], v's dtype;  s : [seq, num_heads], float32.
    A row whose states are all empty (s = -inf) gives v = 0, s = -inf; the states with
    s = +inf, if any, share all the weight equally and s = +inf (as in merge_state).
    """
    check_tensor("v", v, dtypes=FLOAT_DTYPES, ndim=4, last_dim_contiguous=True)
    check_tensor("s", s, dtypes=(torch.float32,), shape=v.shape[:3], device=v.device)
    backend = resolve_backend("merge_state", backend, v.device)
    return eager_or_op(_merge_states_op, _merge_states_impl)(v, s, backend)
