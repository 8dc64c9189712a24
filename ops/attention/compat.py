"""FlashInfer's arguments that flashkit takes for signature compatibility: the ones accepted
with no effect are still validated (a wrong type or dtype raises), the unsupported ones are
refused with a ValueError naming the argument. docs/attention.md's compatibility table lists them.
"""
from __future__ import annotations

import math

import torch

from .checks import as_dtype

# FlashInfer's backend names: each picks one of its own kernels; flashkit's kernel for all of
# them is its Triton/CUDA attention, chosen as backend="auto" chooses.
FLASHINFER_BACKENDS = ("fa2", "fa3", "cudnn", "cutlass", "trtllm-gen", "cute-dsl")
OUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def as_backend(backend: str) -> str:
    """FlashInfer's backend names mean flashkit's "auto"; flashkit's own names pass through."""
    return "auto" if backend in FLASHINFER_BACKENDS else backend


def check_flag(name: str, value, allow_none: bool = False) -> None:
    """A bool argument accepted with no effect (use_tensor_cores, enable_pdl, ...)."""
    if value is None and allow_none:
        return
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool{' or None' if allow_none else ''}, got "
                        f"{value!r}")


def check_rope(pos_encoding_mode, rope_scale=None, rope_theta=None) -> None:
    """pos_encoding_mode='NONE' only (apply RoPE before attention); rope_scale/rope_theta only
    parameterize FlashInfer's in-kernel RoPE, so without it they have no effect (as in
    FlashInfer) but must still be None or finite positive floats."""
    if pos_encoding_mode != "NONE":
        raise ValueError(f"pos_encoding_mode must be 'NONE' (flashkit has no in-kernel RoPE or "
                         f"ALiBi: apply RoPE to q/k before attention), got {pos_encoding_mode!r}")
    for name, x in (("rope_scale", rope_scale), ("rope_theta", rope_theta)):
        if x is not None and (isinstance(x, bool) or not isinstance(x, (int, float))
                              or not math.isfinite(x) or x <= 0):
            raise ValueError(f"{name} must be None or a finite float > 0, got {x!r}")


def check_scale(name: str, value) -> float:
    """q_scale/k_scale/v_scale: None (1.0) or a finite float."""
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be None or a finite float, got {value!r}")
    return float(value)


def refuse(what: str, **args) -> None:
    """Raise for the first argument that is not None/False: ``what`` says why flashkit has no
    such thing."""
    for name, value in args.items():
        if value is not None and value is not False:
            raise ValueError(f"{name} is not supported by flashkit ({what}); pass {name}=None")


def check_split_hints(fixed_split_size, disable_split_kv) -> None:
    """FlashInfer's split-KV knobs. flashkit's planner chooses the split (plan's num_workers /
    min_chunk_tokens steer it); these are accepted and have no effect."""
    if fixed_split_size is not None and (isinstance(fixed_split_size, bool)
                                         or not isinstance(fixed_split_size, int)
                                         or fixed_split_size < 1 and fixed_split_size != -1):
        raise ValueError(f"fixed_split_size must be None, -1 or an int >= 1, got "
                         f"{fixed_split_size!r}")
    check_flag("disable_split_kv", disable_split_kv)


def check_one(name: str, value, want, why: str = "") -> None:
    """An argument flashkit supports at one value only (q_len_per_req=1, window_right=0, ...)."""
    if value is not None and (isinstance(value, bool) or value != want):
        raise ValueError(f"{name} must be {want!r} (or None) in flashkit{why}, got {value!r}")


def out_dtype(name: str, value, q_dtype: torch.dtype) -> torch.dtype:
    """o_data_type / o_dtype: the output's dtype (None: q's); the kernels cast on store."""
    return as_dtype(name, value, default=q_dtype, allowed=OUT_DTYPES)


def plan_dtypes(q_data_type, kv_data_type, data_type, kv_allowed):
    """(q dtype, kv dtype): FlashInfer's deprecated ``data_type`` fills whichever of the two is
    None (q_data_type defaults to "float16", so only an explicit None takes it)."""
    if data_type is not None:
        q_data_type = data_type if q_data_type is None else q_data_type
        kv_data_type = data_type if kv_data_type is None else kv_data_type
    q_dtype = as_dtype("q_data_type", q_data_type)
    return q_dtype, as_dtype("kv_data_type", kv_data_type, default=q_dtype, allowed=kv_allowed)


def check_lse_form(lse_base, lse_layout) -> None:
    """run()'s lse_base ('log2': flashkit's LSE is base 2; 'ln' is converted after the launch)
    and lse_layout ('NH': [tokens, heads], the only one flashkit writes)."""
    if lse_base not in ("log2", "ln"):
        raise ValueError(f"lse_base must be 'log2' or 'ln', got {lse_base!r}")
    if lse_layout != "NH":
        raise ValueError(f"lse_layout must be 'NH' ([tokens, heads]) in flashkit, got "
                         f"{lse_layout!r}")


def variant_args_of(args: tuple, variant_args) -> tuple:
    """run()'s extra positional arguments are FlashInfer's JIT-variant arguments: flashkit's
    variant_args. One or the other."""
    if args and variant_args:
        raise TypeError("pass the variant's arguments positionally or as variant_args, not both")
    return tuple(args) if args else variant_args


def check_prefill_extras(head_dim_qk, head_dim_vo, packed_custom_mask, pos_encoding_mode,
                         use_fp16_qk_reduction, rope_scale, rope_theta, token_pos_in_items_len,
                         fixed_split_size, disable_split_kv, **unsupported) -> None:
    """The FlashInfer plan() arguments of the prefill wrappers beyond flashkit's own: RoPE,
    split hints and flags checked (no effect), the rest refused unless None/False."""
    check_one("head_dim_vo", head_dim_vo, head_dim_qk, " (head_dim_qk: q, k and v share one "
              "head_dim)")
    check_rope(pos_encoding_mode, rope_scale, rope_theta)
    check_flag("use_fp16_qk_reduction", use_fp16_qk_reduction)  # flashkit: fp32 QK always
    check_split_hints(fixed_split_size, disable_split_kv)
    check_one("token_pos_in_items_len", token_pos_in_items_len, 0)
    refuse("pass the mask unpacked as a bool custom_mask", packed_custom_mask=packed_custom_mask)
    refuse("no multi-item scoring, trtllm-gen page tables, separate v/o indptrs or NVFP4 "
           "scale factors", **unsupported)


def check_host_indptr(name: str, host, indptr) -> None:
    """qo_indptr_cpu / kv_indptr_cpu: FlashInfer's host copies, which must equal the indptr."""
    if host is None:
        return
    if not isinstance(host, torch.Tensor) or host.device.type != "cpu" \
            or not torch.equal(host.to(torch.int64), indptr.to("cpu", torch.int64)):
        raise ValueError(f"{name} must be None or a CPU copy of the indptr it names")


def check_uniform_q_len(uniform_q_len, qo_ptr) -> None:
    """FlashInfer's promise that every request has uniform_q_len queries: checked."""
    if uniform_q_len is None:
        return
    lens = set((qo_ptr[1:] - qo_ptr[:-1]).tolist())
    if isinstance(uniform_q_len, bool) or lens - {uniform_q_len}:
        raise ValueError(f"uniform_q_len={uniform_q_len!r} but qo_indptr has query lengths "
                         f"{sorted(lens)}")
