"""``flashkit cache-sim`` and ``flashkit cache-trace``: add_parser(subparsers) registers both."""
from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_parser"]


def _cmd_trace(args) -> int:
    from .traces import TraceConfig, generate_trace, write_trace

    try:
        cfg = TraceConfig(profile=args.profile, sessions=args.sessions, max_turns=args.max_turns,
                          turns=args.turns, seed=args.seed, pool_size=args.pool_size,
                          zipf_s=args.zipf_s)
    except ValueError as e:
        print(f"flashkit cache-trace: {e}", file=sys.stderr)
        return 2
    reqs = generate_trace(cfg)
    write_trace(reqs, args.out)
    print(f"wrote {len(reqs)} requests ({sum(r['num_input_tokens'] for r in reqs)} input "
          f"tokens) to {args.out}")
    return 0


def _cmd_sim(args) -> int:
    from .costs import HybridModelConfig
    from .simulator import load_latency_table, plot_hit_rates, simulate
    from .traces import read_trace

    try:
        reqs = read_trace(args.trace)
        table = load_latency_table(args.latency_table) if args.latency_table else None
    except (OSError, ValueError) as e:
        print(f"flashkit cache-sim: {e}", file=sys.stderr)
        return 2
    sizes = args.cache_gb
    policies = args.policy or ["marconi"]
    results = []
    for p in policies:
        for gb in sizes:
            results.append(simulate(reqs, HybridModelConfig(), gb * 1e9, p, block=args.block,
                                    chunk=args.chunk, alpha=args.alpha, latency_table=table))
    for r in results:
        blk = f" B={r['block']}" if r["block"] else ""
        print(f"{r['policy']}{blk} {r['cache_gb']:g} GB: token hit {r['token_hit_rate']:.4f}, "
              f"request hit {r['request_hit_rate']:.4f}, FLOPs saved {r['flops_saved']:.3e} "
              f"({r['flops_saved_fraction']:.1%}), states {r['states_cached']}, KV tokens "
              f"{r['kv_tokens_cached']}, alpha {r['alpha']}, TTFT p5/p50/p95 "
              f"{r['ttft_p5_ms']:.1f}/{r['ttft_p50_ms']:.1f}/{r['ttft_p95_ms']:.1f} ms "
              f"[{r['seconds']:.1f} s]")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results[0] if len(results) == 1 else results, f, indent=1)
    if args.plot:
        try:
            plot_hit_rates(results, args.plot)
        except RuntimeError as e:
            print(f"flashkit cache-sim: {e}", file=sys.stderr)
            return 1
    return 0


def add_parser(subparsers) -> None:
    """Add ``cache-sim`` and ``cache-trace`` to an argparse subparsers object."""
    sim = subparsers.add_parser("cache-sim", help="simulate prefix caching for a hybrid model "
                                "on a JSONL trace")
    sim.add_argument("--trace", required=True, help="JSONL trace (Marconi's schema)")
    sim.add_argument("--cache-gb", type=float, nargs="+", required=True,
                     help="cache size(s) in GB (10^9 bytes); several sizes make a sweep")
    sim.add_argument("--policy", choices=["marconi", "sglang", "vllm"], action="append",
                     help="repeat for several (default marconi)")
    sim.add_argument("--block", type=int, default=32, help="vLLM+ checkpoint interval (32)")
    sim.add_argument("--chunk", type=int, help="snap checkpoints to multiples of this")
    sim.add_argument("--alpha", type=float, help="Marconi's alpha (default: tuned online)")
    sim.add_argument("--latency-table", help="JSON {tokens: [...], ms: [...]} for TTFT")
    sim.add_argument("--json", help="write the metrics here (a list for several runs)")
    sim.add_argument("--plot", help="PNG of token hit rate vs cache size (needs matplotlib)")
    sim.set_defaults(fn=_cmd_sim)

    tr = subparsers.add_parser("cache-trace", help="generate a seeded multi-turn JSONL trace")
    tr.add_argument("--profile", choices=["lmsys", "sharegpt", "swebench"], default="lmsys")
    tr.add_argument("--sessions", type=int, default=100)
    tr.add_argument("--max-turns", type=int, default=50)
    tr.add_argument("--turns", type=int, help="exactly this many turns per session")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--pool-size", type=int, default=32, help="system prompts in the pool")
    tr.add_argument("--zipf-s", type=float, default=1.1, help="Zipf exponent of their popularity")
    tr.add_argument("--out", required=True)
    tr.set_defaults(fn=_cmd_trace)


if __name__ == "__main__":  # python -m flashkit.prefix_cache.cli (also `flashkit cache-sim`)
    p = argparse.ArgumentParser(prog="flashkit")
    add_parser(p.add_subparsers(dest="command", required=True))
    a = p.parse_args()
    sys.exit(a.fn(a))
