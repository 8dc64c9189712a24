"""Work items of the attention kernels, cut on the host. The table (int32 [6, n]): request,
q_start, q_end, kv_start, kv_end, output row, in launch order (longest first).

- decode: split-KV chunks of every request's KV balanced over the workers by the planner
  (ops/scheduler); their partial states are merged per request over ``merge_indptr``.
- prefill: tiles of a request's query tokens over its whole KV, written to the output rows.
"""
from __future__ import annotations

import numpy as np
import torch

from ..scheduler import plan_split_kv
from .index_tensors import int32, items_tensor
from .attention_triton import block_sizes

__all__ = ["default_workers", "split_kv_items", "split_kv_plan", "prefill_tile",
           "prefill_item_cols", "prefill_items"]


def default_workers(device: torch.device, num_kv_heads: int) -> int:
    """Work items to balance over: two resident programs per SM, shared by the KV heads (each
    item is launched once per KV head). On the CPU (interpreter, tests) a fixed 8."""
    if device.type != "cuda":
        return 8
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, 2 * sms // num_kv_heads)


def split_kv_items(kv_lens: np.ndarray, workers: int, page_size: int, min_chunk_tokens: int,
                   max_items: int | None = None) -> tuple[list[np.ndarray], np.ndarray, int]:
    """Decode work items on the host: (the 6 columns of the items table, launched longest
    first; merge_indptr int32 [batch + 1]; n_items). With ``max_items`` (a CUDA-graph plan's
    fixed capacity, at least the batch size), chunks are lengthened (min_chunk_tokens doubled)
    until the plan fits: at worst one item per non-empty request."""
    while True:
        sp = plan_split_kv(kv_lens, workers, page_size=page_size, min_chunk_tokens=min_chunk_tokens)
        if max_items is None or sp.num_items <= max_items:
            break
        min_chunk_tokens *= 2
    order = sp.worker_items.numpy().astype(np.int64)  # LPT order: cost descending
    n = sp.num_items
    cols = [sp.request.numpy()[order], np.zeros(n), np.ones(n), sp.kv_start.numpy()[order],
            sp.kv_end.numpy()[order], order]
    return cols, sp.merge_indptr.numpy(), n


def split_kv_plan(kv_lens: np.ndarray, device, num_kv_heads, page_size, num_workers,
                  min_chunk_tokens) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Decode work items (on ``device``): one per KV chunk, launched longest first."""
    workers = num_workers or default_workers(torch.device(device), num_kv_heads)
    cols, merge_indptr, n = split_kv_items(kv_lens, workers, page_size, min_chunk_tokens)
    return items_tensor(cols, device), int32(merge_indptr, device), n


def prefill_tile(group: int, head_dim: int) -> int:
    """Query tokens per work item: BLOCK_M rows of (token, q head of the group) pairs."""
    return block_sizes(group, head_dim, decode=False)[0] // group


def prefill_item_cols(qo_ptr: np.ndarray, kv_lens: np.ndarray, tile: int):
    """The 6 columns of the item table, one item per tile of a request's query tokens, longest
    KV first (LPT-like order); and the item count."""
    qo_lens = np.diff(qo_ptr)
    n_tiles = -(-qo_lens // tile)
    req = np.repeat(np.arange(qo_lens.size), n_tiles)
    first = np.repeat(np.cumsum(n_tiles) - n_tiles, n_tiles)
    q_start = (np.arange(req.size) - first) * tile
    q_end = np.minimum(q_start + tile, qo_lens[req])
    kv_end = kv_lens[req]
    order = np.argsort(-kv_end, kind="stable")
    cols = [c[order] for c in (req, q_start, q_end, np.zeros_like(req), kv_end,
                               qo_ptr[req] + q_start)]
    return cols, int(req.size)


def prefill_items(qo_ptr: np.ndarray, kv_lens: np.ndarray, group: int, head_dim: int, device):
    cols, n = prefill_item_cols(qo_ptr, kv_lens, prefill_tile(group, head_dim))
    return items_tensor(cols, device), n
