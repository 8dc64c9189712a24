"""LLM domain: the Azure LLM trace CSV (bad rows name the line), KV growth with preemption,
and page blocks by allocator."""
import numpy as np
import pytest

from flashkit.placement.kv_blocks import simulate_kv_blocks
from flashkit.placement.lifetimes import LifetimeModel, Predictor
from flashkit.placement.llm_sim import simulate_llm
from flashkit.placement.llm_trace import generate_llm_trace, read_llm_trace, write_llm_trace


def _csv(tmp_path, text):
    p = tmp_path / "t.csv"
    p.write_text(text)
    return str(p)


def test_round_trip_and_azure_timestamps(tmp_path):
    tr = generate_llm_trace(500, rate=10, seed=2)
    write_llm_trace(tr, tmp_path / "g.csv")
    back = read_llm_trace(str(tmp_path / "g.csv"))
    np.testing.assert_allclose(back.arrival, tr.arrival, atol=1e-5)
    np.testing.assert_array_equal(back.generated, tr.generated)
    p = _csv(tmp_path, "TIMESTAMP,ContextTokens,GeneratedTokens\n"
             "2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:50.9951690,396,109\n")
    t = read_llm_trace(p)
    assert t.arrival[1] == pytest.approx(4.314579, abs=1e-5) and t.context.tolist() == [374, 396]


@pytest.mark.parametrize("body, match", [
    ("1.0,10,5\n0.5,10,5\n", "line 3: timestamps not sorted"),
    ("1.0,10,5\n2.0,10,-3\n", "line 3: negative token count"),
    ("1.0,10,5\n2.0,,5\n", "line 3: missing field"),
    ("1.0,10,5\nyesterday,10,5\n", "line 3: TIMESTAMP"),
    ("1.0,ten,5\n", "line 2: ContextTokens"),
])
def test_bad_rows(tmp_path, body, match):
    with pytest.raises(ValueError, match=match):
        read_llm_trace(_csv(tmp_path, "TIMESTAMP,ContextTokens,GeneratedTokens\n" + body))


def test_bad_header_and_oversized_request(tmp_path):
    with pytest.raises(ValueError, match="line 1: header lacks column.*GeneratedTokens"):
        read_llm_trace(_csv(tmp_path, "TIMESTAMP,ContextTokens\n1,2\n"))
    tr = read_llm_trace(_csv(tmp_path, "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                                       "0,10,5\n1,900,200\n"))
    with pytest.raises(ValueError, match="trace line 3: .*larger than an instance"):
        simulate_llm(tr, "best-fit", kv_tokens=1000)


@pytest.mark.parametrize("backend", ["python", "auto"])
def test_kv_growth_conserves_tokens_and_preempts(backend):
    # 4 instances with room for ~6 requests each at 2,000 tokens: KV fills and preempts
    tr = generate_llm_trace(3000, rate=200, seed=1)
    tr.context[:] = np.minimum(tr.context, 3000)
    for policy in ("best-fit", "lava"):
        r = simulate_llm(tr, policy, n_instances=4, kv_tokens=16_384, max_batch=64,
                         kv_block_requests=300, backend=backend)
        assert r["preemptions"] > 0
        want = tr.generated.sum() / r["makespan_s"]
        assert r["tokens_per_s"] == pytest.approx(want)          # every request finished
        assert 0 <= r["kv_empty_blocks_mean"] <= 1 and 0 <= r["kv_fragmentation"] <= 1


def test_kv_blocks_lifetime_aware_empties_more_blocks():
    rng = np.random.default_rng(0)
    n = 600
    arrive = np.cumsum(rng.exponential(4.0, n))
    ctx = rng.integers(16, 200, n)
    gen = np.where(rng.uniform(size=n) < 0.2, 2000, 20)        # two cohorts, known apart
    cls = (gen > 100).astype(np.int64)
    model = LifetimeModel(gen.astype(float), cls)
    pred = Predictor(model, "repredict")
    pred.bind(cls, arrive, arrive + gen)
    plain = simulate_kv_blocks(arrive, ctx, gen, None, num_pages=8192)
    aware = simulate_kv_blocks(arrive, ctx, gen, pred, num_pages=8192)
    assert aware["kv_empty_blocks_mean"] > plain["kv_empty_blocks_mean"] + 0.05
    assert aware["kv_fragmentation"] < plain["kv_fragmentation"]


def test_bad_inputs():
    with pytest.raises(ValueError, match="arrive"):
        simulate_kv_blocks([2.0, 1.0], [1, 1], [1, 1], None, num_pages=16)
    with pytest.raises(ValueError, match="context"):
        simulate_kv_blocks([1.0, 2.0], [1], [1, 1], None, num_pages=16)
    with pytest.raises(TypeError, match="trace"):
        write_llm_trace("trace", "x.csv")
    with pytest.raises(ValueError, match="rate"):
        generate_llm_trace(10, rate=0)
