"""flashkit: JIT-specialized attention, SSM-scan and MoE kernels as drop-in torch ops.

``import flashkit`` is cheap: torch, triton and the ops load on first attribute access, and
nothing compiles or touches a GPU until an op runs.
"""
from __future__ import annotations

import importlib

from ._version import __version__

# Public name -> module that defines it; resolved lazily (PEP 562).
_LAZY = {
    "single_decode_with_kv_cache": "flashkit.ops",
    "single_prefill_with_kv_cache": "flashkit.ops",
    "BatchDecodeWithPagedKVCacheWrapper": "flashkit.ops",
    "BatchPrefillWithPagedKVCacheWrapper": "flashkit.ops",
    "BatchPrefillWithRaggedKVCacheWrapper": "flashkit.ops",
    "MultiLevelCascadeAttentionWrapper": "flashkit.ops",
    "append_paged_kv_cache": "flashkit.ops",
    "get_batch_indices_positions": "flashkit.ops",
    "AttentionVariant": "flashkit.ops",
    "merge_state": "flashkit.ops",
    "merge_state_in_place": "flashkit.ops",
    "merge_states": "flashkit.ops",
    "plan_split_kv": "flashkit.ops",
    "SplitKVPlan": "flashkit.ops",
    "chunk_ssd_scan": "flashkit.ops",
    "selective_scan": "flashkit.ops",
    "selective_state_update": "flashkit.ops",
    "causal_conv1d": "flashkit.ops",
    "causal_conv1d_update": "flashkit.ops",
    "apollo_fused_update": "flashkit.ops",
    "fused_topk": "flashkit.ops",
    "moe_align_block_size": "flashkit.ops",
    "fused_moe": "flashkit.ops",
    "FusedMoE": "flashkit.ops",
    "APOLLO": "flashkit.optim",
    "APOLLOMini": "flashkit.optim",
    "optimizer_state_bytes": "flashkit.optim",
}
_SUBMODULES = ("jit", "ops", "optim", "moe", "prefix_cache", "debloat", "reshard", "placement")
_DEPRECATED_SUBMODULES = ("cache",)  # flashkit.prefix_cache's old name, kept for one release

__all__ = ["__version__", *_LAZY, *_SUBMODULES]


def __getattr__(name: str):
    if name in _SUBMODULES or name in _DEPRECATED_SUBMODULES:
        return importlib.import_module(f"flashkit.{name}")
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'flashkit' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
