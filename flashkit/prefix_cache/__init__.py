"""Prefix caching for hybrid attention/SSM models (after Marconi, MLSys 2025): a cost model, a
radix-tree cache with Marconi admission and FLOP-aware eviction, vLLM+/SGLang+ baselines, a
trace generator, a simulator and an exact engine path. See docs/cache.md."""
from .costs import HybridModelConfig
from .policy import ALPHAS, POLICIES, Hit, PrefixCache
from .radix import Node, RadixTree

__all__ = ["HybridModelConfig", "PrefixCache", "Hit", "POLICIES", "ALPHAS", "RadixTree", "Node"]
