"""FlashInfer's deprecated forward() and forward_return_lse() of the batch wrappers, as mixins:
each restates the plan's attention parameters (kept for later runs, as in FlashInfer), then
calls run()."""
from __future__ import annotations

import torch

from .compat import check_flag


class DecodeForward:
    """BatchDecodeWithPagedKVCacheWrapper's forward(q, paged_kv_cache, ...)."""

    def forward(self, q: torch.Tensor, paged_kv_cache, pos_encoding_mode: str = "NONE",
                q_scale: float | None = None, k_scale: float | None = None,
                v_scale: float | None = None, window_left: int = -1,
                logits_soft_cap: float | None = None, sm_scale: float | None = None,
                rope_scale: float | None = None, rope_theta: float | None = None):
        """FlashInfer's deprecated form: restates the plan's window_left, logits_soft_cap and
        sm_scale (kept for later runs, as in FlashInfer), then run()."""
        self._restate(pos_encoding_mode, window_left, logits_soft_cap, sm_scale, rope_scale,
                      rope_theta)
        return self.run(q, paged_kv_cache, q_scale=q_scale, k_scale=k_scale, v_scale=v_scale)

    def forward_return_lse(self, q: torch.Tensor, paged_kv_cache,
                           pos_encoding_mode: str = "NONE", q_scale: float | None = None,
                           k_scale: float | None = None, v_scale: float | None = None,
                           window_left: int = -1, logits_soft_cap: float | None = None,
                           sm_scale: float | None = None, rope_scale: float | None = None,
                           rope_theta: float | None = None):
        """forward() returning (o, lse)."""
        self._restate(pos_encoding_mode, window_left, logits_soft_cap, sm_scale, rope_scale,
                      rope_theta)
        return self.run(q, paged_kv_cache, q_scale=q_scale, k_scale=k_scale, v_scale=v_scale,
                        return_lse=True)


class PagedPrefillForward:
    """BatchPrefillWithPagedKVCacheWrapper's forward(q, paged_kv_cache, causal, ...)."""

    def forward(self, q: torch.Tensor, paged_kv_cache, causal: bool = False,
                pos_encoding_mode: str = "NONE", use_fp16_qk_reduction: bool = False,
                k_scale: float | None = None, v_scale: float | None = None,
                window_left: int = -1, logits_soft_cap: float | None = None,
                sm_scale: float | None = None, rope_scale=None, rope_theta=None):
        """FlashInfer's deprecated form: restates the plan's causal, window_left,
        logits_soft_cap and sm_scale (kept for later runs, as there), then run()."""
        check_flag("use_fp16_qk_reduction", use_fp16_qk_reduction)
        self._restate(pos_encoding_mode, window_left, logits_soft_cap, sm_scale, rope_scale,
                      rope_theta, causal)
        return self.run(q, paged_kv_cache, k_scale=k_scale, v_scale=v_scale)

    def forward_return_lse(self, q: torch.Tensor, paged_kv_cache, causal: bool = False,
                           pos_encoding_mode: str = "NONE", use_fp16_qk_reduction: bool = False,
                           k_scale: float | None = None, v_scale: float | None = None,
                           window_left: int = -1, logits_soft_cap: float | None = None,
                           sm_scale: float | None = None, rope_scale=None, rope_theta=None):
        """forward() returning (o, lse)."""
        check_flag("use_fp16_qk_reduction", use_fp16_qk_reduction)
        self._restate(pos_encoding_mode, window_left, logits_soft_cap, sm_scale, rope_scale,
                      rope_theta, causal)
        return self.run(q, paged_kv_cache, k_scale=k_scale, v_scale=v_scale, return_lse=True)


class RaggedPrefillForward:
    """BatchPrefillWithRaggedKVCacheWrapper's forward(q, k, v, causal, ...)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                pos_encoding_mode: str = "NONE", use_fp16_qk_reduction: bool = False,
                window_left: int = -1, logits_soft_cap: float | None = None,
                sm_scale: float | None = None, rope_scale=None, rope_theta=None):
        """FlashInfer's deprecated form (see the paged wrapper's forward())."""
        check_flag("use_fp16_qk_reduction", use_fp16_qk_reduction)
        self._restate(pos_encoding_mode, window_left, logits_soft_cap, sm_scale, rope_scale,
                      rope_theta, causal)
        return self.run(q, k, v)

    def forward_return_lse(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           causal: bool = False, pos_encoding_mode: str = "NONE",
                           use_fp16_qk_reduction: bool = False, window_left: int = -1,
                           logits_soft_cap: float | None = None, sm_scale: float | None = None,
                           rope_scale=None, rope_theta=None):
        """forward() returning (o, lse)."""
        check_flag("use_fp16_qk_reduction", use_fp16_qk_reduction)
        self._restate(pos_encoding_mode, window_left, logits_soft_cap, sm_scale, rope_scale,
                      rope_theta, causal)
        return self.run(q, k, v, return_lse=True)
