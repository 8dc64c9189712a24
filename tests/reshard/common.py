"""Shared helpers for the re-sharding tests: a small LLaMA-shaped state dict, reassembly of
shards (the oracle for shard/plan/reshard), and a gloo process launcher."""
from __future__ import annotations

import os
import socket

import torch

from flashkit.reshard import Layout, resolve

HEAD_DIM = 4


def llama_state(layers=4, hidden=16, heads=8, kv_heads=4, ffn=24, vocab=32, seed=0,
                dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    sd = {"model.embed_tokens.weight": r(vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        sd |= {p + "self_attn.q_proj.weight": r(heads * HEAD_DIM, hidden),
               p + "self_attn.k_proj.weight": r(kv_heads * HEAD_DIM, hidden),
               p + "self_attn.v_proj.weight": r(kv_heads * HEAD_DIM, hidden),
               p + "self_attn.o_proj.weight": r(hidden, heads * HEAD_DIM),
               p + "mlp.gate_proj.weight": r(ffn, hidden),
               p + "mlp.up_proj.weight": r(ffn, hidden),
               p + "mlp.down_proj.weight": r(hidden, ffn),
               p + "input_layernorm.weight": r(hidden),
               p + "post_attention_layernorm.weight": r(hidden)}
    sd["model.norm.weight"] = r(hidden)
    sd["lm_head.weight"] = r(vocab, hidden)
    return sd


def assemble(shards: dict, rules, layout: Layout, shapes: dict) -> dict:
    """Full tensors rebuilt from every rank's shard; checks that replicas agree exactly."""
    place = resolve(shapes, rules, layout)
    full = {}
    for name, shape in shapes.items():
        p = place[name]
        out = torch.full(shape, float("nan"))
        for rank, sd in shards.items():
            ivs = p.intervals(layout, rank)
            if not ivs:
                assert name not in sd, (name, rank)
                continue
            off = 0
            for a, b in ivs:
                piece = sd[name].narrow(p.dim, off, b - a)
                prev = out.narrow(p.dim, a, b - a)
                seen = ~torch.isnan(prev)
                assert torch.equal(prev[seen], piece.to(prev.dtype)[seen]), \
                    f"replicas of {name} differ"
                prev.copy_(piece)
                off += b - a
        full[name] = out
    return full


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world, port, fn, args):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def launch(fn, world: int, *args):
    """Run fn(rank, world, *args) in ``world`` gloo processes on localhost; re-raises the first
    failure. The processes are forked: a spawned one re-imports torch, 6 s each on two loaded
    cores against well under 1 s for a fork (torch resets its thread pool after fork)."""
    import torch.multiprocessing as mp

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.start_processes(_entry, args=(world, free_port(), fn, args), nprocs=world, join=True,
                       start_method="fork")
