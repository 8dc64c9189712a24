"""flashkit.ops: public torch ops, one folder per op family.

Importing registers the torch.library ops (flashkit::*) and each family's shipped
specializations (what `flashkit jit build` prebuilds); nothing compiles here.
"""
from .attention import (AttentionVariant, BatchDecodeWithPagedKVCacheWrapper,
                        BatchPrefillWithPagedKVCacheWrapper, BatchPrefillWithRaggedKVCacheWrapper,
                        MultiLevelCascadeAttentionWrapper, append_paged_kv_cache,
                        get_batch_indices_positions, merge_state, merge_state_in_place,
                        merge_states, single_decode_with_kv_cache, single_prefill_with_kv_cache)
from .moe import FusedMoE, autotune_fused_moe, fused_moe, fused_topk, moe_align_block_size
from .optim import apollo_fused_update
from .scheduler import SplitKVPlan, naive_plan_split_kv, plan_split_kv
from .ssm import (causal_conv1d, causal_conv1d_update, chunk_ssd_scan, selective_scan,
                  selective_state_update)

__all__ = ["single_decode_with_kv_cache", "single_prefill_with_kv_cache",
           "BatchDecodeWithPagedKVCacheWrapper", "BatchPrefillWithPagedKVCacheWrapper",
           "BatchPrefillWithRaggedKVCacheWrapper", "MultiLevelCascadeAttentionWrapper",
           "append_paged_kv_cache", "get_batch_indices_positions", "AttentionVariant",
           "merge_state", "merge_state_in_place", "merge_states", "plan_split_kv", "SplitKVPlan",
           "naive_plan_split_kv", "chunk_ssd_scan", "selective_scan", "selective_state_update",
           "causal_conv1d", "causal_conv1d_update", "apollo_fused_update",
           "fused_topk", "moe_align_block_size", "fused_moe", "FusedMoE", "autotune_fused_moe"]
