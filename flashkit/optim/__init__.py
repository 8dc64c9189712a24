"""Memory-efficient optimizers built on flashkit.ops: APOLLO and APOLLO-Mini."""
from .apollo import (APOLLO, APOLLOMini, adamw_state_bytes, apollo_state_bytes,
                     optimizer_state_bytes, projection_matrix)

__all__ = ["APOLLO", "APOLLOMini", "optimizer_state_bytes", "apollo_state_bytes",
           "adamw_state_bytes", "projection_matrix"]
