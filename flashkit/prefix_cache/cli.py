"""``flashkit cache-sim``, ``cache-trace`` and ``cache-latency``: add_parser(subparsers) registers
them.

Bad arguments are refused by argparse (a one-line message and exit status 2) before anything
runs; an unreadable or malformed trace and an unwritable output give one line naming the file
(and the line) and exit status 2."""
from __future__ import annotations

import argparse
import math
import os
import sys

__all__ = ["add_parser"]


def _number(kind, low, strict=False):
    """An argparse type: ``kind`` (int or float), finite, >= low (> low when strict)."""
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an int' if kind is int else 'a number'}"
                                             f", got {text!r}") from None
        if not math.isfinite(v) or v < low or (strict and v == low):
            raise argparse.ArgumentTypeError(f"must be finite and {'>' if strict else '>='} "
                                             f"{low:g}, got {text!r}")
        return v
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _out_path(text):
    """An argparse type for a file to write: its folder must exist and it must not be one."""
    folder = os.path.dirname(os.path.abspath(text))
    if os.path.isdir(text) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text!r} (a folder, or its folder is "
                                         "missing or read-only)")
    return text


def _fail(cmd, e) -> int:
    print(f"flashkit {cmd}: {e}", file=sys.stderr)
    return 2


def _cmd_trace(args) -> int:
    from .traces import TraceConfig, generate_trace, write_trace

    try:
        cfg = TraceConfig(profile=args.profile, sessions=args.sessions, max_turns=args.max_turns,
                          turns=args.turns, seed=args.seed, pool_size=args.pool_size,
                          zipf_s=args.zipf_s)
        reqs = generate_trace(cfg)
        write_trace(reqs, args.out)
    except (OSError, ValueError) as e:
        return _fail("cache-trace", e)
    print(f"wrote {len(reqs)} requests ({sum(r['num_input_tokens'] for r in reqs)} input "
          f"tokens) to {args.out}")
    return 0


def _cmd_sim(args) -> int:
    import json

    from .costs import HybridModelConfig
    from .simulator import load_latency_table, plot_alpha, plot_hit_rates, simulate
    from .traces import read_trace

    try:
        reqs = read_trace(args.trace)
        table = load_latency_table(args.latency_table) if args.latency_table else None
    except (OSError, ValueError) as e:
        return _fail("cache-sim", e)
    policies = args.policy or ["marconi"]
    results = []
    for p in policies:
        for gb in args.cache_gb:
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
    base = {r["cache_gb"]: r for r in results if r["policy"] == "sglang"}
    for r in results:
        b = base.get(r["cache_gb"])
        if r["policy"] == "marconi" and b is not None:
            gain = r["flops_saved"] / b["flops_saved"] - 1 if b["flops_saved"] else 0.0
            print(f"marconi vs sglang+ {r['cache_gb']:g} GB: FLOPs saved {gain:+.2%}, token hit "
                  f"{100 * (r['token_hit_rate'] - b['token_hit_rate']):+.2f} pt, request hit "
                  f"{100 * (r['request_hit_rate'] - b['request_hit_rate']):+.2f} pt")
    try:
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results[0] if len(results) == 1 else results, f, indent=1)
        if args.plot:
            plot_hit_rates(results, args.plot)
        if args.plot_alpha:
            plot_alpha(results, args.plot_alpha)
    except OSError as e:
        return _fail("cache-sim", e)
    except RuntimeError as e:  # no matplotlib
        print(f"flashkit cache-sim: {e}", file=sys.stderr)
        return 1
    return 0


def _cmd_latency(args) -> int:
    import json

    from .latency import latency_tokens, measure_latency_table

    try:
        tokens = latency_tokens(args.max_tokens) if args.max_tokens else None
        table = measure_latency_table(tokens=tokens, device=args.device, backend=args.backend,
                                      rep_ms=args.rep_ms)
        with open(args.out, "w") as f:
            json.dump(table, f, indent=1)
    except (OSError, ValueError) as e:
        return _fail("cache-latency", e)
    for n, ms in zip(table["tokens"][1:], table["ms"][1:]):
        print(f"{n:>7} tokens: {ms:10.2f} ms")
    print(f"wrote {args.out} ({table['source']})")
    return 0


def add_parser(subparsers) -> None:
    """Add ``cache-sim`` and ``cache-trace`` to an argparse subparsers object."""
    gb, pos_int, nonneg_int = _number(float, 0), _number(int, 1), _number(int, 0)
    sim = subparsers.add_parser("cache-sim", help="simulate prefix caching for a hybrid model "
                                "on a JSONL trace")
    sim.add_argument("--trace", required=True, help="JSONL trace (Marconi's schema)")
    sim.add_argument("--cache-gb", type=gb, nargs="+", required=True,
                     help="cache size(s) in GB (10^9 bytes); several sizes make a sweep")
    sim.add_argument("--policy", choices=["marconi", "sglang", "vllm"], action="append",
                     help="repeat for several (default marconi)")
    sim.add_argument("--block", type=pos_int, default=32, help="vLLM+ checkpoint interval (32)")
    sim.add_argument("--chunk", type=pos_int, help="snap checkpoints to multiples of this")
    sim.add_argument("--alpha", type=_number(float, 0),
                     help="Marconi's alpha (default: tuned online)")
    sim.add_argument("--latency-table", help="JSON {tokens: [...], ms: [...]} for TTFT")
    sim.add_argument("--json", type=_out_path,
                     help="write the metrics here (a list for several runs)")
    sim.add_argument("--plot", type=_out_path, help="PNG of token hit rate vs cache size")
    sim.add_argument("--plot-alpha", type=_out_path,
                     help="PNG of the tuned alpha over the trace, one line per tuned run")
    sim.set_defaults(fn=_cmd_sim)

    tr = subparsers.add_parser("cache-trace", help="generate a seeded multi-turn JSONL trace")
    tr.add_argument("--profile", choices=["lmsys", "sharegpt", "swebench"], default="lmsys")
    tr.add_argument("--sessions", type=pos_int, default=100)
    tr.add_argument("--max-turns", type=pos_int, default=50)
    tr.add_argument("--turns", type=pos_int, help="exactly this many turns per session")
    tr.add_argument("--seed", type=nonneg_int, default=0)
    tr.add_argument("--pool-size", type=pos_int, default=32, help="system prompts in the pool")
    tr.add_argument("--zipf-s", type=_number(float, 0), default=1.1,
                    help="Zipf exponent of their popularity")
    tr.add_argument("--out", required=True, type=_out_path)
    tr.set_defaults(fn=_cmd_trace)

    lat = subparsers.add_parser("cache-latency", help="measure the prefill-latency table of "
                                "cache-sim's model (Marconi's 7B hybrid) with flashkit's kernels")
    lat.add_argument("--out", required=True, type=_out_path, help="JSON for --latency-table")
    lat.add_argument("--max-tokens", type=_number(int, 16),
                     help="last power of two measured (default 32768 on CUDA, 256 on the CPU)")
    lat.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda if available")
    lat.add_argument("--backend", choices=["auto", "torch", "triton", "cuda"], default="auto",
                     help="the kernels' backend (default auto)")
    lat.add_argument("--rep-ms", type=_number(float, 0, strict=True), default=50.0,
                     help="milliseconds of repetitions per layer and size (default 50)")
    lat.set_defaults(fn=_cmd_latency)
