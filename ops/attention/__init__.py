"""Attention family: merge_state(s), paged/ragged decode and prefill (FlashInfer's API)."""
from flashkit import jit

from .decode import BatchDecodeWithPagedKVCacheWrapper, single_decode_with_kv_cache
from .prefill import (BatchPrefillWithPagedKVCacheWrapper, BatchPrefillWithRaggedKVCacheWrapper,
                      single_prefill_with_kv_cache)
from .cascade import MultiLevelCascadeAttentionWrapper
from .page import append_paged_kv_cache, get_batch_indices_positions
from .merge_state import merge_state, merge_state_in_place, merge_states
from .reference import (naive_batch_attention, naive_gather_paged_kv, naive_merge_state,
                        naive_merge_states, naive_single_attention)
from .variants import AttentionVariant, VariantParam


def _shipped_specs(arch: str):
    from .attention_triton import shipped_triton_specs as attention_triton_specs
    from .decode_cuda import shipped_cuda_specs as decode_cuda_specs
    from .merge_state_cuda import shipped_cuda_specs
    from .merge_state_triton import shipped_triton_specs

    return (shipped_triton_specs() + shipped_cuda_specs(arch) + attention_triton_specs()
            + decode_cuda_specs(arch))


jit.register_shipped("attention", _shipped_specs)

__all__ = ["merge_state", "merge_state_in_place", "merge_states", "naive_merge_state",
           "naive_merge_states", "naive_single_attention", "naive_gather_paged_kv",
           "naive_batch_attention", "AttentionVariant", "VariantParam",
           "single_decode_with_kv_cache",
           "BatchDecodeWithPagedKVCacheWrapper", "single_prefill_with_kv_cache",
           "BatchPrefillWithPagedKVCacheWrapper", "BatchPrefillWithRaggedKVCacheWrapper",
           "MultiLevelCascadeAttentionWrapper", "append_paged_kv_cache",
           "get_batch_indices_positions"]
