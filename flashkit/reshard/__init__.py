"""Dynamic re-sharding between TP and PP layouts (after Seesaw, MLSys 2025).

Layouts and placement rules (``Layout``, ``Rule``, ``llama_rules``, ``moe_rules``,
``hybrid_rules``), ``shard``, the pure ``plan_reshard`` and its executor ``reshard`` over
torch.distributed point-to-point, a CPU KV tier, a tiny TP x PP engine, and a throughput
simulator with its scheduler (``flashkit reshard-sim``). Names load lazily: the planner and
the simulator do not import torch.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "Layout": "layout", "Rule": "layout", "Placement": "layout", "resolve": "layout",
    "llama_rules": "rules", "moe_rules": "rules", "hybrid_rules": "rules",
    "hybrid_state_dict": "rules",
    "Transfer": "plan", "ReshardPlan": "plan", "plan_reshard": "plan", "best_order": "plan",
    "shard": "execute", "reshard": "execute",
    "KVTier": "kv_tier", "PageAllocator": "kv_tier",
    "simulate": "simulator", "search_layouts": "search",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
