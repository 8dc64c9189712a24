"""LLM request traces in the Azure LLM inference trace schema (CSV), read, checked, generated.

Columns: ``TIMESTAMP`` (a date-time such as ``2023-11-16 18:15:46.6805900`` as in Azure's files,
or seconds as a number), ``ContextTokens``, ``GeneratedTokens``. Rows must be in time order.

The generator (:func:`generate_llm_trace`) draws, seeded:

- arrivals: Poisson at ``rate`` requests/s;
- context tokens: lognormal, median 1,000, sigma 1.0, clipped to [16, 8,000];
- generated tokens: lognormal with median 250 x (context / 1,000)^-0.5 (long prompts, short
  answers, as in summarization and code completion) and sigma 0.8; with probability 5 % a long
  generation from Pareto(alpha 1.5, x_m 400); clipped to [1, 4,096]. The prompt-length bucket
  thus carries lifetime information and the tail is heavy.
"""
from __future__ import annotations

import csv
import datetime as dt
import os
from dataclasses import dataclass

import numpy as np

__all__ = ["LLMTrace", "read_llm_trace", "write_llm_trace", "generate_llm_trace"]

_COLS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


@dataclass
class LLMTrace:
    """Parallel arrays, one entry per request: arrival (s from the first), context and
    generated tokens (int64)."""

    arrival: np.ndarray
    context: np.ndarray
    generated: np.ndarray

    def __len__(self) -> int:
        return int(self.arrival.size)


def _seconds(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    head, _, frac = text.strip().partition(".")
    try:
        t = dt.datetime.strptime(head, "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        raise ValueError(f"{where}: TIMESTAMP {text!r} is neither seconds nor "
                         f"'YYYY-MM-DD HH:MM:SS[.fraction]'") from None
    return t.timestamp() + (float("0." + frac) if frac.isdigit() else 0.0)


def read_llm_trace(path) -> LLMTrace:
    """Read and check a CSV trace; ValueError names the line on a missing or non-integer field,
    negative token counts, or a timestamp earlier than the previous row's."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    arr, ctx, gen = [], [], []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in _COLS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: line 1: header lacks column(s) {', '.join(missing)}")
        prev = -np.inf
        for row in reader:
            where = f"{path}: line {reader.line_num}"
            vals = [row.get(c) for c in _COLS]
            if any(v is None or v.strip() == "" for v in vals):
                raise ValueError(f"{where}: missing field (need {', '.join(_COLS)})")
            t = _seconds(vals[0], where)
            try:
                c, g = int(vals[1]), int(vals[2])
            except ValueError:
                raise ValueError(f"{where}: ContextTokens and GeneratedTokens must be "
                                 f"integers") from None
            if c < 0 or g < 0:
                raise ValueError(f"{where}: negative token count (a negative lifetime)")
            if t < prev:
                raise ValueError(f"{where}: timestamps not sorted ({vals[0]} is before the "
                                 f"previous row's)")
            prev = t
            arr.append(t)
            ctx.append(c)
            gen.append(g)
    if not arr:
        raise ValueError(f"{path}: no rows")
    a = np.asarray(arr)
    return LLMTrace(a - a[0], np.asarray(ctx, np.int64), np.asarray(gen, np.int64))


def write_llm_trace(trace: LLMTrace, path) -> None:
    """Write ``trace`` as CSV with TIMESTAMP in seconds."""
    if not isinstance(trace, LLMTrace):
        raise TypeError(f"trace must be an LLMTrace, got {type(trace).__name__}")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(_COLS)
        w.writerows(zip((f"{t:.6f}" for t in trace.arrival.tolist()), trace.context.tolist(),
                        trace.generated.tolist()))


def generate_llm_trace(n: int, *, rate: float = 20.0, seed: int = 0) -> LLMTrace:
    """``n`` requests with the distributions of this module's docstring, at ``rate`` per s."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if not rate > 0:
        raise ValueError(f"rate must be > 0, got {rate!r}")
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(1 / rate, n))
    ctx = np.clip(np.round(1000 * np.exp(rng.standard_normal(n))), 16, 8000)
    med = 250 * (ctx / 1000) ** -0.5
    gen = med * np.exp(0.8 * rng.standard_normal(n))
    long = rng.uniform(size=n) < 0.05
    gen[long] = 400 * (1 + rng.pareto(1.5, int(long.sum())))
    gen = np.clip(np.round(gen), 1, 4096)
    return LLMTrace(arrival - arrival[0], ctx.astype(np.int64), gen.astype(np.int64))
