"""Host index arrays copied to the device as the kernels read them (int32, without a sync)."""
from __future__ import annotations

import numpy as np
import torch


def items_tensor(cols: list[np.ndarray], device, pad_to: int | None = None) -> torch.Tensor:
    n = cols[0].size
    width = max(n, pad_to or 0, 1)
    arr = np.zeros((6, width), dtype=np.int32)
    for r, c in enumerate(cols):
        arr[r, :n] = c
    return torch.from_numpy(arr).to(device, non_blocking=True)


def int32(x, device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.int32)).to(device, non_blocking=True)
