"""Bad inputs to the prefix cache, its engine and its CLI: refused with an error that names the
argument (or the file and line), never a silent wrong answer."""
import argparse
import json
import math

import numpy as np
import pytest
import torch

from flashkit.prefix_cache import HybridModelConfig, PrefixCache, RadixTree
from flashkit.prefix_cache.cli import add_parser
from flashkit.prefix_cache.engine import Engine, TinyHybrid
from flashkit.prefix_cache.traces import read_trace

CFG = HybridModelConfig(n_ssm=1, n_attn=1, n_mlp=1, d_model=8, d_state=4, dtype_bytes=1)


@pytest.fixture(scope="module")
def model():
    return TinyHybrid(layers="sasa", seed=0)


@pytest.mark.parametrize("capacity", [math.nan, math.inf, -1.0, "10"])
def test_capacity_must_be_finite_and_non_negative(capacity):
    with pytest.raises((ValueError, TypeError), match="capacity_bytes"):
        PrefixCache(CFG, capacity)
    with pytest.raises((ValueError, TypeError), match="capacity_bytes"):
        RadixTree(1, 8, capacity)


@pytest.mark.parametrize("alpha", [math.nan, math.inf, -0.5])
def test_alpha_must_be_finite_and_non_negative(alpha):
    with pytest.raises(ValueError, match="alpha"):
        PrefixCache(CFG, 1e9, "marconi", alpha=alpha)


def test_token_ids_above_int32_are_refused_not_wrapped():
    c = PrefixCache(CFG, 1e9, "sglang")
    c.serve([5, 6, 7, 8], [9])
    # 2^32 + 5 wraps to 5 in int32: without the check this was a false hit on [5, 6, 7, 8]
    with pytest.raises(ValueError, match=r"input_tokens\[0\] = 4294967301"):
        c.lookup([2**32 + 5, 6, 7, 8, 9, 1])
    with pytest.raises(ValueError, match="output_tokens"):
        c.serve([1, 2], [-3])
    with pytest.raises(TypeError, match="input_tokens"):
        c.serve([1.5, 2.0], [3])
    assert c.lookup(np.array([5, 6, 7, 8, 9, 1], np.int64)).length == 5  # in range: kept


def test_finish_twice_raises_and_later_hits_stay_exact(model):
    engine = Engine(model, 1e12, num_slots=200)
    req, _ = engine.start(list(range(1, 12)), [3])
    engine.step(req)
    engine.finish(req)
    free = list(engine.free_slots)
    with pytest.raises(RuntimeError, match="twice"):
        engine.finish(req)
    with pytest.raises(RuntimeError, match="finished"):
        engine.step(req)
    assert engine.free_slots == free  # the tree's slots were not freed a second time
    seq = list(range(1, 12)) + [3, 7, 8]
    req2, first = engine.start(seq, [])
    assert req2.hit == 12 and not torch.isnan(first).any()
    torch.testing.assert_close(first, model.logits_from_scratch(seq)[-1], atol=2e-3, rtol=1e-3)


def _held_bytes(engine):
    """Bytes the tree's entries occupy in memory: KV slots of the pool and state tensors."""
    per_slot = 2 * engine.pool_k[:, 0].numel() * engine.pool_k.element_size()
    total = 0
    for n in engine.cache.tree.nodes():
        total += len(n.kv) * per_slot
        if n.state is not None:
            total += sum(s.numel() * s.element_size() + c.numel() * c.element_size()
                         for s, c in n.state)
    return total


def test_bf16_engine_counts_the_bytes_it_holds():
    m = TinyHybrid(layers="sasa", seed=1, dtype=torch.bfloat16)
    cap = 120 * m.config.kv_bytes_per_token + 3 * m.config.state_bytes
    engine = Engine(m, cap, num_slots=2000, policy="sglang")
    rng = np.random.default_rng(0)
    seq = rng.integers(0, 64, 30).tolist()
    for turn in range(6):
        inp = seq + rng.integers(0, 64, 12).tolist()
        req, _ = engine.start(inp, [1, 2])
        engine.step(req), engine.step(req)
        engine.finish(req)
        seq = req.seq.tolist() if turn % 2 else rng.integers(0, 64, 30).tolist()
        tree = engine.cache.tree
        assert _held_bytes(engine) == tree.used_bytes <= cap
    assert tree.num_states > 0 and tree.evictions > 0


def test_engine_start_names_bad_arguments(model):
    engine = Engine(model, 1e9, num_slots=100)
    with pytest.raises(ValueError, match="input_tokens must hold at least one"):
        engine.start([], [1])
    with pytest.raises(ValueError, match=r"output_tokens\[1\] = 64 is outside"):
        engine.start([1, 2], [3, 64])
    with pytest.raises(ValueError, match="input_tokens"):
        engine.start([[1, 2], [3, 4]], [])
    assert len(engine.free_slots) == 100


def test_pool_full_of_evictable_kv_evicts_instead_of_failing(model):
    # 40 slots, an unbounded cache: the third 17-token request needs slots the tree holds
    engine = Engine(model, 1e12, num_slots=40, policy="sglang")
    rng = np.random.default_rng(2)
    for _ in range(4):
        inp = rng.integers(0, 64, 15).tolist()
        req, first = engine.start(inp, [4, 5])
        got = [first, engine.step(req), engine.step(req)]
        engine.finish(req)
        torch.testing.assert_close(torch.stack(got), model.logits_from_scratch(req.seq)[14:],
                                   atol=2e-3, rtol=1e-3)
    assert engine.cache.tree.evictions > 0
    assert len(engine.free_slots) == 40 - engine.cache.tree.num_tokens
    big = Engine(model, 1e12, num_slots=10)  # nothing cached to evict: still a clear error
    with pytest.raises(RuntimeError, match="KV pool exhausted"):
        big.start(list(range(20)), [1])


