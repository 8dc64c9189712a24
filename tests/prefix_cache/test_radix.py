"""The radix tree and the policies: hit semantics, admission, eviction and invariants."""
import random

import numpy as np
import pytest

from flashkit.prefix_cache import HybridModelConfig, PrefixCache, RadixTree
from flashkit.prefix_cache.tuner import AlphaTuner

# Tiny byte costs so that capacities are counted in tokens: 1 byte of KV per token, a state of 8.
CFG = HybridModelConfig(n_ssm=1, n_attn=1, n_mlp=1, d_model=8, d_state=4, dtype_bytes=1)
KV, ST = 1, 8


def tiny_cache(capacity, policy="marconi", **kw):
    c = PrefixCache(CFG, capacity, policy, **kw)
    c.tree.kv_bytes, c.tree.state_bytes = KV, ST  # count bytes in tokens and states
    return c


def test_hit_only_up_to_a_state():
    c = tiny_cache(1e9, policy="sglang")
    assert c.serve([1, 2, 3, 4], [5, 6]) == 0
    assert c.lookup([1, 2, 3, 4, 5, 6, 7]).length == 6   # state after the last decoded token
    assert c.lookup([1, 2, 3, 9, 9]).length == 0         # KV of [1,2,3] but no state there
    assert c.lookup([1, 2, 3, 4, 5, 6]).length == 0      # one token must be left to prefill


def test_speculative_insertion_checkpoints_the_branch_point():
    c = tiny_cache(1e9, policy="marconi")
    c.serve([1, 2, 3, 4], [5])
    assert c.branch_positions([1, 2, 7, 8]) == [2]       # splits the edge [1..5] at 2
    tree_nodes = c.tree.num_nodes
    c.branch_positions([1, 2, 7, 8])
    assert c.tree.num_nodes == tree_nodes                # a dry run: nothing inserted
    assert c.serve([1, 2, 7, 8], [9]) == 0
    assert c.lookup([1, 2, 42, 43]).length == 2          # purely-input reuse
    assert c.branch_positions([1, 2, 3, 0]) == [3]       # splits [3, 4, 5] at 3
    assert c.branch_positions([1, 2, 9]) == []           # leaves at a node that has a state
    assert c.serve([1, 2, 3, 4, 5, 6], [7]) == 5


def test_chunk_snapped_checkpoints():
    c = tiny_cache(1e9, policy="sglang", chunk=4)
    c.serve(list(range(1, 11)), [11, 12, 13])            # 13 tokens -> state at 12
    assert c.lookup(list(range(1, 20))).length == 12
    assert c.branch_positions([1, 2, 3, 4, 5, 6, 0]) == [4]   # split at 6, snapped to 4


def test_vllm_states_every_block_exact_block_match():
    c = tiny_cache(1e9, policy="vllm", block=4)
    c.serve(list(range(1, 11)), [11])                    # 11 tokens: states at 4 and 8
    assert c.tree.num_states == 2 and c.tree.num_tokens == 8
    assert c.lookup(list(range(1, 8)) + [0]).length == 4
    assert c.lookup(list(range(1, 12))).length == 8


def test_evicting_an_internal_node_merges_its_kv_into_the_child():
    t = RadixTree(KV, ST, 1e9)
    a = np.array([1, 2, 3, 4, 5, 6], np.int32)
    t.insert(a, {3: "s3", 6: "s6"}, kv=np.arange(100, 106))
    (top,) = t.root.children.values()
    assert (top.start, top.end, top.state) == (0, 3, "s3")
    # make the internal node the LRU candidate
    t.score = lambda n: 0 if n is top else 1
    t.rescore()
    freed = []
    t.on_evict = lambda kv, st: freed.append((kv, st))
    used = t.used_bytes
    assert t.evict_one()
    (child,) = t.root.children.values()
    assert (child.start, child.end, child.state) == (0, 6, "s6")
    assert child.kv.tolist() == list(range(100, 106))
    assert freed == [(None, "s3")] and t.used_bytes == used - ST
    t.check_invariants()


