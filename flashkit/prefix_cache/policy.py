"""Admission and eviction policies over the radix tree: Marconi, SGLang+ and vLLM+.

* ``marconi``: admission checkpoints the state after the last decoded token (input+output reuse)
  and, found by a speculative insertion of the input before prefill, at the point where the
  input leaves the tree if that point has no state (an edge split or a stateless branch node:
  purely-input reuse). Eviction score = recency / H + alpha * hits * efficiency / E, where
  efficiency is FLOPs saved beyond the parent per byte the node holds, hits = 1 when the
  node's state was written + 1 per hit it served (the paper weighs efficiency alone; counting
  reuse is flashkit's, measured in docs/cache.md), and alpha is tuned online (below).
* ``sglang``: Marconi's admission, LRU eviction.
* ``vllm``: a state every ``block`` tokens of input+output (only full blocks are cached, so hits
  are exact block matches), LRU eviction.

``chunk`` (any policy) snaps every checkpoint down to a multiple of the SSM scan's chunk size.

Normalization. Marconi normalizes recency and efficiency by their min-max over the live
candidates, which makes every key depend on every other node and cannot be kept in a heap. We
normalize by scales fixed at the first eviction (tuned or fixed alpha alike): H = the span of
recencies (RadixTree.recency) and E = the span of efficiencies over the eviction candidates then
(what min-max gave at that moment), so a node's key changes only when it is accessed, split or
merged. Alpha absorbs any residual scale.

Online alpha (``tuner.AlphaTuner``): LRU until the first eviction; from then on one shadow
cache per alpha of a log grid serves every request too, and every 50 requests the real cache
takes the alpha whose shadow saved the most FLOPs over the last 500 requests (LRU unless that
beats LRU's shadow by 5%), checked on the real cache itself: a switch away from where it stands
must first win on a fork of it (while it is not ahead of LRU's shadow), and it falls back to LRU
while its own savings trail LRU's shadow's by more than 0.25% (until a fork proves a way out).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._checks import finite_number, token_ids
from .costs import HybridModelConfig
from .radix import Node, RadixTree
from .tuner import GRID, AlphaTuner

__all__ = ["PrefixCache", "Hit", "POLICIES", "ALPHAS"]

POLICIES = ("marconi", "sglang", "vllm")
ALPHAS = GRID


@dataclass
class Hit:
    length: int
    node: Node


class PrefixCache:
    """A prefix cache for a hybrid model.

    Parameters
    ----------
    config : HybridModelConfig giving bytes and FLOPs
    capacity_bytes : bytes of KV and states the cache may hold
    policy : "marconi" | "sglang" | "vllm"
    block : vLLM+ checkpoint interval (tokens)
    chunk : snap checkpoints down to multiples of this (None: exact positions)
    alpha : Marconi's weight of FLOP efficiency; None tunes it online
    tuner : the AlphaTuner used when alpha is None (default: AlphaTuner())
    on_evict : passed to RadixTree (the engine frees KV slots there)
    """

    def __init__(self, config: HybridModelConfig, capacity_bytes: float, policy: str = "marconi",
                 block: int = 32, chunk: int | None = None, alpha: float | None = None,
                 tuner: AlphaTuner | None = None, on_evict=None):
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
            raise ValueError(f"block must be an int >= 1, got {block!r}")
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(
                chunk, (int, np.integer)) or chunk < 1):
            raise ValueError(f"chunk must be an int >= 1 or None, got {chunk!r}")
        if alpha is not None:
            alpha = finite_number("alpha", alpha)
        self.config, self.policy, self.block, self.chunk = config, policy, block, chunk
        self.alpha = 0.0 if policy != "marconi" else (alpha or 0.0)
        self.tune = policy == "marconi" and alpha is None
        if tuner is not None and not isinstance(tuner, AlphaTuner):
            raise TypeError(f"tuner must be an AlphaTuner or None, got {type(tuner).__name__}")
        self.tuner = (tuner or AlphaTuner()) if self.tune else None
        self._start_tuner = False
        self._H = self._E = 1.0
        self.tree = RadixTree(config.kv_bytes_per_token, config.state_bytes, capacity_bytes,
                              score=self._score, on_evict=on_evict)
        self.requests = 0
        self.tuned_alpha: float | None = None if self.tune else self.alpha
        if policy == "marconi":  # scales for the score (and, if tuning, the shadows)
            self.tree.on_first_evict = self._on_first_evict

    # -- scoring --------------------------------------------------------------------------
    def efficiency(self, n: Node) -> float:
        nbytes = self.tree.node_bytes(n)
        return self.config.flops_between(n.start, n.end) / nbytes if nbytes else 0.0

    def _score(self, n: Node) -> float:
        if self.alpha == 0.0:
            return float(self.tree.recency(n))
        # FLOPs a hit saves, times the uses seen (docs/cache.md, seed 0, 18 configurations:
        # mean gain over SGLang+ +3.15% with plain efficiency, the paper's, +34.27% with hits
        # and the tuner's release; a shared prefix's state, hit by every turn, outvotes a
        # fresher one-off state only when its reuse counts)
        return (self.tree.recency(n) / self._H
                + self.alpha * n.hits * self.efficiency(n) / self._E)

    def set_alpha(self, alpha: float, H: float | None = None, E: float | None = None):
        self.alpha = alpha
        if H is not None:
            self._H, self._E = H, E
        self.tree.rescore()

    # -- admission ------------------------------------------------------------------------
    def _snap(self, p: int) -> int:
        return p if self.chunk is None else p - p % self.chunk

    def lookup(self, input_tokens) -> Hit:
        """The usable hit: the deepest state on the path, leaving at least the last input token
        to prefill (its logits start decoding)."""
        t = token_ids("input_tokens", input_tokens)
        path, _, _ = self.tree.walk(t)
        n = self.tree.deepest_state(path, len(t) - 1)
        return Hit(n.end, n)

    def _branch(self, path, partial, m, n) -> list[int]:
        if self.policy == "vllm" or m == 0 or (partial is None and m == n):
            return []
        if partial is None and path[-1].state is not None:
            return []
        p = self._snap(m)
        return [p] if p > 0 else []

    def branch_positions(self, input_tokens) -> list[int]:
        """Speculative insertion of the input (a dry run: the tree is not changed): where it
        would split an edge or leave a stateless node, the state to checkpoint during prefill."""
        t = token_ids("input_tokens", input_tokens)
        return self._branch(*self.tree.walk(t), len(t))

    def _positions(self, branch: list[int], seq_len: int) -> list[int]:
        if self.policy == "vllm":
            return list(range(self.block, seq_len + 1, self.block))
        last = self._snap(seq_len)
        return sorted(set(branch) | ({last} if last > 0 else set()))

    def checkpoint_positions(self, input_tokens, seq_len: int) -> list[int]:
        """Every position (sorted) whose state admission keeps for a request whose processed
        sequence (input + output) has ``seq_len`` tokens."""
        return self._positions(self.branch_positions(input_tokens), seq_len)

    def admit(self, seq_tokens, states: dict, kv=None):
        """Insert a finished request (see RadixTree.insert)."""
        return self.tree.insert(token_ids("seq_tokens", seq_tokens), states, kv)

    def serve(self, input_tokens, output_tokens) -> int:
        """Simulate one request end to end; returns the hit length."""
        inp = token_ids("input_tokens", input_tokens)
        seq = np.concatenate([inp, token_ids("output_tokens", output_tokens)])
        path, partial, m = self.tree.walk(inp)  # one walk gives the hit and the branch point
        node = self.tree.deepest_state(path, len(inp) - 1)
        positions = self._positions(self._branch(path, partial, m, len(inp)), len(seq))
        self.tree.touch(node)
        self.tree.lock(node)
        try:
            self.tree.insert(seq, {p: True for p in positions})
        finally:
            self.tree.unlock(node)
        self.requests += 1
        self.observe(inp, seq[len(inp):], node.end)
        return node.end

    # -- online alpha ---------------------------------------------------------------------
    def _on_first_evict(self):
        tree = self.tree
        # min-max over the eviction candidates (valid heap entries): no walk of the tree
        nodes = [e[4] for e in tree._heap if e[4].alive and e[3] == e[4].ver
                 and e[4].state is not None and not e[4].refs]
        if nodes:
            lasts = [tree.recency(n) for n in nodes]
            effs = [self.efficiency(n) for n in nodes]
            self._H = float(max(lasts) - min(lasts)) or 1.0
            self._E = float(max(effs) - min(effs)) or 1.0
        if not self.tune:  # a fixed alpha: the same normalization, no shadows
            self.tree.rescore()
            return
        self._start_tuner = True  # mid-insertion here: copy the tree once the request ends

    def observe(self, input_tokens, output_tokens, hit: int):
        """A request ended (``serve`` calls this; an engine calls it after ``admit``): feed
        the tuner (``hit``: this request's hit length, for its guard and probe), and take the
        alpha it chooses."""
        if self.tuner is None:
            return
        if self._start_tuner:
            self._start_tuner = False
            self.tuner.start(self)
            return
        if self.tuner.started:
            alpha = self.tuner.observe(self, input_tokens, output_tokens, hit)
            if alpha is not None:
                self.tuned_alpha = alpha
                if alpha != self.alpha:
                    self.set_alpha(alpha)

    def clone(self, alpha: float) -> "PrefixCache":
        """A payload-free copy (states -> True, no KV, no locks) with a fixed ``alpha`` and
        this cache's scales, byte costs and clock."""
        c = PrefixCache(self.config, self.tree.capacity, "marconi", self.block, self.chunk,
                        alpha=alpha)
        c._H, c._E = self._H, self._E
        t = c.tree
        t.kv_bytes, t.state_bytes = self.tree.kv_bytes, self.tree.state_bytes
        t.on_first_evict = None  # shadows keep the scales fixed at the first eviction
        t.clock = self.tree.clock
        t.evictions = self.tree.evictions
        stack = [(self.tree.root, t.root)]
        while stack:
            src, dst = stack.pop()
            for k, s in src.children.items():
                d = Node(dst, s.key, s.start, None, s.last)
                d.state = True if s.state is not None else None
                d.slast, d.hits = s.slast, s.hits
                dst.children[k] = d
                t.num_nodes += 1
                t.num_tokens += len(d.key)
                t.num_states += d.state is not None
                t.used_bytes += t.node_bytes(d)
                stack.append((s, d))
        for n in t.nodes():
            t._push(n)
        return c
