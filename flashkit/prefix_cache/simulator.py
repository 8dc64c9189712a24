"""Trace-driven simulation of a prefix cache: hit rates, FLOPs saved, memory and TTFT.

Requests are served one at a time in ``ts`` order (no batching): look up the usable hit, pin it,
admit the finished request under the policy, unpin. TTFT is estimated from a prefill-latency
table ``T(n)`` (ms to prefill n tokens from scratch): a request of n input tokens with a hit of h
takes ``T(n) - T(h)`` (the suffix's FLOPs are ``prefill_flops(n) - prefill_flops(h)`` and T is
taken proportional to them), linear interpolation between the table's points and, beyond the
last point ``m``, ``T(m) * prefill_flops(n) / prefill_flops(m)`` (a measured table stops where
the device's time ran out; attention's quadratic term grows past it).

The default table is analytic, not measured: ``prefill_flops(n) / (0.4 * 989 TFLOP/s)`` (40% of an
H100 SXM's dense bf16 peak) for the given model config. Pass a measured table as JSON
``{"tokens": [...], "ms": [...]}``: ``flashkit cache-latency`` measures one with flashkit's kernels
(``latency.py``).
"""
from __future__ import annotations

import json
import math
import time

import numpy as np

from .costs import HybridModelConfig
from .latency import latency_tokens
from .policy import PrefixCache

__all__ = ["simulate", "default_latency_table", "load_latency_table", "sweep"]

ASSUMED_FLOPS_PER_S = 0.4 * 989e12


def default_latency_table(config: HybridModelConfig, max_tokens: int = 262_144) -> dict:
    tokens = latency_tokens(max_tokens)
    return {"tokens": tokens,
            "ms": [1e3 * config.prefill_flops(n) / ASSUMED_FLOPS_PER_S for n in tokens],
            "source": "analytic: prefill_flops / (0.4 * 989 TFLOP/s)"}


def _table_ms(ns: np.ndarray, xs: np.ndarray, ys: np.ndarray, config) -> np.ndarray:
    """T(n): interpolated inside the table, scaled by prefill FLOPs beyond its last point."""
    out = np.interp(ns, xs, ys)
    far = ns > xs[-1]
    if far.any():
        ref = config.prefill_flops(int(xs[-1])) or 1.0
        out[far] = ys[-1] * np.array([config.prefill_flops(int(n)) for n in ns[far]]) / ref
    return out


def load_latency_table(path) -> dict:
    """A table ``{"tokens": [...], "ms": [...]}`` from JSON: as ``flashkit cache-latency`` writes
    it, or the gpu-check section file holding one (``extra.prefix_cache_latency``)."""
    with open(path) as f:
        t = json.load(f)
    if isinstance(t, dict) and t.get("kind") == "gpucheck-section":
        t = (t.get("extra") or {}).get("prefix_cache_latency")
        if t is None:
            raise ValueError(f"{path}: this gpu-check section holds no prefix_cache_latency "
                             "table (its command failed or did not run)")
    if (not isinstance(t, dict) or not isinstance(t.get("tokens"), list)
            or not isinstance(t.get("ms"), list) or len(t["tokens"]) != len(t["ms"])
            or len(t["tokens"]) < 2):
        raise ValueError(f"{path}: a latency table is {{'tokens': [...], 'ms': [...]}} with the "
                         "same length >= 2")
    for key in ("tokens", "ms"):
        bad = [v for v in t[key] if isinstance(v, bool) or not isinstance(v, (int, float))
               or not math.isfinite(v) or v < 0]
        if bad:
            raise ValueError(f"{path}: latency table {key!r} must hold finite numbers >= 0, "
                             f"got {bad[0]!r}")
    if any(b <= a for a, b in zip(t["tokens"], t["tokens"][1:])):
        raise ValueError(f"{path}: latency table 'tokens' must be strictly increasing")
    t.setdefault("source", str(path))
    return t


