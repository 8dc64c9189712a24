"""Trace generator, simulator and CLI."""
import argparse
import json

import numpy as np
import pytest

from flashkit.prefix_cache import HybridModelConfig
from flashkit.prefix_cache.cli import add_parser
from flashkit.prefix_cache.simulator import default_latency_table, plot_hit_rates, simulate
from flashkit.prefix_cache.traces import TraceConfig, generate_trace, read_trace, write_trace

KEYS = {"session_id", "turn_id", "ts", "num_input_tokens", "num_output_tokens", "input_tokens",
        "output_tokens"}


def parser():
    p = argparse.ArgumentParser(prog="flashkit")
    add_parser(p.add_subparsers(dest="command", required=True))
    return p


@pytest.mark.parametrize("profile", ["lmsys", "sharegpt", "swebench"])
def test_trace_schema_seed_and_prefix_sharing(profile, tmp_path):
    cfg = TraceConfig(profile=profile, sessions=6, seed=3)
    a, b = generate_trace(cfg), generate_trace(cfg)
    assert [r["input_tokens"].tolist() for r in a] == [r["input_tokens"].tolist() for r in b]
    assert [r["ts"] for r in a] == sorted(r["ts"] for r in a)
    write_trace(a, tmp_path / "t.jsonl")
    rows = [json.loads(line) for line in open(tmp_path / "t.jsonl")]
    assert all(set(r) == KEYS and r["num_input_tokens"] == len(r["input_tokens"]) for r in rows)
    back = read_trace(tmp_path / "t.jsonl")
    assert [r["output_tokens"].tolist() for r in back] == [r["output_tokens"].tolist() for r in a]
    sessions = {}
    for r in a:
        sessions.setdefault(r["session_id"], []).append(r)
    for turns in sessions.values():
        turns.sort(key=lambda r: r["turn_id"])
        if profile == "lmsys":
            assert len(turns) >= 10
        diverge = 0
        for prev, cur in zip(turns, turns[1:]):
            seq = np.concatenate([prev["input_tokens"], prev["output_tokens"]])
            if profile == "swebench" and cur["turn_id"] > 5:
                # one more observation collapsed: the shared prefix ends inside the previous
                # turn's sequence, a little further each turn
                n = min(len(seq), len(cur["input_tokens"]))
                same = seq[:n] == cur["input_tokens"][:n]
                m = int(np.argmin(same))
                assert not same.all() and m > diverge
                diverge = m
            else:
                assert (cur["input_tokens"][:len(seq)] == seq).all()


def test_zipf_system_prompt_popularity():
    reqs = generate_trace(TraceConfig(profile="sharegpt", sessions=400, pool_size=8, seed=1))
    first = {}
    for r in reqs:
        if r["turn_id"] == 0:
            first[r["session_id"]] = tuple(r["input_tokens"][:16].tolist())
    counts = sorted((list(first.values()).count(v) for v in set(first.values())), reverse=True)
    assert counts[0] > 2 * counts[-1] and counts[0] / 400 > 0.25   # Zipf(1.1) over 8: p1 ~ 0.36


def test_simulator_metrics_and_policies_compare():
    reqs = generate_trace(TraceConfig(profile="lmsys", sessions=30, seed=0))
    cfg = HybridModelConfig()
    res = {p: simulate(reqs, cfg, 10e9, p) for p in ("marconi", "sglang", "vllm")}
    for r in res.values():
        assert 0 <= r["token_hit_rate"] <= 1 and 0 <= r["request_hit_rate"] <= 1
        assert r["ttft_p5_ms"] <= r["ttft_p50_ms"] <= r["ttft_p95_ms"]
        assert r["cache_bytes_used"] <= 10e9
    assert res["marconi"]["token_hit_rate"] > 2 * res["vllm"]["token_hit_rate"]
    # unbounded cache: every usable prefix hits, hit tokens can't exceed the inputs
    big = simulate(reqs, cfg, 1e15, "sglang")
    assert big["evictions"] == 0 and big["hit_tokens"] <= big["input_tokens"]
    assert big["token_hit_rate"] >= res["sglang"]["token_hit_rate"]
    none = simulate(reqs, cfg, 0, "marconi")
    assert none["hit_tokens"] == 0 and none["flops_saved"] == 0
    t = default_latency_table(cfg)
    assert none["ttft_p95_ms"] <= np.interp(max(r["num_input_tokens"] for r in reqs),
                                            t["tokens"], t["ms"])


def test_chunk_snapping_never_hits_more_than_exact():
    reqs = generate_trace(TraceConfig(profile="sharegpt", sessions=20, seed=2))
    exact = simulate(reqs, capacity_bytes=1e15, policy="sglang")
    snapped = simulate(reqs, capacity_bytes=1e15, policy="sglang", chunk=256)
    assert snapped["hit_tokens"] < exact["hit_tokens"]


def test_cli_trace_then_sim_json(tmp_path, capsys):
    p = parser()
    trace = tmp_path / "t.jsonl"
    args = p.parse_args(["cache-trace", "--profile", "sharegpt", "--sessions", "8", "--seed",
                         "1", "--out", str(trace)])
    assert args.fn(args) == 0
    out = tmp_path / "m.json"
    args = p.parse_args(["cache-sim", "--trace", str(trace), "--cache-gb", "5", "--policy",
                         "vllm", "--block", "32", "--json", str(out)])
    assert args.fn(args) == 0
    m = json.load(open(out))
    for k in ("token_hit_rate", "request_hit_rate", "flops_saved", "ttft_p50_ms", "ttft_p95_ms"):
        assert isinstance(m[k], float)
    assert m["policy"] == "vllm" and m["block"] == 32
    assert m == {**m, **simulate(read_trace(trace), capacity_bytes=5e9, policy="vllm"),
                 "seconds": m["seconds"]}
    assert "token hit" in capsys.readouterr().out


def test_cli_errors(tmp_path, capsys):
    p = parser()
    args = p.parse_args(["cache-sim", "--trace", str(tmp_path / "nope"), "--cache-gb", "1"])
    assert args.fn(args) == 2
    assert "nope" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        p.parse_args(["cache-sim", "--trace", "x", "--cache-gb", "1", "--policy", "lfu"])


def test_plot_or_clear_message(tmp_path):
    reqs = generate_trace(TraceConfig(profile="sharegpt", sessions=5, seed=0))
    res = [simulate(reqs, capacity_bytes=gb * 1e9, policy=p)
           for p in ("sglang", "vllm") for gb in (1, 2)]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="matplotlib"):
            plot_hit_rates(res, tmp_path / "p.png")
        return
    plot_hit_rates(res, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 0


def test_plot_alpha_over_the_trace_from_the_cli(tmp_path, capsys):
    reqs = generate_trace(TraceConfig(profile="sharegpt", sessions=30, seed=5))
    write_trace(reqs, tmp_path / "t.jsonl")
    p = parser()
    args = p.parse_args(["cache-sim", "--trace", str(tmp_path / "t.jsonl"), "--cache-gb", "3",
                         "--policy", "marconi", "--policy", "sglang", "--plot-alpha",
                         str(tmp_path / "a.png"), "--json", str(tmp_path / "m.json")])
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert args.fn(args) == 1 and "matplotlib" in capsys.readouterr().err
        return
    assert args.fn(args) == 0
    assert "marconi vs sglang+ 3 GB: FLOPs saved" in capsys.readouterr().out
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m = json.load(open(tmp_path / "m.json"))
    assert len(m[0]["alpha_history"]) > 1 and m[1]["alpha_history"] == []
