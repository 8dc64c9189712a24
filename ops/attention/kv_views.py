"""A single request's k/v in the kernels' paged form (checks.unpack_paged_cache gives a paged
KV cache's)."""
from __future__ import annotations

import torch



def kv_views(k: torch.Tensor, v: torch.Tensor, kv_layout: str):
    """Single-request k/v ([kv_len, H, D] NHD or [H, kv_len, D] HND) as 4-D
    [1, kv_len, H, D] views (one page holding every token), the kernels' paged form."""
    if kv_layout == "HND":
        k, v = k.transpose(0, 1), v.transpose(0, 1)
    return k[None], v[None]