def test_eviction_never_walks_the_tree(monkeypatch):
    c = tiny_cache(1e9, policy="marconi", alpha=0.7)
    rng = np.random.default_rng(0)
    shared = rng.integers(0, 1000, 20)
    for _ in range(2000):
        c.serve(np.concatenate([shared, rng.integers(0, 1000, 5)]), rng.integers(0, 1000, 3))
    n = c.tree.num_nodes
    assert n > 2000
    monkeypatch.setattr(RadixTree, "nodes", lambda self: pytest.fail("eviction walked the tree"))
    before = c.tree.evict_visits
    for _ in range(100):
        assert c.tree.evict_one()
    # popped heap entries, stale ones included: a scan would visit ~n per eviction
    assert c.tree.evict_visits - before <= 3 * 100


def test_refcounted_entries_are_never_evicted():
    c = tiny_cache(60, policy="sglang")
    c.serve([1, 2, 3, 4, 5], [6])
    hit = c.lookup([1, 2, 3, 4, 5, 6, 7])
    c.tree.lock(hit.node)
    for s in range(10, 40):
        c.serve([s, s + 1, s + 2, s + 3], [s + 4])
    assert c.lookup([1, 2, 3, 4, 5, 6, 7]).length == 6
    c.tree.unlock(hit.node)
    for s in range(100, 130):
        c.serve([s, s + 1, s + 2, s + 3], [s + 4])
    assert c.lookup([1, 2, 3, 4, 5, 6, 7]).length == 0


def test_lru_vs_flop_efficiency():
    # Two cached entries: an old long one and a new short one. Per byte, the long one saves more
    # FLOPs (attention is quadratic, a state's bytes are amortized over more tokens). LRU evicts
    # the old one; a large alpha keeps it.
    big = HybridModelConfig(n_ssm=1, n_attn=4, n_mlp=0, d_model=8, d_state=4, dtype_bytes=1)
    def run(policy, alpha):
        c = PrefixCache(big, 0, policy, alpha=alpha)
        c.tree.kv_bytes, c.tree.state_bytes = KV, ST
        c._H, c._E = 1.0, 1.0
        c.tree.capacity = 1e9
        c.serve(list(range(1, 200)), [0])            # 200 tokens, old
        c.serve([500, 501, 502], [503])              # 4 tokens, new
        c.tree.capacity = c.tree.used_bytes - 1      # room for one of them only
        c.tree.evict_one()
        return c.lookup(list(range(1, 200)) + [0, 7]).length, c.lookup([500, 501, 502, 503, 9]).length
    assert run("sglang", None) == (0, 4)
    assert run("marconi", 1e6) == (200, 0)


def brute_hit(stored, tokens):
    best = 0
    for p in range(1, len(tokens)):
        if tuple(tokens[:p]) in stored:
            best = p
    return best


