"""Triton launchers of fused_topk (templates/moe/fused_topk.py.j2) and the fused_moe grouped
GEMMs (templates/moe/fused_moe.py.j2)."""
from __future__ import annotations

import torch

from flashkit import jit
from .._common.triton import dot_f32, dot_precision, dtype_tag, pow2, tl_dtype
from .._common.specs import memoized_spec

_ACTIVATION_EXPR = {
    "silu": "x * tl.sigmoid(x)",
    "gelu": "0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))",  # exact (erf) GELU
}



@memoized_spec
def fused_topk_triton_spec(num_experts: int, topk: int, num_groups: int,
                           topk_group: int) -> jit.KernelSpec:
    return jit.KernelSpec.create(
        f"fused_topk_triton_e{num_experts}_k{topk}_g{num_groups}_tg{topk_group}", "triton",
        "moe/fused_topk.py.j2",
        {"num_experts": num_experts, "topk": topk, "num_groups": num_groups,
         "topk_group": topk_group, "block_g": pow2(num_groups),
         "block_s": pow2(num_experts // num_groups), "block_k": pow2(topk)})


@memoized_spec
def fused_moe_triton_spec(dtype: torch.dtype, activation: str) -> jit.KernelSpec:
    return jit.KernelSpec.create(
        f"fused_moe_triton_{dtype_tag(dtype)}_{activation}", "triton", "moe/fused_moe.py.j2",
        {"dot_dtype": tl_dtype(dtype), "dot_precision": dot_precision(dtype), "activation": activation,
         "activation_expr": jit.Snippet(_ACTIVATION_EXPR[activation], "expression")})


def shipped_triton_specs() -> list[jit.KernelSpec]:
    """bf16/fp16 x silu/gelu grouped GEMMs; Mixtral (8, top-2), Qwen3-MoE (128, top-8) and
    DeepSeek-V3 (256 in 8 groups, 4 kept, top-8) routers."""
    specs = [fused_moe_triton_spec(dt, act) for dt in (torch.bfloat16, torch.float16)
             for act in _ACTIVATION_EXPR]
    return specs + [fused_topk_triton_spec(8, 2, 1, 1), fused_topk_triton_spec(128, 8, 1, 1),
                    fused_topk_triton_spec(256, 8, 8, 4)]


def fused_topk_triton(logits, topk, renormalize, sigmoid, bias, num_groups, topk_group,
                      weights, ids) -> None:
    tokens, num_experts = logits.shape
    if tokens == 0:
        return
    kernel = jit.load(fused_topk_triton_spec(num_experts, topk, num_groups, topk_group))
    kernel._fused_topk_kernel[(tokens,)](
        logits, bias if bias is not None else logits, weights, ids,
        logits.stride(0), logits.stride(1), weights.stride(0), weights.stride(1),
        ids.stride(0), ids.stride(1),
        SIGMOID=sigmoid, HAS_BIAS=bias is not None, RENORMALIZE=renormalize)


def fused_moe_triton(hidden, w1, w2, topk_weights, topk_ids, activation, config, out,
                     align) -> None:
    """``out`` [tokens, hidden] may be ``hidden`` itself (inplace): GEMM1 reads every row of
    ``hidden`` before GEMM2 or the sum write any (stream order)."""
    tokens, hidden_size = hidden.shape
    num_experts, ffn = w2.shape[0], w2.shape[2]
    topk = topk_ids.shape[1]
    if tokens == 0:
        return
    block_m, block_n, block_k, group_m, warps, stages = config
    sorted_ids, expert_ids, post_pad = align(topk_ids, block_m, num_experts)
    num_sorted, num_valid = sorted_ids.shape[0], tokens * topk
    mod = jit.load(fused_moe_triton_spec(hidden.dtype, activation))
    consts = dict(TOPK=topk, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=group_m,
                  DOT_F32=dot_f32(hidden.dtype), num_warps=warps, num_stages=stages)
    m_blocks = -(-num_sorted // block_m)
    inter = torch.empty(num_valid, ffn, dtype=hidden.dtype, device=hidden.device)
    mod._fused_moe_gemm1_kernel[(m_blocks * -(-ffn // block_n),)](
        hidden, w1, inter, sorted_ids, expert_ids, post_pad, num_sorted, num_valid, ffn,
        hidden_size, hidden.stride(0), hidden.stride(1), w1.stride(0), w1.stride(1), w1.stride(2),
        inter.stride(0), inter.stride(1), **consts)
    # top-1: each token has one row, GEMM2 writes it directly and no reduction runs.
    slots = out if topk == 1 else torch.empty(num_valid, hidden_size, dtype=hidden.dtype,
                                             device=hidden.device)
    mod._fused_moe_gemm2_kernel[(m_blocks * -(-hidden_size // block_n),)](
        inter, w2, slots, topk_weights, sorted_ids, expert_ids, post_pad, num_sorted, num_valid,
        hidden_size, ffn, inter.stride(0), inter.stride(1), w2.stride(0), w2.stride(1),
        w2.stride(2), slots.stride(0), slots.stride(1), topk_weights.stride(0),
        topk_weights.stride(1), **consts)
    if topk > 1:
        block_h = min(1024, pow2(hidden_size))
        mod._moe_sum_kernel[(tokens, -(-hidden_size // block_h))](
            slots, out, hidden_size, slots.stride(0), out.stride(0), TOPK=topk, BLOCK_H=block_h)
