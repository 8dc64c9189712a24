"""Measure the overlap MoEDispatcher achieves on CPU gloo ranks (or NCCL GPUs).

    python -m flashkit.moe.overlap --world 2 --tokens 2048 --hidden 1024 --ffn 1024 --experts 8

Per configuration, the slowest rank's median wall time of the layer: one chunk (serial: its
comm wait and compute are the two parts apart) and C chunks; printed by rank 0.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, args, port: int):
    from flashkit.moe import MoEDispatcher

    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=args.world)
    g = torch.Generator().manual_seed(rank)
    per = args.experts // args.world
    w1 = torch.randn(per, 2 * args.ffn, args.hidden, generator=g) / args.hidden ** 0.5
    w2 = torch.randn(per, args.hidden, args.ffn, generator=g) / args.ffn ** 0.5
    x = torch.randn(args.tokens, args.hidden, generator=g)
    ids = torch.rand(args.tokens, args.experts, generator=g).topk(args.topk, -1).indices
    w = torch.rand(args.tokens, args.topk, generator=g)
    layer = MoEDispatcher(w1, w2, args.experts, num_chunks=1)
    model = layer.calibrate(rows=min(2048, args.tokens * args.topk))
    results = {}
    for chunks in [1, *args.chunks, "auto"]:
        layer.num_chunks = chunks
        totals, comms, comps, used = [], [], [], None
        for i in range(args.reps + 1):
            dist.barrier()
            layer(x, w, ids)
            t = torch.tensor([layer.stats["total_s"]])
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            if i:  # the first call warms up
                totals.append(float(t))
                comms.append(layer.stats["comm_wait_s"])
                comps.append(layer.stats["compute_s"])
            used = layer.stats["num_chunks"]
        results[str(chunks)] = dict(num_chunks=used, total_ms=1e3 * statistics.median(totals),
                                    comm_wait_ms=1e3 * statistics.median(comms),
                                    compute_ms=1e3 * statistics.median(comps))
    if rank == 0:
        serial = results["1"]
        report = dict(args=vars(args), cost_model=vars(model) if hasattr(model, "__dict__")
                      else model.__dict__, results=results,
                      apart_ms=serial["comm_wait_ms"] + serial["compute_ms"])
        for key, r in results.items():
            r["speedup_vs_serial"] = serial["total_ms"] / r["total_ms"]
        print(json.dumps(report, indent=1, default=str))
    dist.destroy_process_group()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--tokens", type=int, default=2048, help="tokens per rank")
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--ffn", type=int, default=1024)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--topk", type=int, default=2)
    p.add_argument("--chunks", type=int, nargs="*", default=[2, 4])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    mp.spawn(_worker, args=(args, _free_port()), nprocs=args.world, join=True)


if __name__ == "__main__":
    main()
