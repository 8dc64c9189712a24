"""autotune_fused_moe: time candidate block configs of the fused_moe grouped GEMMs and store the
fastest per token count (the files tuning.get_config reads)."""
from __future__ import annotations

import functools
import itertools
import json
import logging
from pathlib import Path

import torch

from .._timing import wall_times
from .fused_moe import fused_moe
from .tuning import check_config, config_path, device_name

log = logging.getLogger(__name__)

__all__ = ["SEARCH_SPACE", "autotune_fused_moe"]


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
