"""An exact serving path: a tiny hybrid model served through the prefix cache.

``TinyHybrid`` stacks Mamba-2 mixers (flashkit.ops causal_conv1d + chunk_ssd_scan, resuming from
``initial_states`` and emitting ``checkpoint_positions``) and softmax attention, each followed by
an MLP, with random weights. Attention runs through flashkit's paged decode/prefill wrappers over
the engine's KV pool (bf16, pages of one token whose ids are the cache's slot ids; see
attention.py). Every flashkit op runs on the chosen backend: "torch" or "triton" (the Triton
interpreter on CPU). ``Engine`` serves requests through a ``PrefixCache``: on a hit it reuses the
KV slots of the cached prefix and restores the SSM and conv states of the hit node, prefills only
the rest, checkpoints the states the policy admits, and hands KV and states to the tree at the
end. Freed slots and evicted states are filled with NaN, so a live request that read them would
produce NaN logits.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from flashkit.ops import causal_conv1d, chunk_ssd_scan

from ._checks import token_ids
from .attention import ATTN_DTYPE, BACKENDS, PagedAttention
from .costs import HybridModelConfig
from .policy import PrefixCache

__all__ = ["TinyHybrid", "Engine"]


class TinyHybrid:
    """Random-weight hybrid LM; ``layers`` is a string of 's' (Mamba-2) and 'a' (attention)."""

    def __init__(self, layers: str = "sasa", vocab: int = 64, d_model: int = 32,
                 d_state: int = 8, headdim: int = 8, expand: int = 2, d_conv: int = 4,
                 n_heads: int = 2, chunk_size: int = 16, seed: int = 0,
                 dtype: torch.dtype = torch.float32):
        if set(layers) - {"s", "a"} or not layers:
            raise ValueError(f"layers must be a non-empty string of 's' and 'a', got {layers!r}")
        g = torch.Generator().manual_seed(seed)
        def w(*shape, scale=None):
            scale = scale if scale is not None else shape[0] ** -0.5
            return (torch.randn(*shape, generator=g) * scale).to(dtype)
        self.layers, self.dtype, self.vocab = layers, dtype, vocab
        self.d, self.n, self.p, self.w_conv = d_model, d_state, headdim, d_conv
        self.di = expand * d_model
        self.nh = self.di // headdim
        self.conv_dim = self.di + 2 * d_state
        self.ah, self.adh = n_heads, d_model // n_heads
        self.chunk = chunk_size
        self.embed = w(vocab, d_model, scale=1.0)
        self.head = w(d_model, vocab)
        self.params = []
        for kind in layers:
            mlp = (w(d_model, 2 * d_model), w(2 * d_model, d_model))
            if kind == "s":
                mix = dict(in_proj=w(d_model, 2 * self.di + 2 * d_state + self.nh),
                           conv_w=w(self.conv_dim, d_conv, scale=0.5),
                           conv_b=w(self.conv_dim, scale=0.1),
                           A=-torch.rand(self.nh, generator=g).to(dtype) - 0.5,
                           D=w(self.nh, scale=1.0), dt_bias=w(self.nh, scale=0.5),
                           out=w(self.di, d_model))
            else:
                mix = dict(qkv=w(d_model, 3 * d_model), out=w(d_model, d_model))
            self.params.append((kind, mix, mlp))
        self.n_attn, self.n_ssm = layers.count("a"), layers.count("s")
        self.config = HybridModelConfig(
            n_ssm=self.n_ssm, n_attn=self.n_attn, n_mlp=len(layers), d_model=d_model,
            d_state=d_state, dtype_bytes=torch.finfo(dtype).bits // 8, expand=expand,
            d_conv=d_conv, kv_dim=d_model, state_dtype_bytes=4,  # the scan keeps fp32 states
            kv_dtype_bytes=torch.finfo(ATTN_DTYPE).bits // 8)
        self._attn: dict[str, PagedAttention] = {}

    def zero_state(self):
        return [(torch.zeros(self.nh, self.p, self.n, dtype=torch.float32),
                 torch.zeros(self.conv_dim, self.w_conv - 1, dtype=self.dtype))
                for _ in range(self.n_ssm)]

    @staticmethod
    def _norm(x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

    def new_pool(self, num_slots: int) -> tuple[torch.Tensor, torch.Tensor]:
        """NaN-filled K and V pools [n_attn, num_slots, n_heads, head_dim] (bf16)."""
        k = torch.full((self.n_attn, num_slots, self.ah, self.adh), float("nan"),
                       dtype=ATTN_DTYPE)
        return k, k.clone()

    def attention(self, backend: str) -> PagedAttention:
        if backend not in self._attn:
            self._attn[backend] = PagedAttention(self.ah, self.adh, backend)
        return self._attn[backend]

    def forward(self, tokens, start, slots, pool_k, pool_v, state, checkpoints=(),
                backend: str = "torch"):
        """Run ``tokens`` [T] at positions ``start..start+T-1``.

        slots : int64 [start + T], the pool slot of every position (the new ones are written)
        pool_k, pool_v : [n_attn, num_slots, n_heads, head_dim] bf16 (``new_pool``)
        state : per SSM layer (ssm [nheads, headdim, d_state] fp32, conv [conv_dim, d_conv-1])
            after ``start`` tokens
        checkpoints : positions in (start, start + T] whose states to return

        Returns (logits [T, vocab], state after the last token, {position: state}).
        """
        T = len(tokens)
        rel = [p - start for p in checkpoints]
        x = self.embed[tokens]
        new_state, ckpts = [], {p: [] for p in checkpoints}
        ia = isl = 0
        attn = self.attention(backend)
        if self.n_attn:
            attn.plan(slots[:start + T], T)  # one page table for every attention layer
        for kind, mix, (w1, w2) in self.params:
            h = self._norm(x)
            if kind == "a":
                q, k, v = (h @ mix["qkv"]).view(T, 3, self.ah, self.adh).unbind(1)
                pool_k[ia, slots[start:start + T]] = k.to(pool_k.dtype)
                pool_v[ia, slots[start:start + T]] = v.to(pool_v.dtype)
                o = attn.run(q, pool_k[ia], pool_v[ia])
                x = x + o.reshape(T, self.d) @ mix["out"]
                ia += 1
            else:
                ssm0, conv0 = state[isl]
                z, xbc, dt = (h @ mix["in_proj"]).split([self.di, self.conv_dim, self.nh], -1)
                xbc_t = xbc.t()[None]
                conv_out, conv_fin = causal_conv1d(xbc_t, mix["conv_w"], mix["conv_b"], "silu",
                                                   initial_states=conv0[None].contiguous(),
                                                   return_final_states=True, backend=backend)
                xs, B, C = conv_out[0].t().contiguous().split([self.di, self.n, self.n], -1)
                out = chunk_ssd_scan(
                    xs.reshape(1, T, self.nh, self.p), dt[None], mix["A"],
                    B.reshape(1, T, 1, self.n), C.reshape(1, T, 1, self.n), self.chunk,
                    D=mix["D"], z=z.reshape(1, T, self.nh, self.p), dt_bias=mix["dt_bias"],
                    dt_softplus=True, initial_states=ssm0[None],
                    checkpoint_positions=rel or None, return_final_states=True,
                    backend=backend)
                y, fin = out[0], out[1]
                full = torch.cat([conv0, xbc.t()], 1)  # conv inputs, the restored ones first
                for i, (p, r) in enumerate(zip(checkpoints, rel)):
                    ckpts[p].append((out[2][0, i].clone(),
                                     full[:, r:r + self.w_conv - 1].clone()))
                new_state.append((fin[0], conv_fin[0]))
                x = x + y.reshape(T, self.di) @ mix["out"]
                isl += 1
            x = x + F.gelu(self._norm(x) @ w1) @ w2
        return self._norm(x) @ self.head, new_state, ckpts

    def logits_from_scratch(self, tokens, backend: str = "torch") -> torch.Tensor:
        """The recompute: one forward over the whole sequence with a private pool."""
        T = len(tokens)
        pk, pv = self.new_pool(T)
        logits, _, _ = self.forward(torch.as_tensor(tokens), 0, torch.arange(T), pk, pv,
                                    self.zero_state(), backend=backend)
        return logits


@dataclass
class Request:
    seq: np.ndarray
    n_input: int
    hit: int
    node: object
    slots: torch.Tensor
    state: list
    pos: int
    wanted: list
    states: dict = field(default_factory=dict)
    done: bool = False  # finished: its slots and pin belong to the tree now


class Engine:
    """Serves requests of ``model`` through a PrefixCache (or none, ``cache_bytes=None``).

    ``start(input, output)`` looks up the hit, pins it, restores KV and states and prefills the
    rest (returning the logits of the last input token); ``step(req)`` feeds the next output
    token (teacher forcing: the test compares logits, so sampling must not diverge) and
    ``finish(req)`` admits the request and unpins. Several requests may be live at once.
    """

    def __init__(self, model: TinyHybrid, cache_bytes: float | None, num_slots: int,
                 policy: str = "marconi", block: int = 32, chunk: int | None = None,
                 alpha: float | None = None, backend: str = "torch"):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if isinstance(num_slots, bool) or not isinstance(num_slots, int) or num_slots < 1:
            raise ValueError(f"num_slots must be an int >= 1, got {num_slots!r}")
        self.model, self.backend = model, backend
        self.pool_k, self.pool_v = model.new_pool(num_slots)
        self.free_slots = list(range(num_slots - 1, -1, -1))
        self.cache = None if cache_bytes is None else PrefixCache(
            model.config, cache_bytes, policy, block=block, chunk=chunk, alpha=alpha,
            on_evict=self._on_evict)

    def _alloc(self, n):
        # cached KV that no live request pins is spare room: evict it before giving up
        if self.cache is not None:
            while n > len(self.free_slots) and self.cache.tree.evict_one():
                pass
        if n > len(self.free_slots):
            raise RuntimeError(f"KV pool exhausted: need {n} slots, {len(self.free_slots)} free "
                               "and no unpinned cached KV left to evict")
        return [self.free_slots.pop() for _ in range(n)]

    def _free(self, slots):
        idx = torch.as_tensor(np.asarray(slots, dtype=np.int64))
        self.pool_k[:, idx] = float("nan")
        self.pool_v[:, idx] = float("nan")
        self.free_slots.extend(int(s) for s in idx)

    def _on_evict(self, kv, state):
        if kv is not None:
            self._free(kv)
        for ssm, conv in state if state is not None else ():
            ssm.fill_(float("nan"))
            conv.fill_(float("nan"))

    def _tokens(self, name, tokens, allow_empty):
        t = token_ids(name, tokens, allow_empty)
        if t.size and t.max() >= self.model.vocab:
            i = int(np.argmax(t >= self.model.vocab))
            raise ValueError(f"{name}[{i}] = {int(t[i])} is outside the model's vocabulary "
                             f"[0, {self.model.vocab})")
        return t

    def start(self, input_tokens, output_tokens) -> tuple[Request, torch.Tensor]:
        """Begin a request: ``input_tokens`` (at least one) are prefilled, ``output_tokens``
        (possibly none) are fed by ``step``. Returns the handle and the last input logits."""
        inp = self._tokens("input_tokens", input_tokens, allow_empty=False)
        seq = np.concatenate([inp, self._tokens("output_tokens", output_tokens, True)])
        hit, node, prefix, state, wanted = 0, None, [], self.model.zero_state(), []
        if self.cache is not None:
            h = self.cache.lookup(inp)
            hit, node = h.length, h.node
            self.cache.tree.touch(node)
            self.cache.tree.lock(node)
            chain, n = [], node
            while n is not self.cache.tree.root:
                chain.append(n.kv)
                n = n.parent
            prefix = [s for kv in reversed(chain) for s in kv.tolist()]
            if hit:
                state = [(s.clone(), c.clone()) for s, c in node.state]
            wanted = [p for p in self.cache.checkpoint_positions(inp, len(seq)) if p > hit]
        slots = torch.as_tensor(prefix + self._alloc(len(seq) - hit), dtype=torch.int64)
        req = Request(seq, len(inp), hit, node, slots, state, hit, wanted)
        logits = self._run(req, len(inp))
        return req, logits[-1]

    def _run(self, req: Request, upto: int) -> torch.Tensor:
        ck = [p for p in req.wanted if req.pos < p <= upto]
        logits, req.state, states = self.model.forward(
            torch.as_tensor(req.seq[req.pos:upto], dtype=torch.int64), req.pos,
            req.slots[:upto], self.pool_k, self.pool_v, req.state, ck, backend=self.backend)
        req.states.update(states)
        req.pos = upto
        return logits

    def step(self, req: Request) -> torch.Tensor:
        """Feed the next output token; the logits after it."""
        return self.feed(req, 1)[-1]

    def feed(self, req: Request, n: int | None = None) -> torch.Tensor:
        """Feed the next ``n`` output tokens (all that are left by default) in one forward, as
        a server replaying known answers would; their logits [n, vocab]."""
        if req.done:
            raise RuntimeError("step on a finished request")
        left = len(req.seq) - req.pos
        if left == 0:
            raise RuntimeError("request already fed all its output tokens")
        n = left if n is None else n
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= left:
            raise ValueError(f"n must be an int in [1, {left}] (output tokens left), got {n!r}")
        return self._run(req, req.pos + n)

    def finish(self, req: Request):
        """Admit the request to the cache and unpin its hit. A handle is single-use: a second
        finish would free slots the tree now owns (and a later hit would read NaN)."""
        if req.done:
            raise RuntimeError("finish called twice for one request")
        if req.pos != len(req.seq):
            raise RuntimeError(f"finish after {req.pos} of {len(req.seq)} tokens")
        req.done = True
        own = req.slots[req.hit:].numpy()
        if self.cache is None:
            self._free(own)
            return
        states = {p: s for p, s in req.states.items() if p in set(req.wanted)}
        adopted, _ = self.cache.admit(req.seq, states, kv=req.slots.numpy())
        a, b = adopted if adopted else (len(req.seq), len(req.seq))
        keep = np.zeros(len(req.seq), bool)
        keep[a:b] = True
        self._free(own[~keep[req.hit:]])
        self.cache.tree.unlock(req.node)
        self.cache.requests += 1
        # the online alpha
        self.cache.observe(req.seq[:req.n_input], req.seq[req.n_input:], req.hit)

    def live_slots_ok(self, live: list[Request]) -> bool:
        """No slot a live request reads is free, and no slot is free twice."""
        free = set(self.free_slots)
        return len(free) == len(self.free_slots) and not any(
            free.intersection(r.slots.tolist()) for r in live)
