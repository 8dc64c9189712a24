"""flashkit.ops: public torch ops, one folder per op family.

Importing registers the torch.library ops (flashkit::*) and the shipped specializations that
`flashkit jit build` prebuilds; nothing compiles here.
"""
from flashkit import jit

from .attention import merge_state, merge_state_in_place, merge_states


def _merge_state_specs(arch: str):
    from .attention.merge_state_cuda import shipped_cuda_specs
    from .attention.merge_state_triton import shipped_triton_specs

    return shipped_triton_specs() + shipped_cuda_specs(arch)


jit.register_shipped("merge_state", _merge_state_specs)

__all__ = ["merge_state", "merge_state_in_place", "merge_states"]
