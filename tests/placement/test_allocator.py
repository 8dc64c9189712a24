"""Page allocators: block bookkeeping, and a decode over allocator-placed pages equals plain
torch attention over each request's contiguous K/V."""
import math
import random

import numpy as np
import pytest
import torch

from flashkit.placement.allocator import LifetimeAwarePageAllocator, OutOfPages, PageAllocator

ALLOCATORS = [PageAllocator, LifetimeAwarePageAllocator]


def _churn(alloc, rng, steps=400, page_size=4):
    """Random admissions, growth and exits; returns {req: tokens} of the live requests."""
    live, nxt = {}, 0
    for step in range(steps):
        if rng.random() < 0.3:
            n = rng.randint(1, 30)
            try:
                alloc.allocate(nxt, -(-n // page_size), now=step, remaining=rng.uniform(1, 200))
                live[nxt] = n
            except OutOfPages:
                pass
            nxt += 1
        for r in list(live):
            live[r] += 1
            if (live[r] - 1) % page_size == 0:
                try:
                    alloc.allocate(r, 1, now=step, remaining=rng.uniform(1, 200))
                except OutOfPages:
                    alloc.free(r)
                    del live[r]
                    continue
            if rng.random() < 0.03:
                alloc.free(r)
                del live[r]
    return live


@pytest.mark.parametrize("cls", ALLOCATORS, ids=lambda c: c.__name__)
def test_pages_are_unique_and_blocks_counted(cls):
    a = cls(256, 8)
    live = _churn(a, random.Random(0))
    held = [p for r in live for p in a.pages(r)]
    assert len(held) == len(set(held)) and all(0 <= p < 256 for p in held)
    assert a.free_pages == 256 - len(held)
    used = np.bincount(np.array(held, int) // 8, minlength=32)
    assert a.used == used.tolist() and a.empty_blocks == int((used == 0).sum())
    for r in list(live):
        a.free(r)
    assert a.free_pages == 256 and a.empty_blocks == 32 and a.fragmentation() == 0.0


def test_lifetime_aware_keeps_blocks_empty():
    # two cohorts interleaved: short requests (exit at step 10) and long ones (exit at 1000);
    # a free list mixes them in every block, the lifetime-aware allocator does not
    res = {}
    for cls in ALLOCATORS:
        a = cls(64, 8)
        for r in range(32):
            remaining = 10.0 if r % 2 else 1000.0
            a.allocate(r, 2, now=0.0, remaining=remaining)
        for r in range(1, 32, 2):
            a.free(r)
        res[cls] = (a.empty_blocks, a.fragmentation())
    assert res[PageAllocator] == (0, 1.0)
    assert res[LifetimeAwarePageAllocator] == (4, 0.0)


def _plain_attention(q, k, v, scale):
    # q [H, D], k/v [T, Hk, D] -> [H, D], in float64
    h, hk = q.shape[0], k.shape[1]
    k = k.repeat_interleave(h // hk, dim=1)
    v = v.repeat_interleave(h // hk, dim=1)
    logits = torch.einsum("hd,thd->ht", q, k) * scale
    return torch.einsum("ht,thd->hd", logits.softmax(-1), v)


@pytest.mark.parametrize("cls", ALLOCATORS, ids=lambda c: c.__name__)
def test_decode_over_allocated_pages_matches_reference(cls):
    import flashkit

    page_size, hq, hk, d = 4, 4, 2, 16
    a = cls(128, 8)
    live = _churn(a, random.Random(1), steps=120, page_size=page_size)
    reqs = sorted(live)[:6]
    assert len(reqs) >= 3
    lens = [live[r] for r in reqs]
    g = torch.Generator().manual_seed(0)
    cache = torch.full((128, 2, page_size, hk, d), float("nan"), dtype=torch.float16)  # poison
    kv = {}
    for r, n in zip(reqs, lens):
        k = torch.randn(n, hk, d, generator=g).half()
        v = torch.randn(n, hk, d, generator=g).half()
        kv[r] = (k, v)
        for t in range(n):
            p = a.pages(r)[t // page_size]
            cache[p, 0, t % page_size], cache[p, 1, t % page_size] = k[t], v[t]
    indptr, indices, last = a.page_table(reqs, lens, page_size)
    q = torch.randn(len(reqs), hq, d, generator=g).half()
    w = flashkit.BatchDecodeWithPagedKVCacheWrapper(
        float_workspace_buffer=torch.empty(1 << 20, dtype=torch.uint8), kv_layout="NHD",
        backend="torch")
    w.plan(indptr=indptr, indices=indices, last_page_len=last, num_qo_heads=hq,
           num_kv_heads=hk, head_dim=d, page_size=page_size, q_data_type=torch.float16)
    out = w.run(q=q, paged_kv_cache=cache)
    for i, r in enumerate(reqs):
        k, v = kv[r]
        want = _plain_attention(q[i].double(), k.double(), v.double(), 1 / math.sqrt(d))
        # fp16 output of a float32-accumulated reference: one fp16 rounding, 2^-11 relative
        torch.testing.assert_close(out[i].double(), want, rtol=2e-3, atol=2e-3)


def test_bad_inputs():
    with pytest.raises(ValueError, match="block_pages"):
        PageAllocator(100, 16)
    with pytest.raises(ValueError, match="num_pages"):
        LifetimeAwarePageAllocator(0)
    a = LifetimeAwarePageAllocator(16, 4)
    with pytest.raises(OutOfPages):
        a.allocate("x", 17)
    assert a.free_pages == 16
    with pytest.raises(ValueError, match="remaining"):
        a.allocate("x", 1, remaining=-1.0)
    with pytest.raises(ValueError, match="holds no pages"):
        a.free("y")
    a.allocate("x", 1)
    with pytest.raises(ValueError, match="seq_lens"):
        a.page_table(["x"], [9], 4)
