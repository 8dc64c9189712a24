"""Host-side schedulers (split-KV work partitioning) built by the ninja backend."""
from flashkit import jit

from .planner import SplitKVPlan, plan_split_kv, planner_spec, shipped_specs
from .reference import naive_plan_split_kv

jit.register_shipped("scheduler", shipped_specs)

__all__ = ["SplitKVPlan", "plan_split_kv", "naive_plan_split_kv", "planner_spec"]
