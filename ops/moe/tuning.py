"""Block configs of the fused_moe grouped GEMMs: stored per (E, N, K, device), a default
heuristic, and a small autotuner that writes them.

A config file is ``configs/E=<E>,N=<ffn>,K=<hidden>,device=<name>.json`` (vLLM's naming, so its
tuned files can be dropped in): ``{"<num_tokens>": {"BLOCK_M": .., "BLOCK_N": .., "BLOCK_K": ..,
"GROUP_M": .., "num_warps": .., "num_stages": ..}, ...}``; a call uses the entry whose token
count is nearest its own. ``$FLASHKIT_MOE_CONFIG_DIR`` is searched before the shipped folder.
"""
from __future__ import annotations

import functools
import itertools
import json
import logging
import os
from pathlib import Path

import torch

from .._timing import wall_times

log = logging.getLogger(__name__)

__all__ = ["CONFIG_KEYS", "config_path", "default_config", "get_config", "autotune_fused_moe"]

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


# Pruned search space: BLOCK_K 128 only pays with fp8; BLOCK_M 256 does not fit two fp32
# accumulators (gate and up) in registers at BLOCK_N 128.
SEARCH_SPACE = dict(BLOCK_M=(16, 32, 64, 128), BLOCK_N=(32, 64, 128), BLOCK_K=(32, 64),
                    GROUP_M=(1, 8), num_warps=(4, 8), num_stages=(2, 3, 4))


def autotune_fused_moe(num_experts: int, ffn: int, hidden: int, topk: int,
                       token_counts=(1, 16, 64, 256, 1024, 4096), *, dtype=torch.bfloat16,
                       activation: str = "silu", device: str | torch.device = "cuda",
                       candidates: list[dict] | None = None, reps: int = 10,
                       folder: str | Path | None = None) -> Path:
    """Time each candidate config per token count with random routing, keep the fastest, and
    write ``config_path(...)`` (merged with what the file already holds). Returns the path.

    ``candidates`` defaults to the product of ``SEARCH_SPACE``; pass a short list to tune quickly.
    """
    from .fused_moe import fused_moe

    device = torch.device(device)
    if candidates is None:
        candidates = [dict(zip(SEARCH_SPACE, v)) for v in itertools.product(*SEARCH_SPACE.values())]
    candidates = [check_config(dict(c)) for c in candidates]
    g = torch.Generator().manual_seed(0)
    w1 = (torch.randn(num_experts, 2 * ffn, hidden, generator=g) / hidden**0.5).to(device, dtype)
    w2 = (torch.randn(num_experts, hidden, ffn, generator=g) / ffn**0.5).to(device, dtype)
    path = config_path(num_experts, ffn, hidden, device_name(device), folder)
    table = json.loads(path.read_text()) if path.is_file() else {}
    for m in token_counts:
        x = torch.randn(m, hidden, generator=g).to(device, dtype)
        logits = torch.randn(m, num_experts, generator=g)
        ids = logits.topk(topk, dim=-1).indices.to(device, torch.int32)
        weights = torch.rand(m, topk, generator=g).to(device)
        best = None
        for cfg in candidates:
            run = functools.partial(fused_moe, x, w1, w2, weights, ids, activation=activation,
                                    config=cfg, backend="triton")
            try:
                run()  # compile
            except Exception as exc:  # a config that does not fit (shared memory, registers)
                log.debug("config %s failed: %s", cfg, exc)
                continue
            t = _median_seconds(run, device, reps)
            if best is None or t < best[0]:
                best = (t, cfg)
        if best is None:
            raise RuntimeError(f"no candidate config ran for {m} tokens")
        log.info("fused_moe E=%d N=%d K=%d M=%d: %s (%.3f ms)", num_experts, ffn, hidden, m,
                 best[1], best[0] * 1e3)
        table[str(m)] = best[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(sorted(table.items(), key=lambda kv: int(kv[0]))), indent=2) + "\n")
    tmp.replace(path)
    return path


def _median_seconds(fn, device: torch.device, reps: int) -> float:
    times = sorted(wall_times(fn, device, reps))
    return times[len(times) // 2]
