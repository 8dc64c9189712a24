"""A small TP x PP serving engine for TinyLlama: prefill in one layout, re-shard the weights
(reshard) and the KV (through the CPU KV tier), decode in another; every rank calls ``serve``.

Collectives: vocab-parallel embedding and the row-parallel o_proj / down_proj all-reduce over
the stage's TP group, the LM head all-gathers over it; stages pass activations point to point.
The decode cache is paged, HND; its page ids are the tier's (one page table for both).
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

import flashkit

from .execute import reshard
from .kv_tier import KVTier
from .layout import Layout
from .model import KV_DTYPE, TinyLlamaConfig, rms_norm, rope
from .plan import plan_reshard
from .rules import llama_rules

__all__ = ["llama_shapes", "ShardedLlama", "serve"]


def llama_shapes(cfg: TinyLlamaConfig) -> dict:
    """Name -> fp32 meta tensor of every TinyLlama weight (what plan_reshard reads)."""
    d, hd = cfg.hidden, cfg.head_dim
    s = {"model.embed_tokens.weight": (cfg.vocab, d)}
    for i in range(cfg.layers):
        p = f"model.layers.{i}."
        s |= {p + "self_attn.q_proj.weight": (cfg.heads * hd, d),
              p + "self_attn.k_proj.weight": (cfg.kv_heads * hd, d),
              p + "self_attn.v_proj.weight": (cfg.kv_heads * hd, d),
              p + "self_attn.o_proj.weight": (d, cfg.heads * hd),
              p + "mlp.gate_proj.weight": (cfg.ffn, d), p + "mlp.up_proj.weight": (cfg.ffn, d),
              p + "mlp.down_proj.weight": (d, cfg.ffn), p + "input_layernorm.weight": (d,),
              p + "post_attention_layernorm.weight": (d,)}
    s |= {"model.norm.weight": (d,), "lm_head.weight": (cfg.vocab, d)}
    return {n: torch.empty(v, device="meta") for n, v in s.items()}


class _Groups:
    """One gloo group per TP block of every layout (new_group is collective: every rank
    creates every group, in the same order)."""

    def __init__(self, layouts):
        self._g = {}
        for lay in layouts:
            for d in range(lay.dp):
                for s in range(lay.pp):
                    ranks = tuple(lay.rank(d, s, t) for t in range(lay.tp))
                    if ranks not in self._g:
                        self._g[ranks] = dist.new_group(list(ranks)) if len(ranks) > 1 else None

    def tp(self, lay: Layout, d: int, s: int):
        return self._g[tuple(lay.rank(d, s, t) for t in range(lay.tp))]


class ShardedLlama:
    """This rank's part of TinyLlama under ``layout`` (its stage's layers, its TP slice)."""

    def __init__(self, cfg: TinyLlamaConfig, layout: Layout, rank: int, state: dict, groups):
        self.cfg, self.layout, self.rank, self.sd = cfg, layout, rank, state
        d, self.stage, self.t = layout.coords(rank)
        tp = layout.tp
        self.layers = [i for i in range(cfg.layers)
                       if layout.stage_of_layer(i, cfg.layers) == self.stage]
        self.group = groups.tp(layout, d, self.stage)
        self.heads, self.kv_heads = cfg.heads // tp, cfg.kv_heads // tp
        self.kv_range = (self.t * self.kv_heads, (self.t + 1) * self.kv_heads)
        self.vocab0, self.vocab_n = self.t * cfg.vocab // tp, cfg.vocab // tp
        self.prev = layout.rank(d, self.stage - 1, self.t) if self.stage > 0 else None
        self.next = layout.rank(d, self.stage + 1, self.t) if self.stage < layout.pp - 1 else None
        self.last_rank0 = layout.rank(d, layout.pp - 1, 0)

    def _reduce(self, x):
        if self.layout.tp > 1:
            dist.all_reduce(x, group=self.group)
        return x

    def embed(self, tokens):
        local = tokens - self.vocab0
        hit = (local >= 0) & (local < self.vocab_n)
        x = self.sd["model.embed_tokens.weight"][local.clamp(0, self.vocab_n - 1)]
        return self._reduce(x * hit[:, None])

    def logits(self, x):
        h = rms_norm(x, self.sd["model.norm.weight"], self.cfg.eps)
        part = h @ self.sd["lm_head.weight"].T
        if self.layout.tp == 1:
            return part
        parts = [torch.empty_like(part) for _ in range(self.layout.tp)]
        dist.all_gather(parts, part.contiguous(), group=self.group)
        return torch.cat(parts, -1)

    def layer(self, i, x, pos, attend):
        """One decoder layer on local heads; ``attend(i, q, k, v)`` -> o [T, heads, hd]."""
        c, p = self.cfg, f"model.layers.{i}."
        w = lambda n: self.sd[p + n]  # noqa: E731
        h = rms_norm(x, w("input_layernorm.weight"), c.eps)
        T = x.shape[0]
        q = rope((h @ w("self_attn.q_proj.weight").T).view(T, self.heads, c.head_dim), pos,
                 c.rope_theta)
        k = rope((h @ w("self_attn.k_proj.weight").T).view(T, self.kv_heads, c.head_dim), pos,
                 c.rope_theta)
        v = (h @ w("self_attn.v_proj.weight").T).view(T, self.kv_heads, c.head_dim)
        o = attend(i, q.to(KV_DTYPE), k.to(KV_DTYPE), v.to(KV_DTYPE))
        x = x + self._reduce(o.float().reshape(T, -1) @ w("self_attn.o_proj.weight").T)
        h = rms_norm(x, w("post_attention_layernorm.weight"), c.eps)
        act = torch.nn.functional.silu(h @ w("mlp.gate_proj.weight").T) * (
            h @ w("mlp.up_proj.weight").T)
        return x + self._reduce(act @ w("mlp.down_proj.weight").T)

    def forward(self, tokens, pos, attend, sends):
        """This stage's part of one micro-batch: tokens int64 [T] on the first stage, the
        previous stage's activations otherwise. Returns logits [T, vocab] on the last stage,
        None elsewhere (the activations go to the next stage; their isend handles join
        ``sends``)."""
        if self.prev is None:
            x = self.embed(tokens)
        else:
            x = torch.empty(len(tokens), self.cfg.hidden)
            dist.recv(x, self.prev)
        for i in self.layers:
            x = self.layer(i, x, pos, attend)
        if self.next is not None:
            sends.append(dist.isend(x, self.next))
            return None
        return self.logits(x)


def _broadcast(logits, model: ShardedLlama, shape):
    out = logits if logits is not None and model.rank == model.last_rank0 else torch.empty(shape)
    dist.broadcast(out, model.last_rank0)
    return out


def _prefill(model: ShardedLlama, prompts, tier: KVTier, pages):
    """Each prompt is a micro-batch through the pipeline; every layer's KV (this rank's heads)
    is swapped out to the tier on a worker thread while the next layer runs."""
    ps, pending, sends, out = tier.page_size, [], [], []
    for r, toks in enumerate(prompts):
        T = len(toks)
        n = math.ceil(T / ps)

        def attend(i, q, k, v, T=T, n=n, r=r):
            kv = torch.zeros(2, n * ps, model.kv_heads, model.cfg.head_dim, dtype=KV_DTYPE)
            kv[0, :T], kv[1, :T] = k, v
            hnd = kv.view(2, n, ps, model.kv_heads, -1).permute(1, 0, 3, 2, 4).contiguous()
            pending.append(tier.write_async(hnd, list(range(n)), pages[r][:n], i,
                                            model.kv_range))
            return flashkit.single_prefill_with_kv_cache(q=q, k=k, v=v, causal=True)

        logits = model.forward(torch.as_tensor(toks), torch.arange(T), attend, sends)
        if logits is not None:
            out.append(logits[-1])
    for h in pending + sends:
        h.wait()
    # One broadcast at the end, so that the first stage runs ahead to the next prompt.
    return _broadcast(torch.stack(out) if out else None, model, (len(prompts), model.cfg.vocab))


def _decode(model: ShardedLlama, tier: KVTier, pages, lens, first, steps):
    """Swap this rank's heads of its layers in from the tier, then ``steps`` batched greedy
    decode steps over the paged cache; returns logits [steps, batch, vocab]."""
    ps, B, c = tier.page_size, len(lens), model.cfg
    caches = {i: torch.zeros(tier.pages.shape[0], 2, model.kv_heads, ps, c.head_dim,
                             dtype=KV_DTYPE) for i in model.layers}
    flat = sorted({p for pg in pages for p in pg})
    for h in [tier.read_async(caches[i], flat, flat, i, model.kv_range) for i in model.layers]:
        h.wait()
    wrapper = flashkit.BatchDecodeWithPagedKVCacheWrapper(
        float_workspace_buffer=torch.empty(1 << 20, dtype=torch.uint8), kv_layout="HND")
    lens, tokens, out, sends = list(lens), first, [], []
    for _ in range(steps):
        lens = [n + 1 for n in lens]
        used = [pg[:math.ceil(n / ps)] for pg, n in zip(pages, lens)]
        indptr = torch.tensor([0] + [len(u) for u in used], dtype=torch.int32).cumsum(0)
        indptr = indptr.to(torch.int32)
        indices = torch.tensor([p for u in used for p in u], dtype=torch.int32)
        last = torch.tensor([(n - 1) % ps + 1 for n in lens], dtype=torch.int32)
        pos = torch.tensor([n - 1 for n in lens])
        wrapper.plan(indptr=indptr, indices=indices, last_page_len=last, num_qo_heads=model.heads,
                     num_kv_heads=model.kv_heads, head_dim=c.head_dim, page_size=ps,
                     q_data_type=KV_DTYPE)

        def attend(i, q, k, v):
            flashkit.append_paged_kv_cache(
                append_key=k, append_value=v, batch_indices=torch.arange(B, dtype=torch.int32),
                positions=pos.to(torch.int32), paged_kv_cache=caches[i], kv_indices=indices,
                kv_indptr=indptr, kv_last_page_len=last, kv_layout="HND")
            return wrapper.run(q=q, paged_kv_cache=caches[i])

        logits = model.forward(tokens, pos, attend, sends)
        logits = _broadcast(logits, model, (B, c.vocab))
        out.append(logits)
        tokens = logits.argmax(-1)
    for h in sends:
        h.wait()
    return torch.stack(out) if out else torch.empty(0, B, c.vocab)


def serve(cfg: TinyLlamaConfig, local_state: dict, rank: int, prompts, prefill: Layout,
          decode: Layout, max_new_tokens: int, tier: KVTier):
    """Greedy generation for ``prompts`` (lists of token ids) on every rank of the world.

    ``local_state`` is this rank's shard under ``prefill`` (flashkit.reshard.shard). ``tier``
    has every rank's view of the same shared pages (made before the workers fork) and room
    for every prompt plus ``max_new_tokens``. Returns (logits [1 + steps, batch, vocab] fp32,
    the same on every rank: the prefill's last-token logits, then one row per decode step;
    this rank's state under ``decode``).
    """
    for name, lay in (("prefill", prefill), ("decode", decode)):
        if lay.dp != 1 or lay.world_size != dist.get_world_size():
            raise ValueError(f"{name} layout {lay} must have dp=1 and tp*pp = the world size "
                             f"{dist.get_world_size()}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if not prompts or any(len(p) < 1 for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty token lists")
    ps = tier.page_size
    pages = [tier.allocator.alloc(math.ceil((len(p) + max_new_tokens) / ps)) for p in prompts]
    groups = _Groups([prefill, decode])
    first = _prefill(ShardedLlama(cfg, prefill, rank, local_state, groups), prompts, tier, pages)
    plan = plan_reshard(llama_shapes(cfg), llama_rules(cfg.head_dim), prefill, decode)
    state = reshard(local_state, plan, rank)
    dist.barrier()  # every prefill rank's swap-out has landed in the tier
    rest = _decode(ShardedLlama(cfg, decode, rank, state, groups), tier, pages,
                   [len(p) for p in prompts], first.argmax(-1), max_new_tokens - 1)
    for pg in pages:
        tier.allocator.free(pg)
    return torch.cat([first[None], rest]), state
