"""MoEDispatcher on 2 and 4 gloo ranks equals single-process fused_moe on the same weights and
tokens: uneven routing, an expert with no tokens, a rank whose experts get no tokens, a rank
with no tokens of its own; one chunk and several (the overlapped path)."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from flashkit.moe import CostModel, pick_num_chunks, pipeline_time

HIDDEN, FFN, TOPK = 24, 40, 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scenarios(world: int, num_experts: int):
    """(name, tokens per rank, experts never chosen). Expert choice is skewed toward expert 0."""
    per_rank = num_experts // world
    return [
        ("uneven", [5 + 4 * r for r in range(world)], ()),
        ("empty_expert", [6] * world, (num_experts - 1,)),
        ("idle_rank_experts", [7] * world, tuple(range(per_rank, 2 * per_rank))),
        ("rank_without_tokens", [0] + [9] * (world - 1), ()),
    ]


def _routing(tokens, num_experts, never, g):
    scores = torch.rand(tokens, num_experts, generator=g)
    scores[:, 0] += 0.5  # uneven: expert 0 (rank 0) is chosen far more often
    scores[:, list(never)] = -1.0
    ids = scores.topk(TOPK, dim=-1).indices.to(torch.int32)
    return torch.rand(tokens, TOPK, generator=g), ids


def _worker(rank, world, port, num_experts):
    from flashkit.moe import MoEDispatcher
    from flashkit.ops.moe import fused_moe

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        g = torch.Generator().manual_seed(0)  # the same global data on every rank
        w1 = torch.randn(num_experts, 2 * FFN, HIDDEN, generator=g) / HIDDEN ** 0.5
        w2 = torch.randn(num_experts, HIDDEN, FFN, generator=g) / FFN ** 0.5
        per = num_experts // world
        for name, counts, never in _scenarios(world, num_experts):
            x = torch.randn(sum(counts), HIDDEN, generator=g)
            w, ids = _routing(sum(counts), num_experts, never, g)
            want = fused_moe(x, w1, w2, w, ids)
            lo = sum(counts[:rank])
            mine = slice(lo, lo + counts[rank])
            for chunks in (1, 3):
                layer = MoEDispatcher(w1[rank * per:(rank + 1) * per], w2[rank * per:(rank + 1) * per],
                                      num_experts, num_chunks=chunks)
                got = layer(x[mine], w[mine], ids[mine])
                assert layer.stats["num_chunks"] == chunks
                torch.testing.assert_close(got, want[mine], atol=1e-5, rtol=1e-5,
                                           msg=lambda m: f"{name} chunks={chunks} rank={rank}: {m}")
        # "auto" with a cost model: every rank must agree on the chunk count.
        layer = MoEDispatcher(w1[rank * per:(rank + 1) * per], w2[rank * per:(rank + 1) * per],
                              num_experts, cost_model=CostModel(1e9, 1e-5, 1e9, 1e-5))
        n = 3 + 5 * rank
        x = torch.randn(n, HIDDEN, generator=g)
        w, ids = _routing(n, num_experts, (), g)
        got = layer(x, w, ids)
        torch.testing.assert_close(got, fused_moe(x, w1, w2, w, ids), atol=1e-5, rtol=1e-5)
        chosen = torch.tensor([layer.stats["num_chunks"]])
        dist.all_reduce(chosen, op=dist.ReduceOp.MAX)
        assert int(chosen) == layer.stats["num_chunks"]
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world,num_experts", [(2, 8), (4, 8)], ids=["ranks2", "ranks4"])
def test_expert_parallel_equals_single_process(world, num_experts):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(world, _free_port(), num_experts), nprocs=world, join=True)


def test_cost_model():
    """Comm-bound and compute-bound layers split; tiny layers (latency-bound) do not."""
    m = CostModel(link_bytes_per_s=100e9, link_latency_s=10e-6, gemm_flops_per_s=400e12,
                  gemm_overhead_s=5e-6)
    assert pipeline_time(m, 1, 8192, 4096, 14336, 2) == pytest.approx(
        m.comm_seconds(8192, 4096, 2) + m.compute_seconds(8192, 4096, 14336) + 2e-5 + 5e-6)
    assert pick_num_chunks(m, 8, 4096, 14336, 2) == 1
    big = pick_num_chunks(m, 16384, 4096, 14336, 2)
    assert big > 1
    times = [pipeline_time(m, c, 16384, 4096, 14336, 2) for c in range(1, 9)]
    assert times[big - 1] == min(times) < times[0]


def test_dispatcher_needs_a_process_group():
    from flashkit.moe import MoEDispatcher

    if dist.is_initialized():
        pytest.skip("a process group is already initialized")
    with pytest.raises(ValueError, match="needs torch.distributed initialized"):
        MoEDispatcher(torch.zeros(1, 2, 2), torch.zeros(1, 2, 1), 2)
