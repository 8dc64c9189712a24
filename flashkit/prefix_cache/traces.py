"""Seeded synthetic multi-turn traces in Marconi's JSONL schema.

One JSON object per request, sorted by ``ts``: ``session_id, turn_id, ts (seconds),
num_input_tokens, num_output_tokens, input_tokens, output_tokens`` where ``input_tokens`` is the
whole prompt of that turn (so turns of one session share prefixes) and ``output_tokens`` the
tokens the model answered.

Distributions (LogN(m, s): lognormal with median m and log-space sigma s, rounded, clipped):

* system prompts: a pool of ``pool_size`` prompts, lengths LogN(sys_median, 0.6) in [16, 8192];
  each session draws one with Zipf popularity p_i ~ 1 / i^zipf_s (i = 1..pool_size).
* lmsys (chat, long outputs): turns 10 + Poisson(4); user messages LogN(80, 1.0) in [4, 4096];
  answers LogN(300, 0.6) in [8, 4096]; turn k's input = system + all earlier (user, answer) +
  user_k. Think time Exp(mean 30 s).
* sharegpt (chat, short outputs): turns 1 + Poisson(6); user LogN(60, 1.1) in [4, 4096]; answers
  LogN(80, 0.7) in [4, 2048]; same history rule. Think time Exp(mean 20 s).
* swebench (agent): turns uniform in [20, 50]; a task LogN(800, 0.5) in [64, 8192]; actions
  (outputs) LogN(120, 0.5) in [8, 2048]; observations LogN(700, 1.0) in [8, 8192]; turn k's
  input = system + task + every earlier (action, observation) pair where only the last
  ``keep_last`` (5) observations are shown in full and older ones are collapsed to an 8-token
  placeholder (SWE-agent's "old output omitted"). Each turn collapses one more observation, so
  consecutive turns share a prefix that ends inside the previous turn's sequence: histories
  diverge mid-sequence. Think time Exp(mean 2 s).
* ``turns`` (optional) fixes every session's number of turns instead (e.g. 100 x 50 traces).
* sessions start as a Poisson process (``session_rate`` per second); a turn is sent after the
  previous one's decode (20 ms per output token) plus the think time. ``max_turns`` caps turns.
* token ids are uniform in [100, vocab); every generated segment is fresh, so prefixes are
  shared only where the rules above share them.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from ._checks import finite_number, token_ids

__all__ = ["PROFILES", "TraceConfig", "generate_trace", "write_trace", "read_trace",
           "parse_request"]

PROFILES = ("lmsys", "sharegpt", "swebench")
DECODE_S_PER_TOKEN = 0.02


@dataclass(frozen=True)
class TraceConfig:
    profile: str = "lmsys"
    sessions: int = 100
    max_turns: int = 50
    seed: int = 0
    pool_size: int = 32
    zipf_s: float = 1.1
    sys_median: int = 400
    session_rate: float = 0.5
    keep_last: int = 5
    vocab: int = 32000
    turns: int | None = None  # every session gets exactly this many turns (overrides profile)

    def __post_init__(self):
        if self.profile not in PROFILES:
            raise ValueError(f"profile must be one of {PROFILES}, got {self.profile!r}")
        for name in ("sessions", "max_turns", "pool_size", "keep_last", "sys_median", "vocab",
                     "seed", "turns"):
            v, low = getattr(self, name), 0 if name == "seed" else 1
            if v is None and name == "turns":
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
        if self.vocab <= 100:
            raise ValueError(f"vocab must be > 100 (ids are drawn from [100, vocab)), got "
                             f"{self.vocab}")
        finite_number("zipf_s", self.zipf_s)
        finite_number("session_rate", self.session_rate, low=1e-12)


def _logn(rng, median, sigma, lo, hi):
    return int(np.clip(round(median * np.exp(sigma * rng.standard_normal())), lo, hi))


def _tokens(rng, n, vocab):
    return rng.integers(100, vocab, n, dtype=np.int32)


def _turns(cfg, rng):
    if cfg.turns is not None:
        return cfg.turns
    if cfg.profile == "lmsys":
        n = 10 + rng.poisson(4)
    elif cfg.profile == "sharegpt":
        n = 1 + rng.poisson(6)
    else:
        n = int(rng.integers(20, 51))
    return min(int(n), cfg.max_turns)


def generate_trace(cfg: TraceConfig) -> list[dict]:
    """Requests (dicts of the schema above, token lists as int32 numpy arrays) sorted by ts."""
    rng = np.random.default_rng(cfg.seed)
    pool = [_tokens(rng, _logn(rng, cfg.sys_median, 0.6, 16, 8192), cfg.vocab)
            for _ in range(cfg.pool_size)]
    pop = 1.0 / np.arange(1, cfg.pool_size + 1) ** cfg.zipf_s
    pop /= pop.sum()
    think = {"lmsys": 30.0, "sharegpt": 20.0, "swebench": 2.0}[cfg.profile]
    out, start = [], 0.0
    for sid in range(cfg.sessions):
        start += rng.exponential(1.0 / cfg.session_rate)
        system = pool[rng.choice(cfg.pool_size, p=pop)]
        ts, turns = start, _turns(cfg, rng)
        history: list[np.ndarray] = []
        pairs: list[tuple] = []  # (action, observation, its collapsed placeholder)
        task = _tokens(rng, _logn(rng, 800, 0.5, 64, 8192), cfg.vocab)
        for k in range(turns):
            if cfg.profile == "swebench":
                shown = [a for j, (a, o, c) in enumerate(pairs)
                         for a in (a, o if j >= k - cfg.keep_last else c)]
                inp = np.concatenate([system, task, *shown])
                ans = _tokens(rng, _logn(rng, 120, 0.5, 8, 2048), cfg.vocab)
                obs = _tokens(rng, _logn(rng, 700, 1.0, 8, 8192), cfg.vocab)
                pairs.append((ans, obs, _tokens(rng, 8, cfg.vocab)))
            else:
                long = cfg.profile == "lmsys"
                user = _tokens(rng, _logn(rng, 80 if long else 60, 1.0 if long else 1.1, 4, 4096),
                               cfg.vocab)
                inp = np.concatenate([system, *history, user])
                ans = _tokens(rng, _logn(rng, 300, 0.6, 8, 4096) if long
                              else _logn(rng, 80, 0.7, 4, 2048), cfg.vocab)
                history += [user, ans]
            out.append({"session_id": sid, "turn_id": k, "ts": round(ts, 3),
                        "num_input_tokens": len(inp), "num_output_tokens": len(ans),
                        "input_tokens": inp, "output_tokens": ans})
            ts += len(ans) * DECODE_S_PER_TOKEN + rng.exponential(think)
    out.sort(key=lambda r: (r["ts"], r["session_id"], r["turn_id"]))
    return out


def write_trace(requests: list[dict], path) -> None:
    with open(path, "w") as f:
        for r in requests:
            row = dict(r, input_tokens=np.asarray(r["input_tokens"]).tolist(),
                       output_tokens=np.asarray(r["output_tokens"]).tolist())
            f.write(json.dumps(row, separators=(",", ":")) + "\n")


_REQUIRED = ("session_id", "turn_id", "ts", "input_tokens", "output_tokens")


def _token_array(where, name, v, exact_types):
    """A JSON list of token ids as int32, or ValueError saying why not."""
    if not isinstance(v, list):
        raise ValueError(f"{where}: {name} must be a list of token ids, got "
                         f"{type(v).__name__}")
    if exact_types:  # the line holds true/false somewhere: numpy would read them as 1/0
        for x in v:
            if type(x) is not int:
                raise ValueError(f"{where}: {name} must hold integer token ids, got {x!r}")
    try:
        return token_ids(name, v)
    except (ValueError, TypeError) as e:  # nested lists, nulls, floats, ids >= 2^31
        raise ValueError(f"{where}: {e}") from None


def _count(where, r, name, n):
    if name not in r:
        return
    v = r[name]
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{where}: {name} must be a non-negative int, got {v!r}")
    if v != n:
        raise ValueError(f"{where}: {name} = {v} but the token list holds {n}")


def parse_request(where: str, line: bytes) -> dict:
    """One JSONL line of a trace as a request dict, or ValueError naming ``where`` (file:line)
    and what is wrong. Token lists become int32 arrays; everything a simulation relies on is
    checked, so a trace that parses is one the simulator serves as written."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{where}: not UTF-8 (byte {e.start}: {line[e.start:e.start + 1]!r})") \
            from None
    try:
        r = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not a JSON object ({e.msg} at column {e.colno}; a truncated "
                         "line?)") from None
    if not isinstance(r, dict):
        raise ValueError(f"{where}: expected a JSON object per line, got "
                         f"{'null' if r is None else type(r).__name__}")
    missing = [k for k in _REQUIRED if k not in r]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}")
    sid, turn, ts = r["session_id"], r["turn_id"], r["ts"]
    if isinstance(sid, bool) or not isinstance(sid, (int, str)):
        raise ValueError(f"{where}: session_id must be an int or a string, got {sid!r}")
    if isinstance(turn, bool) or not isinstance(turn, int) or turn < 0:
        raise ValueError(f"{where}: turn_id must be a non-negative int, got {turn!r}")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        raise ValueError(f"{where}: ts must be a finite number of seconds, got {ts!r}")
    exact = b"true" in line or b"false" in line
    r["input_tokens"] = _token_array(where, "input_tokens", r["input_tokens"], exact)
    r["output_tokens"] = _token_array(where, "output_tokens", r["output_tokens"], exact)
    if not len(r["input_tokens"]):
        raise ValueError(f"{where}: input_tokens is empty (a request prefills at least one "
                         "token)")
    _count(where, r, "num_input_tokens", len(r["input_tokens"]))
    _count(where, r, "num_output_tokens", len(r["output_tokens"]))
    return r


def read_trace(path) -> list[dict]:
    """Requests from a JSONL trace (one object per line, blank lines skipped), token lists as
    int32 arrays, sorted by ts (ties in file order). Raises OSError for an unreadable file and
    ValueError ``"<path>:<line>: <what>"`` for the first malformed line (see parse_request), a
    repeated (session_id, turn_id) or an empty trace."""
    out, seen = [], {}
    with open(path, "rb") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{i}"
            r = parse_request(where, line)
            key = (r["session_id"], r["turn_id"])
            if key in seen:
                raise ValueError(f"{where}: session {key[0]!r} turn {key[1]} repeats line "
                                 f"{seen[key]}")
            seen[key] = i
            out.append(r)
    if not out:
        raise ValueError(f"{path}: no requests in the trace")
    out.sort(key=lambda r: r["ts"])  # stable: file order breaks ties
    return out
