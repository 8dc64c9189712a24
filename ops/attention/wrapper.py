"""PlannedWrapper: the state every batch attention wrapper holds."""
from __future__ import annotations

import dataclasses
import math

import torch

from .._common.checks import check_tensor
from .checks import attn_backend, check_layout, check_scalars
from .compat import as_backend, check_rope, refuse
from .plan import AttentionPlan

LN2 = math.log(2.0)


class PlannedWrapper:
    """What every batch wrapper holds: the workspace (whose device is the wrapper's), the KV
    layout, the backend, the current plan, and the fixed buffers of use_cuda_graph=True."""

    def _init_wrapper(self, float_workspace_buffer: torch.Tensor, kv_layout: str, backend: str,
                      decode: bool = False, jit_args=None, jit_kwargs=None) -> None:
        check_tensor("float_workspace_buffer", float_workspace_buffer)
        check_layout(kv_layout)
        refuse("custom variants are AttentionVariant objects: plan(variant=...)",
               jit_args=jit_args, jit_kwargs=jit_kwargs)
        self._workspace = float_workspace_buffer
        self._kv_layout = kv_layout
        self._backend = attn_backend(as_backend(backend), float_workspace_buffer.device,
                                     decode=decode)
        self._plan: AttentionPlan | None = None
        self._graph = None

    @property
    def is_cuda_graph_enabled(self) -> bool:
        return self._graph is not None

    @property
    def device(self) -> torch.device:
        return self._workspace.device

    def reset_workspace_buffer(self, float_workspace_buffer: torch.Tensor,
                               int_workspace_buffer: torch.Tensor) -> None:
        """Swap the workspace (FlashInfer's). flashkit keeps its index tensors in the plan, so
        ``int_workspace_buffer`` is checked to be a tensor on the same device and not used; the
        new float workspace must hold what the current plan needs."""
        check_tensor("float_workspace_buffer", float_workspace_buffer, device=self.device)
        check_tensor("int_workspace_buffer", int_workspace_buffer, device=self.device)
        need = 0 if self._plan is None else self._plan.workspace_bytes()
        have = float_workspace_buffer.numel() * float_workspace_buffer.element_size()
        if need > have:
            raise ValueError(f"float_workspace_buffer holds {have} bytes; the current plan "
                             f"needs {need}")
        self._workspace = float_workspace_buffer

    def _restate(self, pos_encoding_mode, window_left, logits_soft_cap, sm_scale, rope_scale,
                 rope_theta, causal=None) -> None:
        """FlashInfer's deprecated forward(): it restates the plan's attention parameters
        (they stay for later runs, as there) before running."""
        if self._plan is None:
            raise RuntimeError(f"{type(self).__name__}.forward() called before plan()")
        check_rope(pos_encoding_mode, rope_scale, rope_theta)
        window_left, soft_cap, sm_scale = check_scalars(window_left, logits_soft_cap, sm_scale,
                                                        self._plan.head_dim)
        kw = dict(window_left=window_left, soft_cap=soft_cap, sm_scale=sm_scale)
        if causal is not None:
            kw["causal"] = bool(causal)
        self._plan = dataclasses.replace(self._plan, **kw)

    def _run_plan(self, window_left) -> AttentionPlan:
        """The plan to launch: run(window_left=...) overrides the planned window for this run."""
        if window_left is None or window_left == self._plan.window_left:
            return self._plan
        window_left, _, _ = check_scalars(window_left, None, 1.0, self._plan.head_dim)
        return dataclasses.replace(self._plan, window_left=window_left)


def finish_lse(lse: torch.Tensor, lse_base: str) -> torch.Tensor:
    """lse_base='ln': flashkit's base-2 LSE times ln 2, in place (the caller's buffer)."""
    return lse.mul_(LN2) if lse_base == "ln" else lse


def refuse_run_extras(**args) -> None:
    """run()'s FlashInfer arguments for features flashkit's kernels do not have."""
    refuse("no attention sinks, skip-softmax, NVFP4 scale factors, fp16 softmax, sparse "
           "compression or fp8 output scaling", **args)
