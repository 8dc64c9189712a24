"""Seeded synthetic traces of (prompt_len, output_len) for offline batch inference.

- ``sharegpt``: chat. Prompt ~ LogNormal(median 250, sigma 1.0) clipped to [4, 4096], output ~
  LogNormal(median 200, sigma 0.9) clipped to [4, 2048]: means of about 400 and 300 tokens,
  the order of ShareGPT's (vLLM's benchmark set: mean input ~ 300, output ~ 340 after its
  filtering).
- ``arxiv``: summarization of papers. Prompt ~ LogNormal(median 6000, sigma 0.5) clipped to
  [1024, 8192] (articles are truncated to the context window), output ~ LogNormal(median 220,
  sigma 0.4) clipped to [32, 1024] (abstract-length summaries).

Files are JSON lines ``{"prompt_len": int, "output_len": int}``.
"""
from __future__ import annotations

import json
import math
import random

__all__ = ["TRACE_KINDS", "generate_trace", "read_trace", "write_trace"]

TRACE_KINDS = {
    "sharegpt": ((250, 1.0, 4, 4096), (200, 0.9, 4, 2048)),
    "arxiv": ((6000, 0.5, 1024, 8192), (220, 0.4, 32, 1024)),
}


def generate_trace(kind: str, n: int, seed: int = 0) -> list[dict]:
    if kind not in TRACE_KINDS:
        raise ValueError(f"trace kind must be one of {sorted(TRACE_KINDS)}, got {kind!r}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    rng = random.Random(seed)

    def draw(median, sigma, lo, hi):
        return int(min(hi, max(lo, round(rng.lognormvariate(math.log(median), sigma)))))

    p, o = TRACE_KINDS[kind]
    return [{"prompt_len": draw(*p), "output_len": draw(*o)} for _ in range(n)]


def write_trace(reqs, path: str) -> None:
    with open(path, "w") as f:
        for r in reqs:
            f.write(json.dumps(r) + "\n")


def read_trace(path: str) -> list[dict]:
    """Read a JSON-lines trace; ValueError naming the line for anything malformed."""
    out = []
    with open(path) as f:
        for no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{no}: not JSON ({e.msg})") from None
            if not isinstance(r, dict):
                raise ValueError(f"{path}:{no}: expected an object with prompt_len and output_len")
            for k in ("prompt_len", "output_len"):
                v = r.get(k)
                if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                    raise ValueError(f"{path}:{no}: {k} must be an int >= 1, got {v!r}")
            out.append({"prompt_len": r["prompt_len"], "output_len": r["output_len"]})
    if not out:
        raise ValueError(f"{path}: no requests")
    return out
