"""Marconi's eviction score weighs FLOP efficiency by the node's reuse (hits), and a guarded
tuner is let out by a probe that beat it: hand-made trees whose eviction order is known, and
the tuner's bookkeeping against sums kept here."""
import numpy as np
import pytest

from flashkit.prefix_cache import HybridModelConfig, PrefixCache
from flashkit.prefix_cache.tuner import AlphaTuner

# byte costs counted in tokens (1 byte of KV per token, a state of 8), as in test_radix
CFG = HybridModelConfig(n_ssm=1, n_attn=1, n_mlp=1, d_model=8, d_state=4, dtype_bytes=1)
KV, ST = 1, 8


def _cache(alpha, H=1.0, E=1.0):
    c = PrefixCache(CFG, 1e9, "marconi", alpha=alpha)
    c.tree.kv_bytes, c.tree.state_bytes = KV, ST
    c.tree.on_first_evict = None  # keep the scales given here
    c.set_alpha(alpha, H=H, E=E)
    return c


def _leaf(c, first, n):
    """A leaf of ``n`` tokens with a state at its end, under the root."""
    _, node = c.tree.insert(np.arange(first, first + n, dtype=np.int32), {n: True})
    return node


def _victims(c, k):
    out = []
    for _ in range(k):
        alive = {id(n): n for n in c.tree.nodes()}
        assert c.tree.evict_one()
        out += [n for i, n in alive.items() if not n.alive]
    return out


def test_a_reused_old_state_outlives_a_fresh_one_off_state():
    # A (written, then hit 3 times) is older than B (written once); both 6 tokens from the root
    for alpha, first in ((0.0, "A"), (1e6, "B")):  # LRU drops A, the reuse-weighted score B
        c = _cache(alpha)
        a = _leaf(c, 100, 6)
        for _ in range(3):
            c.tree.touch(a)
        b = _leaf(c, 200, 6)
        assert (a.hits, b.hits) == (4, 1)  # one for the write, one per hit
        (v,) = _victims(c, 1)
        assert v is (a if first == "A" else b)


def test_eviction_order_equals_the_formula_with_hits_counted_here():
    H, E, alpha = 7.0, 3e4, 0.5
    c = _cache(alpha, H=H, E=E)
    rng = np.random.default_rng(1)
    leaves, hits = [], []
    for i in range(12):
        leaves.append(_leaf(c, 1000 * (i + 1), int(rng.integers(2, 30))))
        hits.append(1)
    for _ in range(40):  # hits on random leaves, counted independently of the tree
        i = int(rng.integers(0, 12))
        c.tree.touch(leaves[i])
        hits[i] += 1
    c.tree.check_invariants()

    def key(i):
        n = leaves[i]
        eff = CFG.flops_between(n.start, n.end) / (len(n.key) * KV + ST)
        return (n.last / H + alpha * hits[i] * eff / E, -n.end)
    want = sorted(range(12), key=key)
    got = _victims(c, 12)
    assert [leaves.index(v) for v in got] == want


class _Cache:
    config, alpha, requests = CFG, 0.0, 0

    def clone(self, alpha):
        c = _Cache()
        c.alpha = alpha
        return c

    def serve(self, input_tokens, output_tokens):
        return 0  # the probe misses too


def _decide(t, cache, shadow_period):
    t._period = list(shadow_period)
    return t.observe(cache, [1, 2], [3], 0)  # a miss: the real cache saves nothing


@pytest.mark.parametrize("release", [True, False])
def test_a_probe_that_beat_the_guarded_cache_lets_it_out(release):
    t = AlphaTuner(grid=(0.0, 1.0), every=1, window=None, release=release)
    t.shadows = []  # scores set by hand below: alpha 1 beats LRU by 2x
    t.lru_total, t.real_total = 100.0, 90.0  # 10% behind LRU: guarded
    cache = _Cache()
    assert _decide(t, cache, [1.0, 2.0]) == 0.0 and t.guarded
    if not release:
        assert t.probe is None  # held at LRU, nothing probed
        return
    assert t.probe.alpha == 1.0  # the shadows' candidate, probed from the guarded cache
    t._probe_sum, t._real_period = 5.0, 1.0  # it beat the real cache over the period
    assert _decide(t, cache, [1.0, 2.0]) == 1.0 and not t.guarded
    assert t.debt == pytest.approx(10.0)  # the deficit when let out: counted from here
    cache.alpha = 1.0
    t.real_total -= 0.2  # a further 0.2% of LRU's savings: under the 0.25% guard
    assert _decide(t, cache, [1.0, 2.0]) == 1.0 and not t.guarded
    t.real_total -= 0.2  # 0.4% more than when let out: guarded again
    assert _decide(t, cache, [1.0, 2.0]) == 0.0 and t.guarded
    t.real_total += 10.4  # caught up with LRU: the allowance shrinks back to nothing
    _decide(t, cache, [1.0, 1.0])
    assert t.debt == 0.0


def test_release_is_checked():
    with pytest.raises(TypeError, match="release"):
        AlphaTuner(release=1)
