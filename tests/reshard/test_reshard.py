"""reshard over gloo: real processes, real point-to-point transfers."""
import pytest
import torch
import torch.distributed as dist

from flashkit.reshard import Layout, llama_rules, plan_reshard, reshard, shard

from .common import HEAD_DIM, launch, llama_state

# TP2PP2 in the order best_order picks from TP4 (ranks 0 and 2 on stage 0).
CHAIN = [Layout(4, 1), Layout(2, 2, order=(0, 2, 1, 3)), Layout(1, 4), Layout(4, 1)]


def _chain(rank, world):
    sd = llama_state(dtype=torch.bfloat16)
    rules = llama_rules(HEAD_DIM)
    local = shard(sd, rules, CHAIN[0], rank)
    for src, dst in zip(CHAIN, CHAIN[1:]):
        # A small step budget forces many steps and cuts large transfers into row ranges.
        plan = plan_reshard(sd, rules, src, dst, max_step_bytes=512)
        before = {n: t.clone() for n, t in local.items()}
        new, stats = reshard(local, plan, rank, return_stats=True)
        assert all(torch.equal(before[n], local[n]) for n in local), "input was modified"
        want = shard(sd, rules, dst, rank)
        assert new.keys() == want.keys(), (src, dst, rank)
        for n in want:
            assert new[n].dtype == torch.bfloat16 and torch.equal(new[n], want[n]), (dst, n)
        assert stats["peak_staging_bytes"] <= 512
        got = torch.tensor([stats["bytes_received"]], dtype=torch.int64)
        dist.all_reduce(got)
        assert got.item() == plan.bytes_to_move
        local = new
    for n, t in shard(sd, rules, CHAIN[0], rank).items():
        assert torch.equal(local[n], t)


def test_chain_is_bit_identical():
    launch(_chain, 4)


def _peer_fails(rank, world):
    sd = llama_state()
    rules = llama_rules(HEAD_DIM)
    local = shard(sd, rules, Layout(2, 1), rank)
    plan = plan_reshard(sd, rules, Layout(2, 1), Layout(1, 2))
    if rank == 1:
        return  # the peer dies before sending anything
    snapshot = {n: t.clone() for n, t in local.items()}
    with pytest.raises(RuntimeError, match="step 0 with rank.*the old local state is intact"):
        reshard(local, plan, rank)
    assert snapshot.keys() == local.keys()
    assert all(torch.equal(snapshot[n], local[n]) for n in local)


def test_failed_peer_leaves_old_layout():
    launch(_peer_fails, 2)



def _subgroups(rank, world):
    # Two independent 2-rank groups re-shard at once, each TP2 -> PP2 on its own ranks.
    sd = llama_state()
    rules = llama_rules(HEAD_DIM)
    groups = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    group, grank = groups[rank // 2], rank % 2
    plan = plan_reshard(sd, rules, Layout(2, 1), Layout(1, 2))
    new = reshard(shard(sd, rules, Layout(2, 1), grank), plan, grank, group)
    want = shard(sd, rules, Layout(1, 2), grank)
    assert new.keys() == want.keys() and all(torch.equal(new[n], want[n]) for n in want)
    big = plan_reshard(sd, rules, Layout(4, 1), Layout(1, 4))
    with pytest.raises(ValueError, match="the process group has 2 ranks; the plan is for 4"):
        reshard(shard(sd, rules, Layout(4, 1), grank), big, grank, group)


def test_subgroups_and_group_size():
    launch(_subgroups, 4)
