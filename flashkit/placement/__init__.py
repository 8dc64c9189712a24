"""Lifetime-aware placement after LAVA: survival-curve lifetime models with reprediction, one
engine with first-fit, best-fit, NILAS, LAVA and LARS, for VMs on hosts and LLM requests and KV
pages on decode instances. numpy only; torch is needed only by the page allocator's users."""
from .allocator import LifetimeAwarePageAllocator, OutOfPages, PageAllocator
from .engine import PlacementEngine
from .kv_blocks import simulate_kv_blocks
from .lifetimes import LifetimeModel, Predictor, SurvivalCurve, encode_classes
from .llm_sim import simulate_llm
from .llm_trace import LLMTrace, generate_llm_trace, read_llm_trace, write_llm_trace
from .policies import POLICIES, make_policy
from .vm_sim import simulate_vm
from .vm_trace import VMTrace, generate_vm_trace, read_vm_trace, write_vm_trace

__all__ = ["PageAllocator", "LifetimeAwarePageAllocator", "OutOfPages", "simulate_kv_blocks",
           "simulate_llm", "LLMTrace", "generate_llm_trace", "read_llm_trace", "write_llm_trace",
           "PlacementEngine", "LifetimeModel", "Predictor", "SurvivalCurve", "encode_classes",
           "POLICIES", "make_policy", "simulate_vm", "VMTrace", "generate_vm_trace",
           "read_vm_trace", "write_vm_trace"]