@pytest.mark.parametrize("policy", ["marconi", "sglang", "vllm"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_operations_keep_invariants(policy, seed):
    rng = random.Random(seed)
    cap = rng.choice([40, 120, 400])
    c = tiny_cache(cap, policy=policy, block=3, tuner=AlphaTuner(every=10))
    offered = set()
    locks = {}
    base = [[rng.randrange(4) for _ in range(rng.randrange(1, 12))] for _ in range(6)]
    for step in range(400):
        inp = rng.choice(base) + [rng.randrange(4) for _ in range(rng.randrange(1, 6))]
        out = [rng.randrange(4) for _ in range(rng.randrange(1, 4))]
        seq = inp + out
        for p in c.checkpoint_positions(inp, len(seq)):
            offered.add(tuple(seq[:p]))
        h = c.serve(inp, out)
        assert h < len(inp) and (h == 0 or tuple(inp[:h]) in offered)
        assert c.tree.used_bytes <= cap
        if rng.random() < 0.3:             # a live request pins its hit
            hit = c.lookup(inp + [0])
            if hit.length:
                c.tree.lock(hit.node)
                locks[hit.node] = locks.get(hit.node, 0) + 1
        if locks and rng.random() < 0.25:
            n = rng.choice(list(locks))
            c.tree.unlock(n)
            locks[n] -= 1
            if not locks[n]:
                del locks[n]
        for n in locks:                    # pinned entries are never evicted
            assert n.alive and n.state is not None
        if step % 50 == 0:
            c.tree.check_invariants(locks)
    c.tree.check_invariants(locks)
    if policy == "marconi":
        assert c.tree.evictions and c.tuned_alpha is not None


@pytest.mark.parametrize("policy", ["marconi", "vllm"])
def test_unbounded_cache_hits_equal_brute_force(policy):
    rng = random.Random(5)
    c = tiny_cache(1e12, policy=policy, block=2)
    stored = set()
    base = [[rng.randrange(3) for _ in range(rng.randrange(1, 8))] for _ in range(4)]
    for _ in range(300):
        inp = rng.choice(base) + [rng.randrange(3) for _ in range(rng.randrange(1, 5))]
        out = [rng.randrange(3) for _ in range(rng.randrange(1, 3))]
        assert c.lookup(inp).length == brute_hit(stored, inp)
        seq = inp + out
        stored.update(tuple(seq[:p]) for p in c.checkpoint_positions(inp, len(seq)))
        c.serve(inp, out)
    c.tree.check_invariants()


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="policy"):
        PrefixCache(CFG, 10, "lfu")
    with pytest.raises(ValueError, match="block"):
        PrefixCache(CFG, 10, "vllm", block=0)
    with pytest.raises(ValueError, match="capacity_bytes"):
        RadixTree(1, 1, -1)
    with pytest.raises(ValueError, match="tokens"):
        tiny_cache(10).lookup([[1, 2]])


def test_lru_drops_a_stale_internal_state_before_the_live_leaf():
    # A chat session: turn 2 extends turn 1's whole sequence. Turn 1's state is now internal
    # (its KV is on turn 2's path, but a later turn hits turn 2's state, not turn 1's): its
    # recency is when that state was last used, so LRU drops it first; its KV merges.
    c = tiny_cache(1e9, policy="sglang")
    c.serve([1, 2, 3], [4])
    c.serve([1, 2, 3, 4, 5, 6], [7])
    c.serve([50, 51], [52])                              # a newer, unrelated entry
    top = c.tree.root.children[1]
    assert top.state is not None and len(top.children) == 1
    assert c.tree.recency(top) < c.tree.recency(c.tree.root.children[50])
    assert c.tree.evict_one()
    c.tree.check_invariants()
    assert c.lookup([1, 2, 3, 4, 5, 6, 7, 8]).length == 7   # the live leaf survived
    assert c.lookup([1, 2, 3, 4, 9]).length == 0             # only the stale state went


def test_evict_until_picks_the_same_victims_as_evict_one():
    def build():
        c = tiny_cache(1e9, policy="vllm", block=2)
        rng = random.Random(7)
        base = [[rng.randrange(5) for _ in range(rng.randrange(1, 9))] for _ in range(5)]
        for _ in range(200):
            c.serve(rng.choice(base) + [rng.randrange(5) for _ in range(rng.randrange(1, 8))],
                    [rng.randrange(5) for _ in range(rng.randrange(1, 4))])
        return c
    a, b = build(), build()
    target = a.tree.used_bytes // 3
    gone_a, gone_b = [], []
    a.tree.on_evict = lambda kv, st: gone_a.append(st)
    b.tree.on_evict = lambda kv, st: gone_b.append(st)
    assert a.tree.evict_until(target)
    while b.tree.used_bytes > target:
        assert b.tree.evict_one()
    snap = lambda t: sorted((n.start, n.end, n.state is not None) for n in t.nodes())
    assert snap(a.tree) == snap(b.tree) and a.tree.evictions == b.tree.evictions
    assert len(gone_a) == len(gone_b) and a.tree.used_bytes == b.tree.used_bytes
    a.tree.check_invariants()
    assert not a.tree.evict_until(-1) and a.tree.num_nodes == 0   # ran out of candidates


def test_fixed_alpha_is_normalized_like_the_tuned_one():
    c = tiny_cache(60, policy="marconi", alpha=0.5)
    rng = np.random.default_rng(1)
    for _ in range(40):
        c.serve(rng.integers(0, 50, rng.integers(2, 12)), rng.integers(0, 50, 2))
    assert c.tree.evictions and c._H != 1.0 and c._E != 1.0   # scales set at the 1st eviction
    assert c.tuned_alpha == 0.5
    c.tree.check_invariants()
