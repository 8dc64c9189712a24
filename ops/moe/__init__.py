"""MoE family: routing (fused_topk, moe_align_block_size), the fused grouped-GEMM experts
(fused_moe) and the FusedMoE module."""
from flashkit import jit

from .fused_moe import fused_moe
from .layer import FusedMoE
from .reference import naive_fused_moe, naive_fused_topk, naive_moe_align_block_size
from .routing import fused_topk, moe_align_block_size
from .autotune import autotune_fused_moe


def _shipped_specs(arch: str):
    from .fused_moe_triton import shipped_triton_specs

    return shipped_triton_specs()


jit.register_shipped("moe", _shipped_specs)

__all__ = ["fused_topk", "moe_align_block_size", "fused_moe", "FusedMoE", "autotune_fused_moe",
           "naive_fused_topk", "naive_fused_moe", "naive_moe_align_block_size"]
