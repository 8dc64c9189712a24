import random

import pytest
import torch

from flashkit.reshard.kv_tier import KVTier, PageAllocator


def test_allocator_coalesces_against_a_page_set():
    rng = random.Random(0)
    alloc, free, held = PageAllocator(64), set(range(64)), []
    for _ in range(400):
        if held and (rng.random() < 0.5 or len(free) < 8):
            pages = held.pop(rng.randrange(len(held)))
            alloc.free(pages)
            free |= set(pages)
        else:
            n = rng.randint(1, 8)
            pages = alloc.alloc(n)
            assert len(pages) == n and set(pages) <= free
            free -= set(pages)
            held.append(pages)
        # The runs are exactly the maximal runs of the free set.
        runs, pages = [], sorted(free)
        for p in pages:
            if runs and runs[-1][1] == p:
                runs[-1][1] = p + 1
            else:
                runs.append([p, p + 1])
        assert alloc.runs == [tuple(r) for r in runs]
    for pages in held:
        alloc.free(pages)
    assert alloc.runs == [(0, 64)]


def test_allocator_prefers_one_run_and_rejects_bad_frees():
    alloc = PageAllocator(10)
    a, b, c = alloc.alloc(3), alloc.alloc(3), alloc.alloc(3)
    alloc.free(a)
    alloc.free(c)
    assert alloc.alloc(4) == [6, 7, 8, 9]  # the run that fits, not the first one
    with pytest.raises(MemoryError, match="4 pages requested, 3"):
        alloc.alloc(4)
    with pytest.raises(ValueError, match="already free"):
        alloc.free([0])
    with pytest.raises(ValueError, match="not in"):
        alloc.free([10])
    del b


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "thread"])
def test_tier_reshards_heads(use_async):
    # A TP2 writer (two head halves) then a TP4 reader (four head quarters) see the same KV.
    H, ps, D, layers = 4, 4, 8, 2
    tier = KVTier(8, layers, H, ps, D, shared=False)
    full = torch.randn(3, 2, H, ps, D).half()  # three pages of one layer, HND
    pages = tier.allocator.alloc(3)
    for t in range(2):
        part = full[:, :, 2 * t:2 * t + 2].contiguous()
        args = (part, [0, 1, 2], pages, 1, (2 * t, 2 * t + 2))
        (tier.write_async(*args).wait() if use_async else tier.write(*args))
    for t in range(4):
        cache = torch.full((5, 2, 1, ps, D), float("nan")).half()
        args = (cache, [4, 0, 2], pages, 1, (t, t + 1))
        (tier.read_async(*args).wait() if use_async else tier.read(*args))
        assert torch.equal(cache[[4, 0, 2]], full[:, :, t:t + 1])
        assert torch.isnan(cache[[1, 3]]).all()
    assert (tier.pages[:, 0] == 0).all()  # layer 0 untouched


def test_tier_rejects_bad_caches():
    tier = KVTier(4, 2, 4, 4, 8, shared=False)
    with pytest.raises(ValueError, match="cache must be HND"):
        tier.write(torch.zeros(2, 2, 4, 8, 4).half(), [0], [0], 0, (0, 4))
    with pytest.raises(ValueError, match="heads must be"):
        tier.read_async(torch.zeros(2, 2, 4, 4, 8).half(), [0], [0], 0, (2, 6))
    with pytest.raises(ValueError, match="layer must be"):
        tier.read(torch.zeros(2, 2, 4, 4, 8).half(), [0], [0], 2, (0, 4))
    with pytest.raises(ValueError, match="num_pages"):
        KVTier(0, 2, 4, 4, 8)


@pytest.mark.gpu
def test_tier_async_on_a_side_stream():
    H, ps, D = 8, 16, 64
    tier = KVTier(16, 2, H, ps, D, shared=False, pin=True)
    pages = tier.allocator.alloc(5)
    full = torch.randn(5, 2, H, ps, D, device="cuda").half()
    for t in range(2):
        tier.write_async(full[:, :, 4 * t:4 * t + 4].contiguous(), list(range(5)), pages, 0,
                         (4 * t, 4 * t + 4)).wait()
    torch.cuda.synchronize()
    cache = torch.zeros(8, 2, 2, ps, D, device="cuda").half()
    tier.read_async(cache, [7, 6, 5, 4, 3], pages, 0, (2, 4)).wait()
    assert torch.equal(cache[[7, 6, 5, 4, 3]], full[:, :, 2:4])
