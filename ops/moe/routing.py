"""fused_topk (router scores -> top-k experts) and moe_align_block_size (rows grouped by expert
in blocks), the two routing steps before the grouped GEMMs.

Registered as torch.library custom ops (flashkit::*) with fake implementations.
"""
from __future__ import annotations

import torch

from .._common.backends import resolve_backend
from .._common.checks import (FLOAT_DTYPES, INDEX_DTYPES, INT32_MAX, check_int, check_tensor,
                             host_checks_enabled)
from .._common.custom_op import custom_op, eager_or_op
from . import reference

__all__ = ["fused_topk", "moe_align_block_size"]

# The Triton router keeps a token's E scores in one program's registers.
_MAX_TRITON_EXPERTS = 1024
_MAX_TOPK = 32
# moe_align_block_size: BLOCK_M of a grouped GEMM is at most a few hundred rows; 2**16 leaves
# room for any tuning file while keeping E*(block_size-1) far from int32 (E <= 2**16).
_MAX_BLOCK_SIZE = 2**16
_MAX_EXPERTS = 2**16


def _fused_topk_impl(gating_logits: torch.Tensor, topk: int, renormalize: bool, scoring: str,
                     correction_bias: torch.Tensor | None, num_expert_groups: int,
                     topk_group: int, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    if backend == "torch":
        w, ids = reference.naive_fused_topk(gating_logits, topk, renormalize, scoring,
                                            correction_bias, num_expert_groups, topk_group)
        return w.contiguous(), ids.contiguous()
    from .fused_moe_triton import fused_topk_triton

    tokens = gating_logits.shape[0]
    weights = torch.empty(tokens, topk, dtype=torch.float32, device=gating_logits.device)
    ids = torch.empty(tokens, topk, dtype=torch.int32, device=gating_logits.device)
    fused_topk_triton(gating_logits, topk, renormalize, scoring == "sigmoid", correction_bias,
                      num_expert_groups, topk_group, weights, ids)
    return weights, ids


_fused_topk_op = custom_op("fused_topk", _fused_topk_impl)


@_fused_topk_op.register_fake
def _(gating_logits, topk, renormalize, scoring, correction_bias, num_expert_groups, topk_group,
      backend):
    t = gating_logits.shape[0]
    return (gating_logits.new_empty((t, topk), dtype=torch.float32),
            gating_logits.new_empty((t, topk), dtype=torch.int32))


def _positive_int(name: str, value, upper: int | None = None):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    if upper is not None and value > upper:
        raise ValueError(f"{name} must be <= {upper}, got {value}")


def check_routing(num_experts: int, topk, scoring, num_expert_groups, topk_group, *,
                  experts_name: str = "num_experts") -> tuple[int, int]:
    """fused_topk's routing arguments against E experts (what FusedMoE checks at construction);
    returns (groups, groups kept), (1, 1) without grouping."""
    _positive_int("topk", topk, min(_MAX_TOPK, num_experts))
    if scoring not in reference.SCORINGS:
        raise ValueError(f"scoring must be one of {reference.SCORINGS}, got {scoring!r}")
    if (num_expert_groups is None) != (topk_group is None):
        raise ValueError("num_expert_groups and topk_group must be given together, got "
                         f"num_expert_groups={num_expert_groups!r}, topk_group={topk_group!r}")
    if num_expert_groups is None:
        return 1, 1
    _positive_int("num_expert_groups", num_expert_groups)
    if num_experts % num_expert_groups:
        raise ValueError(f"num_expert_groups ({num_expert_groups}) must divide the number of "
                         f"experts ({experts_name} = {num_experts})")
    _positive_int("topk_group", topk_group, num_expert_groups)
    per_group = num_experts // num_expert_groups
    if topk > topk_group * per_group:
        raise ValueError(f"topk ({topk}) must be <= topk_group * experts per group "
                         f"({topk_group * per_group})")
    return num_expert_groups, topk_group


def fused_topk(gating_logits: torch.Tensor, topk: int, renormalize: bool = True,
               scoring: str = "softmax", correction_bias: torch.Tensor | None = None,
               num_expert_groups: int | None = None, topk_group: int | None = None, *,
               backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Route each token to its ``topk`` best experts.

    Parameters
    ----------
    gating_logits : [tokens, num_experts], fp16/bf16/fp32 router logits
    topk : experts per token (1..32, at most the experts left after group selection)
    renormalize : divide the chosen weights by their sum
    scoring : "softmax" (Mixtral, Qwen) or "sigmoid" (DeepSeek-V3)
    correction_bias : optional [num_experts] added to the scores to choose experts only
        (DeepSeek-V3's ``e_score_correction_bias``); the weights stay the unbiased scores
    num_expert_groups, topk_group : DeepSeek-style grouped routing: experts split into
        ``num_expert_groups`` equal groups, only the ``topk_group`` best groups compete
    backend : "auto" | "triton" | "torch" | "cuda" (auto: Triton on CUDA, the reference on CPU;
        "cuda" means Triton)

    Returns
    -------
    topk_weights : [tokens, topk] float32;  topk_ids : [tokens, topk] int32.
    Ties go to the lowest expert index on both backends. Non-finite logits follow one rule
    (docs/moe.md, "Non-finite router rows"): NaN reads as -inf, softmax is its limit, and every
    row gets ``topk`` distinct ids in [0, num_experts), even a row of NaN (weights 0).

    Example
    -------
    >>> w, ids = flashkit.fused_topk(router(x), topk=2)   # Mixtral
    """
    check_tensor("gating_logits", gating_logits, dtypes=FLOAT_DTYPES, ndim=2)
    num_experts = gating_logits.shape[1]
    if num_experts < 1:
        raise ValueError(f"gating_logits must have at least one expert column, got shape "
                         f"{tuple(gating_logits.shape)}")
    groups, kept = check_routing(num_experts, topk, scoring, num_expert_groups, topk_group,
                                 experts_name="gating_logits.shape[1]")
    if correction_bias is not None:
        check_tensor("correction_bias", correction_bias, dtypes=FLOAT_DTYPES,
                     shape=(num_experts,), device=gating_logits.device)
    backend = resolve_backend("moe", backend, gating_logits.device)
    if backend == "triton" and num_experts > _MAX_TRITON_EXPERTS:
        raise ValueError(f"backend='triton' handles up to {_MAX_TRITON_EXPERTS} experts, got "
                         f"gating_logits.shape[1] = {num_experts}")
    return eager_or_op(_fused_topk_op, _fused_topk_impl)(
        gating_logits, topk, renormalize, scoring, correction_bias, groups, kept, backend)


def _align_impl(topk_ids: torch.Tensor, block_size: int,
                num_experts: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # Torch ops, no host sync (CUDA-graph safe): the sizes depend on numel, E and block_size only.
    device = topk_ids.device
    flat = topk_ids.reshape(-1).long()
    numel = flat.numel()
    cap = numel + num_experts * (block_size - 1)
    # scatter_add, not bincount: bincount sizes its output from the max id (a host sync on CUDA).
    counts = torch.zeros(num_experts, dtype=torch.int64, device=device).scatter_add_(
        0, flat, torch.ones_like(flat))
    blocks = (counts + block_size - 1) // block_size
    block_end = blocks.cumsum(0)
    start = (block_end - blocks) * block_size  # first padded row of each expert
    order = torch.sort(flat, stable=True).indices  # flat indices grouped by expert, ascending
    first = counts.cumsum(0) - counts  # position of each expert's first row in `order`
    expert_of = flat[order]
    pos = start[expert_of] + torch.arange(numel, device=device) - first[expert_of]
    sorted_ids = torch.full((cap,), numel, dtype=torch.int32, device=device)
    sorted_ids.scatter_(0, pos, order.to(torch.int32))
    n_blocks = -(-cap // block_size)
    b = torch.arange(n_blocks, device=device)
    expert_ids = torch.searchsorted(block_end, b, right=True)
    expert_ids = torch.where(b < block_end[-1], expert_ids, -1).to(torch.int32)
    post_pad = (block_end[-1:] * block_size).to(torch.int32)
    return sorted_ids, expert_ids, post_pad


_align_op = custom_op("moe_align_block_size", _align_impl)


@_align_op.register_fake
def _(topk_ids, block_size, num_experts):
    cap = topk_ids.numel() + num_experts * (block_size - 1)
    return (topk_ids.new_empty((cap,), dtype=torch.int32),
            topk_ids.new_empty((-(-cap // block_size),), dtype=torch.int32),
            topk_ids.new_empty((1,), dtype=torch.int32))


def check_ids_in_range(name: str, ids: torch.Tensor, num_experts: int):
    """Out-of-range ids would index past the weights: one host sync, skipped while tracing."""
    if ids.numel() and not ids.is_meta and host_checks_enabled():  # meta: nothing is read
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= num_experts:
            raise ValueError(f"{name} must be in [0, {num_experts}) (the number of experts), got "
                             f"values in [{lo}, {hi}]")


def moe_align_block_size(topk_ids: torch.Tensor, block_size: int,
                         num_experts: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group the (token, slot) rows by expert, each expert padded to a multiple of ``block_size``.

    vLLM's semantics and shapes. Plain torch ops without a host sync (a kernel is not written:
    see docs/moe.md).

    Parameters
    ----------
    topk_ids : [tokens, topk] int32/int64, values in [0, num_experts)
    block_size : rows per GEMM block (the grouped GEMM's BLOCK_M)
    num_experts : E

    Returns
    -------
    sorted_token_ids : [tokens*topk + E*(block_size-1)] int32: flat indices ``token*topk + slot``
        grouped by expert (ascending within one), padded with ``tokens*topk``
    expert_ids : [cdiv(len(sorted_token_ids), block_size)] int32: each block's expert, -1 past
        the padded total
    num_tokens_post_padded : [1] int32, the padded total (a multiple of block_size)
    """
    check_tensor("topk_ids", topk_ids, dtypes=INDEX_DTYPES, ndim=2)
    # The padded length tokens*topk + E*(block_size-1) is an int32 row index in the GEMMs.
    block_size = check_int("block_size", block_size, 1, _MAX_BLOCK_SIZE)
    num_experts = check_int("num_experts", num_experts, 1, _MAX_EXPERTS)
    cap = topk_ids.numel() + num_experts * (block_size - 1)
    if cap > INT32_MAX:
        raise ValueError(f"block_size={block_size} with num_experts={num_experts} pads "
                         f"topk_ids.numel()={topk_ids.numel()} rows to {cap}, past int32")
    check_ids_in_range("topk_ids", topk_ids, num_experts)
    return eager_or_op(_align_op, _align_impl)(topk_ids, block_size, num_experts)
