"""SSM family: Mamba-2 SSD and Mamba-1 selective scans with state checkpoints, decode steps and
the causal depthwise convolution that precedes them."""
from flashkit import jit

from .chunk import chunk_ssd_scan
from .conv import causal_conv1d, causal_conv1d_update
from .recurrent import selective_scan, selective_state_update
from .reference import (naive_causal_conv1d, naive_causal_conv1d_update, naive_selective_scan,
                        naive_selective_state_update, naive_ssd_scan)



def shipped_specs(arch: str) -> list[jit.KernelSpec]:
    """What ``flashkit jit build`` prebuilds for the family (Triton: arch-independent)."""
    from .chunk_triton import shipped_triton_specs as chunk_specs
    from .conv_triton import shipped_triton_specs as conv_specs
    from .recurrent_triton import shipped_triton_specs as recurrent_specs

    return chunk_specs() + recurrent_specs() + conv_specs()


jit.register_shipped("ssm", shipped_specs)

__all__ = ["chunk_ssd_scan", "selective_scan", "selective_state_update", "causal_conv1d",
           "causal_conv1d_update", "naive_ssd_scan", "naive_selective_scan",
           "naive_selective_state_update", "naive_causal_conv1d", "naive_causal_conv1d_update"]
