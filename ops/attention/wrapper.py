"""PlannedWrapper: the state every batch attention wrapper holds."""
from __future__ import annotations

import torch

from .._common.checks import check_tensor
from .checks import attn_backend, check_layout
from .plan import AttentionPlan


class PlannedWrapper:
    """What every batch wrapper holds: the workspace (whose device is the wrapper's), the KV
    layout, the backend, the current plan, and the fixed buffers of use_cuda_graph=True."""

    def _init_wrapper(self, float_workspace_buffer: torch.Tensor, kv_layout: str, backend: str,
                      decode: bool = False) -> None:
        check_tensor("float_workspace_buffer", float_workspace_buffer)
        check_layout(kv_layout)
        self._workspace = float_workspace_buffer
        self._kv_layout = kv_layout
        self._backend = attn_backend(backend, float_workspace_buffer.device, decode=decode)
        self._plan: AttentionPlan | None = None
        self._graph = None

    @property
    def is_cuda_graph_enabled(self) -> bool:
        return self._graph is not None

    @property
    def device(self) -> torch.device:
        return self._workspace.device