def simulate(requests, config: HybridModelConfig | None = None, capacity_bytes: float = 0,
             policy: str = "marconi", block: int = 32, chunk: int | None = None,
             alpha: float | None = None, latency_table: dict | None = None,
             tuner=None) -> dict:
    """Serve ``requests`` (dicts with input_tokens/output_tokens, in order) through a cache.

    Returns a dict: requests, input_tokens, hit_tokens, token_hit_rate, request_hit_rate,
    flops_saved (FLOPs), flops_saved_fraction (of all prefill FLOPs), states_cached,
    kv_tokens_cached, cache_bytes_used, evictions, alpha (the tuned or fixed value),
    ttft_p5_ms, ttft_p50_ms, ttft_p95_ms, latency_table (its source), seconds (wall time),
    alpha_history ([requests served, alpha chosen] at each decision of the tuner; empty for a
    fixed alpha or another policy). ``tuner``: an AlphaTuner for the online alpha (default:
    AlphaTuner()).
    """
    config = config or HybridModelConfig()
    table = latency_table or default_latency_table(config)
    xs, ys = np.asarray(table["tokens"], float), np.asarray(table["ms"], float)
    cache = PrefixCache(config, capacity_bytes, policy, block=block, chunk=chunk, alpha=alpha,
                        tuner=tuner)
    t0 = time.perf_counter()
    n_in = np.empty(len(requests), np.int64)
    hits = np.empty(len(requests), np.int64)
    for i, r in enumerate(requests):
        n_in[i] = len(r["input_tokens"])
        hits[i] = cache.serve(r["input_tokens"], r["output_tokens"])
    seconds = time.perf_counter() - t0
    flops = float(sum(config.prefill_flops(int(h)) for h in hits))
    total = float(sum(config.prefill_flops(int(n)) for n in n_in))
    ttft = _table_ms(n_in, xs, ys, config) - _table_ms(hits, xs, ys, config)
    p5, p50, p95 = (np.percentile(ttft, [5, 50, 95]) if len(ttft) else (0.0, 0.0, 0.0))
    tree = cache.tree
    return {
        "policy": policy, "block": block if policy == "vllm" else None, "chunk": chunk,
        "cache_gb": capacity_bytes / 1e9, "requests": len(requests),
        "input_tokens": int(n_in.sum()), "hit_tokens": int(hits.sum()),
        "token_hit_rate": float(hits.sum() / max(n_in.sum(), 1)),
        "request_hit_rate": float((hits > 0).mean()) if len(hits) else 0.0,
        "flops_saved": flops, "flops_saved_fraction": flops / total if total else 0.0,
        "states_cached": tree.num_states, "kv_tokens_cached": tree.num_tokens,
        "cache_bytes_used": tree.used_bytes, "evictions": tree.evictions,
        "alpha": cache.tuned_alpha if cache.tuned_alpha is not None else cache.alpha,
        "ttft_p5_ms": float(p5), "ttft_p50_ms": float(p50), "ttft_p95_ms": float(p95),
        "latency_table": table.get("source", "custom"), "seconds": seconds,
        "alpha_history": [list(h) for h in cache.tuner.history] if cache.tuner else [],
    }


def sweep(requests, cache_gbs, policies=("marconi", "sglang", "vllm"), **kw) -> list[dict]:
    """``simulate`` for every (policy, cache size); a list of result dicts."""
    return [simulate(requests, capacity_bytes=gb * 1e9, policy=p, **kw)
            for p in policies for gb in cache_gbs]


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("plotting needs matplotlib (pip install 'flashkit[plot]'); the "
                           "numbers are in --json") from e
    return plt


def plot_hit_rates(results: list[dict], path) -> None:
    """Token hit rate vs cache size, one line per policy (needs matplotlib)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for p in dict.fromkeys(r["policy"] for r in results):
        rs = sorted((r for r in results if r["policy"] == p), key=lambda r: r["cache_gb"])
        label = p if p != "vllm" else f"vllm+ (B={rs[0]['block']})"
        ax.plot([r["cache_gb"] for r in rs], [r["token_hit_rate"] for r in rs], "o-", label=label)
    ax.set_xlabel("cache size (GB)")
    ax.set_ylabel("token hit rate")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_alpha(results: list[dict], path) -> None:
    """The tuned alpha over the trace (log scale), one step line per tuned run."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for r in results:
        h = r.get("alpha_history") or []
        if h:
            xs = [x for x, _ in h] + [r["requests"]]
            ys = [max(a, 1e-2) for _, a in h] + [max(h[-1][1], 1e-2)]
            ax.step(xs, ys, where="post", label=f"{r['cache_gb']:g} GB")
    ax.set_yscale("log")
    ax.set_xlabel("requests served")
    ax.set_ylabel("alpha (0 drawn at 0.01)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
