"""Benchmark: ``reshard`` against gather-everything (all_gather each tensor, then slice), on
gloo, for a Llama-3.2-1B-shaped model in bf16 (16 layers, 2048 hidden, 32 heads, 8 KV heads,
8192 ffn, 128256 vocab) with an untied LM head: 1.50 B parameters, 3.0 GB.

    python -m flashkit.reshard.bench [--json PATH]

The third pair is TP4 -> TP2PP2 in the rank order best_order picks. Both start from the same
TP4 shards and must produce identical tensors (CRC32 per tensor). Bytes are what the
ranks receive, seconds the slowest rank's wall time between two barriers, transient memory the
largest set of staging buffers one rank holds at once (receive + send buffers for reshard; the
gathered pieces plus the assembled full tensor for the baseline), counted from the allocations.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
import zlib

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .layout import Layout, resolve
from .plan import best_order, plan_reshard
from .execute import reshard
from .rules import llama_rules

CFG = dict(layers=16, hidden=2048, heads=32, kv_heads=8, ffn=8192, vocab=128256)
PAIRS = [(Layout(4, 1), Layout(1, 4)), (Layout(4, 1), Layout(2, 2)),
         (Layout(4, 1), "best TP2PP2")]


def shapes_1b() -> dict:
    c, hd = CFG, CFG["hidden"] // CFG["heads"]
    d, kv = c["hidden"], c["kv_heads"] * hd
    s = {"model.embed_tokens.weight": (c["vocab"], d)}
    for i in range(c["layers"]):
        p = f"model.layers.{i}."
        s |= {p + "self_attn.q_proj.weight": (d, d), p + "self_attn.k_proj.weight": (kv, d),
              p + "self_attn.v_proj.weight": (kv, d), p + "self_attn.o_proj.weight": (d, d),
              p + "mlp.gate_proj.weight": (c["ffn"], d), p + "mlp.up_proj.weight": (c["ffn"], d),
              p + "mlp.down_proj.weight": (d, c["ffn"]), p + "input_layernorm.weight": (d,),
              p + "post_attention_layernorm.weight": (d,)}
    s |= {"model.norm.weight": (d,), "lm_head.weight": (c["vocab"], d)}
    return {n: torch.empty(v, dtype=torch.bfloat16, device="meta") for n, v in s.items()}


def _local_state(shapes, rules, layout, rank):
    """This rank's shards, filled without materializing full tensors: each global row r of a
    tensor holds (r + crc(name)) % 251, so replicas agree and slices differ."""
    place = resolve({n: t.shape for n, t in shapes.items()}, rules, layout)
    out = {}
    for name, t in shapes.items():
        p = place[name]
        ivs = p.intervals(layout, rank)
        if not ivs:
            continue
        rows = torch.cat([torch.arange(a, b) for a, b in ivs])
        vals = ((rows + zlib.crc32(name.encode())) % 251).to(torch.bfloat16)
        view = [1] * len(t.shape)
        view[p.dim] = -1
        shape = list(t.shape)
        shape[p.dim] = len(rows)
        out[name] = vals.view(view).expand(shape).contiguous()
    return out


def _gather_everything(local, shapes, rules, src, dst, rank):
    """The baseline: every tensor all_gathered whole on every rank, then sliced (src must be
    pure TP over the world, as the benchmark's TP4 is)."""
    ps = resolve({n: t.shape for n, t in shapes.items()}, rules, src)
    pd = resolve({n: t.shape for n, t in shapes.items()}, rules, dst)
    out, received, peak = {}, 0, 0
    world = src.world_size
    for name in shapes:
        mine = local[name]
        parts = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(parts, mine)
        replicated = len(set(ps[name].tp_intervals)) == 1
        full = parts[0] if replicated else torch.cat(parts, ps[name].dim)
        nbytes = mine.numel() * mine.element_size()
        received += (world - 1) * nbytes
        peak = max(peak, world * nbytes + full.numel() * full.element_size())
        ivs = pd[name].intervals(dst, rank)
        if ivs:
            out[name] = torch.cat([full.narrow(pd[name].dim, a, b - a) for a, b in ivs],
                                  pd[name].dim).contiguous()
        del parts, full
    return out, received, peak


def _crcs(state) -> dict:
    return {n: zlib.crc32(t.view(torch.int16).numpy()) for n, t in state.items()}


def _timed(fn):
    dist.barrier()
    t0 = time.perf_counter()
    res = fn()
    dist.barrier()
    return res, time.perf_counter() - t0


def _worker(rank, world, port, queue):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    shapes, rules = shapes_1b(), llama_rules(CFG["hidden"] // CFG["heads"])
    rows = []
    for src, dst in PAIRS:
        if dst == "best TP2PP2":  # the same pair in the rank order best_order picks
            dst = best_order(shapes, rules, src, Layout(2, 2))
        plan = plan_reshard(shapes, rules, src, dst)
        local = _local_state(shapes, rules, src, rank)
        (ours, stats), t_ours = _timed(lambda local=local: reshard(local, plan, rank, return_stats=True))
        crc_ours = _crcs(ours)
        del ours
        (base, recv_b, peak_b), t_base = _timed(
            lambda local=local: _gather_everything(local, shapes, rules, src, dst, rank))
        same = _crcs(base) == crc_ours
        del base, local
        agg = torch.tensor([stats["bytes_received"], recv_b, stats["peak_staging_bytes"], peak_b,
                            int(not same)], dtype=torch.float64)
        mx = agg.clone()
        dist.all_reduce(agg)
        dist.all_reduce(mx, op=dist.ReduceOp.MAX)
        tmax = torch.tensor([t_ours, t_base], dtype=torch.float64)
        dist.all_reduce(tmax, op=dist.ReduceOp.MAX)
        layer = sum(t.numel() * 2 for n, t in shapes.items() if ".layers.0." in n)
        rows.append(dict(src=str(src), dst=str(dst), plan_bytes=plan.bytes_to_move,
                         lower_bound=plan.lower_bound, reshard_bytes=int(agg[0]),
                         baseline_bytes=int(agg[1]), reshard_seconds=float(tmax[0]),
                         baseline_seconds=float(tmax[1]), reshard_transient=int(mx[2]),
                         baseline_transient=int(mx[3]), one_layer_bytes=layer,
                         steps=len(plan.steps), identical=not bool(agg[4])))
    if rank == 0:
        queue.put(rows)
    dist.destroy_process_group()


def _revision():
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], capture_output=True,
                                    text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    return commit, dirty


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flashkit.reshard.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="also write the results (with versions and commit) here")
    args = ap.parse_args(argv)
    commit, dirty = _revision()  # before the run: the tree may change while it runs
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.start_processes(_worker, args=(4, port, queue), nprocs=4, join=True, start_method="spawn")
    rows = queue.get()
    print(f"{'pair':<24}{'plan GB':>9}{'reshard GB':>11}{'gather GB':>10}{'reshard s':>10}"
          f"{'gather s':>9}{'reshard MB':>11}{'gather MB':>10}  identical")
    for r in rows:
        print(f"{r['src'] + '->' + r['dst']:<24}{r['plan_bytes'] / 1e9:9.3f}"
              f"{r['reshard_bytes'] / 1e9:11.3f}{r['baseline_bytes'] / 1e9:10.3f}"
              f"{r['reshard_seconds']:10.2f}{r['baseline_seconds']:9.2f}"
              f"{r['reshard_transient'] / 1e6:11.1f}{r['baseline_transient'] / 1e6:10.1f}"
              f"  {r['identical']}")
    if args.json:
        meta = dict(device=f"CPU ({platform.processor() or platform.machine()}, "
                           f"{os.cpu_count()} cores), gloo over loopback, 4 processes",
                    torch=torch.__version__, python=platform.python_version(), commit=commit,
                    dirty=dirty,
                    command="python -m flashkit.reshard.bench " + " ".join(argv or sys.argv[1:]),
                    time=time.strftime("%Y-%m-%dT%H:%M:%S"),
                    model="Llama-3.2-1B-shaped, untied LM head, bf16", results=rows)
        with open(args.json, "w") as f:
            json.dump(meta, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
