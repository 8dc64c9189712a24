"""Block configs of the fused_moe grouped GEMMs: stored per (E, N, K, device) and a default
heuristic (autotune.py writes the stored ones).

A config file is ``configs/E=<E>,N=<ffn>,K=<hidden>,device=<name>.json`` (vLLM's naming, so its
tuned files can be dropped in): ``{"<num_tokens>": {"BLOCK_M": .., "BLOCK_N": .., "BLOCK_K": ..,
"GROUP_M": .., "num_warps": .., "num_stages": ..}, ...}``; a call uses the entry whose token
count is nearest its own. ``$FLASHKIT_MOE_CONFIG_DIR`` is searched before the shipped folder.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import torch

__all__ = ["CONFIG_KEYS", "config_path", "default_config", "get_config"]

CONFIG_KEYS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "num_stages")
SHIPPED_DIR = Path(__file__).resolve().parent / "configs"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).replace(" ", "_")
    return "cpu"


def config_path(num_experts: int, ffn: int, hidden: int, device_label: str,
                folder: str | Path | None = None) -> Path:
    return Path(folder or SHIPPED_DIR) / f"E={num_experts},N={ffn},K={hidden},device={device_label}.json"


def default_config(num_tokens: int, num_experts: int, topk: int) -> dict:
    """vLLM's untuned default: decode-sized batches (about one row per expert) waste most of a
    64-row block on padding, so they take 16-row blocks."""
    if num_tokens * topk <= 2 * num_experts:
        return dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=64, GROUP_M=1, num_warps=4, num_stages=3)
    return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=3)


def check_config(config: dict) -> dict:
    if not isinstance(config, dict) or set(config) != set(CONFIG_KEYS):
        raise ValueError(f"config must be a dict with keys {CONFIG_KEYS}, got {config!r}")
    for key in ("BLOCK_M", "BLOCK_N", "BLOCK_K"):
        v = config[key]
        # tl.dot needs every block dim >= 16 and a power of two.
        if not isinstance(v, int) or v < 16 or v & (v - 1):
            raise ValueError(f"config[{key!r}] must be a power of two >= 16, got {v!r}")
    for key in ("GROUP_M", "num_warps", "num_stages"):
        if not isinstance(config[key], int) or config[key] < 1:
            raise ValueError(f"config[{key!r}] must be a positive int, got {config[key]!r}")
    return config


@functools.lru_cache(maxsize=None)
def _load(path: str, mtime: float) -> dict[int, dict]:
    table = json.loads(Path(path).read_text())
    return {int(m): check_config(c) for m, c in table.items()}


def _table(num_experts: int, ffn: int, hidden: int, label: str) -> dict[int, dict] | None:
    folders = [f for f in (os.environ.get("FLASHKIT_MOE_CONFIG_DIR"), SHIPPED_DIR) if f]
    for folder in folders:
        path = config_path(num_experts, ffn, hidden, label, folder)
        if path.is_file():
            return _load(str(path), path.stat().st_mtime)
    return None


def get_config(num_tokens: int, num_experts: int, ffn: int, hidden: int, topk: int,
               device: torch.device) -> dict:
    """The stored config nearest ``num_tokens`` for this shape and device, else the default."""
    table = _table(num_experts, ffn, hidden, device_name(device))
    if not table:
        return default_config(num_tokens, num_experts, topk)
    return dict(table[min(table, key=lambda m: abs(m - num_tokens))])
