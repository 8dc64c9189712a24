"""fused_topk and moe_align_block_size against the loops of ops/moe/reference.py."""
import pytest
import torch

import flashkit.ops.moe as moe
from flashkit.ops.moe import naive_fused_topk, naive_moe_align_block_size
from tests.helpers import device, kernel_backends

# (E, topk, groups, topk_group): Mixtral, Qwen3-MoE, DeepSeek-V3-like (scaled down), top-1.
ROUTERS = [(8, 2, None, None), (64, 8, None, None), (128, 8, None, None), (8, 1, None, None),
           (64, 6, 8, 3), (16, 4, 4, 2)]


def _ids(r):
    return "e{}_k{}".format(*r[:2]) + (f"_g{r[2]}tg{r[3]}" if r[2] else "")


@pytest.mark.parametrize("backend", kernel_backends())
@pytest.mark.parametrize("scoring,renorm,bias", [("softmax", True, False), ("softmax", False, False),
                                                 ("sigmoid", True, True), ("sigmoid", False, True)],
                         ids=["softmax_renorm", "softmax", "sigmoid_bias_renorm", "sigmoid_bias"])
@pytest.mark.parametrize("router", ROUTERS, ids=_ids)
def test_fused_topk(router, scoring, renorm, bias, backend):
    num_experts, topk, groups, topk_group = router
    g = torch.Generator().manual_seed(num_experts * 31 + topk)
    logits = (torch.randn(13, num_experts, generator=g) * 2).to(device())
    corr = (torch.randn(num_experts, generator=g) * 0.3).to(device()) if bias else None
    w, ids = moe.fused_topk(logits, topk, renorm, scoring, corr, groups, topk_group,
                            backend=backend)
    ref_w, ref_ids = naive_fused_topk(logits.double(), topk, renorm, scoring,
                                      None if corr is None else corr.double(), groups, topk_group)
    assert w.dtype == torch.float32 and ids.dtype == torch.int32
    assert torch.equal(ids.cpu(), ref_ids.cpu())
    torch.testing.assert_close(w.double().cpu(), ref_w.cpu(), atol=1e-6, rtol=1e-5)
    if groups:  # every chosen expert lies in one of the topk_group kept groups
        for row in (ids // (num_experts // groups)).cpu().tolist():
            assert len(set(row)) <= topk_group


def test_grouped_routing_drops_groups():
    """A group whose experts are all weak is never chosen, even for its single best expert."""
    logits = torch.full((1, 8), -5.0)
    logits[0, 0] = 3.0        # group 0: one strong expert, the rest weak
    logits[0, 4:] = 2.0       # group 1: uniformly good
    for backend in kernel_backends():
        _, ids = moe.fused_topk(logits.to(device()), 2, num_expert_groups=2, topk_group=1,
                                backend=backend)
        assert set(ids.cpu().flatten().tolist()) == {0, 1} or set(
            ids.cpu().flatten().tolist()) <= {4, 5, 6, 7}
    # DeepSeek-V3 group score (sum of the best two): group 1 (2+2) beats group 0 (3-5).
    w, ids = moe.fused_topk(logits, 2, scoring="sigmoid", correction_bias=torch.zeros(8),
                            num_expert_groups=2, topk_group=1)
    assert set(ids.flatten().tolist()) <= {4, 5, 6, 7}


def _routing(tokens, num_experts, topk, seed, empty=()):
    """Distinct random experts per token, never one of ``empty``."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(tokens, num_experts, generator=g)
    scores[:, list(empty)] = -1.0
    return scores.topk(topk, dim=-1).indices.to(torch.int32)


@pytest.mark.parametrize("block_size", [1, 16, 64])
@pytest.mark.parametrize("tokens,num_experts,topk", [(0, 8, 2), (1, 8, 1), (7, 8, 2), (33, 64, 8),
                                                    (100, 128, 8)])
def test_moe_align_block_size(tokens, num_experts, topk, block_size):
    ids = _routing(tokens, num_experts, topk, seed=tokens + block_size, empty=(3,)).to(device())
    got = moe.moe_align_block_size(ids, block_size, num_experts)
    want = naive_moe_align_block_size(ids, block_size, num_experts)
    for a, b, name in zip(got, want, ("sorted_token_ids", "expert_ids", "num_tokens_post_padded")):
        assert a.dtype == torch.int32, name
        assert torch.equal(a.cpu(), b.cpu()), name
    sorted_ids, expert_ids, post = (t.cpu() for t in got)
    numel = tokens * topk
    assert sorted_ids.numel() == numel + num_experts * (block_size - 1)
    assert int(post) % block_size == 0
    real = sorted_ids[sorted_ids < numel]
    assert torch.equal(real.sort().values, torch.arange(numel, dtype=torch.int32))
    assert 3 not in expert_ids.tolist()  # the expert without tokens gets no block


def test_moe_align_int64_ids_and_compile():
    ids = _routing(9, 8, 2, seed=1).long()
    want = naive_moe_align_block_size(ids, 16, 8)
    f = torch.compile(lambda t: moe.moe_align_block_size(t, 16, 8), fullgraph=True,
                      backend="aot_eager")
    for a, b in zip(f(ids), want):
        assert torch.equal(a, b)


def test_routing_bad_inputs():
    logits = torch.randn(4, 8)
    cases = [
        (lambda: moe.fused_topk(logits.int(), 2), "gating_logits must be float16/bfloat16/float32"),
        (lambda: moe.fused_topk(logits[0], 2), "gating_logits must be 2-D"),
        (lambda: moe.fused_topk(logits, 9), "topk must be <= 8"),
        (lambda: moe.fused_topk(logits, 0), "topk must be a positive int"),
        (lambda: moe.fused_topk(logits, 2, scoring="relu"), "scoring must be one of"),
        (lambda: moe.fused_topk(logits, 2, correction_bias=torch.zeros(7)),
         "correction_bias must have shape"),
        (lambda: moe.fused_topk(logits, 2, num_expert_groups=3, topk_group=1),
         r"num_expert_groups \(3\) must divide"),
        (lambda: moe.fused_topk(logits, 2, num_expert_groups=4), "must be given together"),
        (lambda: moe.fused_topk(logits, 2, num_expert_groups=4, topk_group=5),
         "topk_group must be <= 4"),
        (lambda: moe.fused_topk(logits, 5, num_expert_groups=4, topk_group=2),
         r"topk \(5\) must be <= topk_group"),
        (lambda: moe.fused_topk(logits, 2, backend="fast"), "backend must be one of"),
        (lambda: moe.moe_align_block_size(torch.zeros(4, 2), 16, 8), "topk_ids must be int32/int64"),
        (lambda: moe.moe_align_block_size(torch.full((4, 2), 8), 16, 8),
         r"topk_ids must be in \[0, 8\)"),
        (lambda: moe.moe_align_block_size(torch.full((4, 2), -1), 16, 8),
         r"topk_ids must be in \[0, 8\)"),
        (lambda: moe.moe_align_block_size(torch.zeros(4, 2, dtype=torch.int32), 0, 8),
         r"block_size must be in \[1, "),
    ]
    for call, msg in cases:
        with pytest.raises(ValueError, match=msg):
            call()


def test_topk_opcheck():
    logits = torch.randn(5, 16)
    torch.library.opcheck(torch.ops.flashkit.fused_topk.default,
                          (logits, 2, True, "softmax", None, 1, 1, "torch"))
    torch.library.opcheck(torch.ops.flashkit.moe_align_block_size.default,
                          (_routing(5, 16, 2, seed=0), 16, 16))
