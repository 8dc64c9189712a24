"""Lifetime-aware placement after LAVA: survival-curve lifetime models with reprediction, one
engine with first-fit, best-fit, NILAS, LAVA and LARS, for VMs on hosts and LLM requests and KV
pages on decode instances. numpy only; torch is needed only by the page allocator's users."""
from .engine import PlacementEngine
from .lifetimes import LifetimeModel, Predictor, SurvivalCurve, encode_classes
from .policies import POLICIES, make_policy
from .vm_sim import simulate_vm
from .vm_trace import VMTrace, generate_vm_trace, read_vm_trace, write_vm_trace

__all__ = ["PlacementEngine", "LifetimeModel", "Predictor", "SurvivalCurve", "encode_classes",
           "POLICIES", "make_policy", "simulate_vm", "VMTrace", "generate_vm_trace",
           "read_vm_trace", "write_vm_trace"]
