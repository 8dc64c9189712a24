"""Attention family: merge_state(s) today; decode/prefill kernels build on it."""
from .merge_state import merge_state, merge_state_in_place, merge_states
from .reference import naive_merge_state, naive_merge_states

__all__ = ["merge_state", "merge_state_in_place", "merge_states", "naive_merge_state",
           "naive_merge_states"]
