"""Attention family: merge_state(s) today; decode/prefill kernels build on it."""
from flashkit import jit

from .merge_state import merge_state, merge_state_in_place, merge_states
from .reference import naive_merge_state, naive_merge_states


def _shipped_specs(arch: str):
    from .merge_state_cuda import shipped_cuda_specs
    from .merge_state_triton import shipped_triton_specs

    return shipped_triton_specs() + shipped_cuda_specs(arch)


jit.register_shipped("merge_state", _shipped_specs)

__all__ = ["merge_state", "merge_state_in_place", "merge_states", "naive_merge_state",
           "naive_merge_states"]
