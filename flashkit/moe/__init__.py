"""Expert parallelism for MoE layers over torch.distributed, built on flashkit.ops.moe."""
from .cost_model import CostModel, pick_num_chunks, pipeline_time
from .dispatcher import MoEDispatcher

__all__ = ["MoEDispatcher", "CostModel", "pick_num_chunks", "pipeline_time"]
