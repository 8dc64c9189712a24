"""``flashkit reshard-sim`` and ``flashkit reshard-trace``: add_parser(subparsers) adds both."""
from __future__ import annotations

import json
import sys

__all__ = ["add_parser"]


def _fail(cmd: str, msg: str) -> int:
    print(f"flashkit {cmd}: {msg}", file=sys.stderr)
    return 2


def _cmd_trace(args) -> int:
    from .traces import generate_trace, write_trace

    try:
        reqs = generate_trace(args.kind, args.n, args.seed)
        write_trace(reqs, args.out)
    except (OSError, ValueError) as e:
        return _fail("reshard-trace", str(e))
    print(f"wrote {len(reqs)} {args.kind} requests to {args.out}")
    return 0


def _plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, b = zip(*res["occupancy"])
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.step(t, [x / 1e9 for x in b], where="post")
    m = res["best_mixed"]
    ax.set(xlabel="time (s)", ylabel="CPU KV tier (GB)",
           title=f"{res['model']} on {res['gpus']}x{res['hardware']}: prefill {m['prefill']}, "
                 f"decode {m['decode']}, {m['transitions']} transitions")
    fig.tight_layout()
    fig.savefig(path)


def _cmd_sim(args) -> int:
    from .profiles import HARDWARE, MODELS
    from .search import search_layouts
    from .traces import read_trace

    if args.hardware not in HARDWARE:
        return _fail("reshard-sim", f"--hardware must be one of {', '.join(HARDWARE)}, got "
                                    f"{args.hardware!r}")
    if args.model not in MODELS:
        return _fail("reshard-sim", f"--model must be one of {', '.join(MODELS)}, got "
                                    f"{args.model!r}")
    if args.gpus < 1:
        return _fail("reshard-sim", f"--gpus must be >= 1, got {args.gpus}")
    try:
        reqs = read_trace(args.trace)
        res = search_layouts(reqs, MODELS[args.model], HARDWARE[args.hardware], args.gpus)
    except (OSError, ValueError, RuntimeError) as e:
        return _fail("reshard-sim", str(e))
    if args.json:
        json.dump(res, sys.stdout, indent=1)
        print()
    else:
        print(f"{res['model']} on {res['gpus']} x {res['hardware']}, {res['requests']} requests")
        for r in res["static"]:
            print(f"  static {r['prefill']:>10}: {r['throughput_rps']:7.3f} req/s "
                  f"({r['output_tokens_per_s']:8.0f} out tok/s)")
        for r in res["mixed"]:
            print(f"  {r['policy']:>21} {r['prefill']} -> {r['decode']}: "
                  f"{r['throughput_rps']:7.3f} req/s, {r['transitions']} transitions "
                  f"({r['transition_seconds']:.2f} s)")
        peak = max(b for _, b in res["occupancy"])
        print(f"best mixed / best static ({res['best_static']['prefill']}): "
              f"{res['speedup']:.3f}x; CPU tier peak {peak / 1e9:.1f} GB")
    if args.plot:
        try:
            _plot(res, args.plot)
        except ImportError:
            return _fail("reshard-sim", "--plot needs matplotlib (pip install matplotlib)")
        except OSError as e:
            return _fail("reshard-sim", str(e))
    return 0


def add_parser(subparsers) -> None:
    from .profiles import HARDWARE, MODELS

    p = subparsers.add_parser("reshard-sim", help="search prefill/decode layouts (Seesaw) for "
                                                  "a trace on a hardware profile")
    p.add_argument("--trace", required=True, help="JSON lines of prompt_len/output_len")
    p.add_argument("--hardware", required=True, help=", ".join(HARDWARE))
    p.add_argument("--model", required=True, help=", ".join(MODELS))
    p.add_argument("--gpus", type=int, required=True)
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.add_argument("--plot", metavar="PNG", help="write the CPU-tier occupancy over time")
    p.set_defaults(fn=_cmd_sim)
    t = subparsers.add_parser("reshard-trace", help="write a seeded ShareGPT-like or "
                                                    "arxiv-summarization-like trace")
    t.add_argument("--kind", default="sharegpt", help="sharegpt | arxiv")
    t.add_argument("-n", type=int, default=2000)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", required=True)
    t.set_defaults(fn=_cmd_trace)
