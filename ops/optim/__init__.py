"""Optimizer family: APOLLO's fused elementwise step (flashkit.optim builds the optimizer on it)."""
from flashkit import jit

from .apollo import apollo_fused_update, check_apollo_hparams
from .apollo_triton import shipped_triton_specs
from .reference import naive_apollo_update

jit.register_shipped("apollo", lambda arch: shipped_triton_specs())

__all__ = ["apollo_fused_update", "check_apollo_hparams", "naive_apollo_update"]
