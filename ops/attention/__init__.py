"""Attention family: merge_state(s) today; decode/prefill kernels build on it."""