# -- traces ------------------------------------------------------------------------------------
GOOD = {"session_id": 0, "turn_id": 0, "ts": 0.5, "num_input_tokens": 3, "num_output_tokens": 1,
        "input_tokens": [1, 2, 3], "output_tokens": [4]}


def line(**kw):
    return json.dumps({**GOOD, **kw}).encode()


BAD_LINES = {
    "array": (b"[1, 2, 3]", "JSON object per line, got list"),
    "null": (b"null", "got null"),
    "id >= 2^31": (line(input_tokens=[1, 2**31, 3]), r"input_tokens\[1\] = 2147483648"),
    "negative id": (line(output_tokens=[-1]), r"output_tokens\[0\] = -1"),
    "string ts": (line(ts="12"), "ts must be a finite number"),
    "nan ts": (line(ts=float("nan")), "ts must be a finite number"),
    "nested lists": (line(input_tokens=[[1, 2], [3, 4]], num_input_tokens=2), "1-D"),
    "ragged lists": (line(input_tokens=[[1], [2, 3]], num_input_tokens=2), "input_tokens"),
    "null id": (line(input_tokens=[1, None, 3]), "integer token ids"),
    "bool id": (line(input_tokens=[1, True, 3]), "integer token ids, got True"),
    "float id": (line(input_tokens=[1, 2.5, 3]), "integer token ids"),
    "null list": (line(output_tokens=None), "output_tokens must be a list"),
    "negative count": (line(num_output_tokens=-2), "num_output_tokens must be a non-negative"),
    "inconsistent count": (line(num_input_tokens=7), "num_input_tokens = 7 but"),
    "empty input": (line(input_tokens=[], num_input_tokens=0), "input_tokens is empty"),
    "missing field": (json.dumps({"session_id": 0}).encode(), "missing field"),
    "bad turn": (line(turn_id=-1), "turn_id"),
    "non-UTF-8": (line()[:-2] + b"\xff\xfe}", "not UTF-8"),
    "duplicate": (line(), "repeats line 1"),
}


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_malformed_trace_line_names_file_and_line(case, tmp_path, capsys):
    bad, msg = BAD_LINES[case]
    path = tmp_path / "t.jsonl"
    path.write_bytes(line() + b"\n\n" + bad + b"\n")   # the bad one is line 3
    with pytest.raises(ValueError, match=msg) as e:
        read_trace(path)
    assert f"{path}:3:" in str(e.value)
    p = parser()
    args = p.parse_args(["cache-sim", "--trace", str(path), "--cache-gb", "1"])
    assert args.fn(args) == 2
    err = capsys.readouterr().err
    assert f"{path}:3:" in err and "Traceback" not in err and err.count("\n") == 1


def test_truncated_last_line_and_empty_trace(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(line() + b"\n" + line(turn_id=1)[:-9])
    with pytest.raises(ValueError, match=r"t.jsonl:2: not a JSON object .*truncated"):
        read_trace(path)
    path.write_bytes(b"\n \n")
    with pytest.raises(ValueError, match="no requests"):
        read_trace(path)


def test_string_session_ids_and_ts_order(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(line(session_id="b", ts=2) + b"\n" + line(session_id="a", ts=1) + b"\n")
    reqs = read_trace(path)
    assert [r["session_id"] for r in reqs] == ["a", "b"]
    assert reqs[0]["input_tokens"].dtype == np.int32


# -- CLI arguments -----------------------------------------------------------------------------
def parser():
    p = argparse.ArgumentParser(prog="flashkit")
    add_parser(p.add_subparsers(dest="command", required=True))
    return p


@pytest.mark.parametrize("argv,msg", [
    (["cache-sim", "--cache-gb", "-1"], "--cache-gb: must be finite and >= 0"),
    (["cache-sim", "--cache-gb", "nan"], "--cache-gb: must be finite"),
    (["cache-sim", "--cache-gb", "1", "--alpha", "nan"], "--alpha: must be finite"),
    (["cache-sim", "--cache-gb", "1", "--block", "0"], "--block: must be finite and >= 1"),
    (["cache-sim", "--cache-gb", "1", "--chunk", "0"], "--chunk: must be finite and >= 1"),
    (["cache-sim", "--cache-gb", "1", "--block", "x"], "--block: expected an int"),
    (["cache-sim", "--cache-gb", "1", "--json", "/no/such/folder/m.json"], "--json: cannot write"),
    (["cache-sim", "--cache-gb", "1", "--json", "/tmp"], "--json: cannot write"),
    (["cache-trace", "--out", "t.jsonl", "--zipf-s", "nan"], "--zipf-s: must be finite"),
    (["cache-trace", "--out", "t.jsonl", "--seed", "-1"], "--seed: must be finite and >= 0"),
    (["cache-trace", "--out", "t.jsonl", "--sessions", "0"], "--sessions: must be"),
    (["cache-trace", "--out", "/no/such/folder/t.jsonl"], "--out: cannot write"),
])
def test_bad_cli_arguments_exit_2_with_one_message(argv, msg, capsys):
    if argv[0] == "cache-sim":
        argv = argv[:1] + ["--trace", "t.jsonl"] + argv[1:]
    with pytest.raises(SystemExit) as e:
        parser().parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err
