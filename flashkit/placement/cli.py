"""``flashkit placement-sim`` and ``flashkit placement-trace``: add_parser(subparsers) adds both."""
from __future__ import annotations

import json
import sys

__all__ = ["add_parser", "plot_series"]

_POLICIES = ("first-fit", "best-fit", "nilas", "lava", "lars")


def _fail(cmd, msg) -> int:
    print(f"flashkit {cmd}: {msg}", file=sys.stderr)
    return 2


def _cmd_trace(args) -> int:
    from .llm_trace import generate_llm_trace, write_llm_trace
    from .vm_trace import generate_vm_trace, write_vm_trace

    try:
        if args.domain == "vm":
            write_vm_trace(generate_vm_trace(args.n, days=args.days, seed=args.seed), args.out)
        else:
            write_llm_trace(generate_llm_trace(args.n, rate=args.rate, seed=args.seed), args.out)
    except (OSError, ValueError) as e:
        return _fail("placement-trace", e)
    print(f"wrote {args.n} {'VMs' if args.domain == 'vm' else 'requests'} to {args.out}")
    return 0


def plot_series(results, path, domain) -> None:
    """PNG of empty hosts and stranded capacity over time, one line per policy (matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib (pip install 'flashkit[plot]')") from None
    t_key, unit = ("t_days", "day") if domain == "vm" else ("t_s", "s")
    strand = ("stranded_cpu", "stranded cpu") if domain == "vm" else ("stranded_slots",
                                                                       "stranded batch slots")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        s = r["series"]
        label = f"{r['policy']} ({r['mode']})"
        axes[0].plot(s[t_key], s["empty_frac"], label=label)
        axes[1].plot(s[t_key], s[strand[0]], label=label)
    axes[0].set(xlabel=unit, ylabel="empty hosts (fraction)")
    axes[1].set(xlabel=unit, ylabel=f"{strand[1]} (fraction of capacity)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cmd_sim(args) -> int:
    from ..jit.errors import BackendUnavailableError
    from .llm_sim import simulate_llm
    from .llm_trace import read_llm_trace
    from .vm_sim import simulate_vm
    from .vm_trace import read_vm_trace

    policies = args.policy or ["best-fit", "lava"]
    results = []
    try:
        if args.domain == "vm":
            trace = read_vm_trace(args.trace, args.machine_id)

            def run(p):
                drain = {} if args.drain_frac is None else {"maint_frac": args.drain_frac}
                return simulate_vm(trace, p, n_hosts=args.hosts, mode=args.mode,
                                   noise=args.noise, seed=args.seed, **drain)
        else:
            trace = read_llm_trace(args.trace)

            def run(p):
                return simulate_llm(trace, p, n_instances=64 if args.hosts is None else args.hosts,
                                    kv_tokens=args.kv_tokens, max_batch=args.max_batch,
                                    mode=args.mode, noise=args.noise, seed=args.seed,
                                    kv_block_requests=args.kv_block_requests,
                                    backend=args.backend, drain_frac=args.drain_frac or 0.0)
        for p in policies:
            results.append(run(p))
    except (OSError, ValueError, BackendUnavailableError) as e:
        return _fail("placement-sim", e)
    for r in results:
        extra = ""
        if args.domain == "vm" and r.get("drain_hours_mean") is not None:
            extra = f", migrations {r['migrations']}, drain {r['drain_hours_mean']:.2f} h"
        elif args.domain == "llm":
            extra = f", preemptions {r['preemptions']}"
            if r["kv_empty_blocks_mean"] is not None:
                extra += (f", empty KV blocks {r['kv_empty_blocks_mean']:.3f}, KV fragmentation "
                          f"{r['kv_fragmentation']:.3f}")
            if r.get("drain_s_mean") is not None:
                extra += f", migrations {r['migrations']}, drain {r['drain_s_mean']:.1f} s"
        print(f"{r['policy']} ({r['mode']}, noise {r['noise']:g}) on {r['hosts']} hosts: empty "
              f"{r['empty_hosts_mean']:.4f}, stranded cpu {r['stranded_cpu_frac']:.4f}, mem "
              f"{r['stranded_mem_frac']:.4f}{extra} [{r['seconds']:.1f} s]")
    if args.json:
        try:
            with open(args.json, "w") as f:
                json.dump([{k: v for k, v in r.items() if k != "series"} for r in results], f,
                          indent=1)
        except OSError as e:
            return _fail("placement-sim", e)
    if args.plot:
        try:
            plot_series(results, args.plot, args.domain)
        except RuntimeError as e:
            print(f"flashkit placement-sim: {e}", file=sys.stderr)
            return 1
    return 0


def add_parser(subparsers) -> None:
    """Add ``placement-sim`` and ``placement-trace`` to an argparse subparsers object."""
    sim = subparsers.add_parser("placement-sim", help="lifetime-aware placement (LAVA) on a VM "
                                "or LLM trace, one line per policy")
    sim.add_argument("--trace", required=True,
                     help="vm: Azure Packing Trace 2020 sqlite; llm: Azure LLM trace CSV")
    sim.add_argument("--domain", choices=["vm", "llm"], required=True)
    sim.add_argument("--policy", choices=_POLICIES, action="append",
                     help="repeat for several (default best-fit and lava)")
    sim.add_argument("--hosts", type=int, help="hosts (vm: default 1.1 x peak load) or "
                     "instances (llm: default 64)")
    sim.add_argument("--mode", choices=["repredict", "one-shot", "oracle"], default="repredict",
                     help="lifetime predictor (default repredict)")
    sim.add_argument("--noise", type=float, default=0.0,
                     help="prediction noise: each prediction x exp(noise * N(0, 1))")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--machine-id", type=int, help="vm: the hosts' machineId (default: the "
                     "one sizing the most VM types)")
    sim.add_argument("--kv-tokens", type=int, default=131_072, help="llm: KV per instance")
    sim.add_argument("--max-batch", type=int, default=256, help="llm: requests per instance")
    sim.add_argument("--kv-block-requests", type=int, default=20_000,
                     help="llm: requests of instance 0 replayed page by page for the KV block "
                     "metrics (0: skip)")
    sim.add_argument("--backend", choices=["auto", "python", "ninja"], default="auto",
                     help="llm: the event loop, compiled (ninja, up to 512 instances) or Python; "
                     "auto: compiled where it builds (default)")
    sim.add_argument("--drain-frac", type=float,
                     help="share of the hosts drained for maintenance halfway through the "
                          "measured window (vm: default 0.01, deadline a day; llm: default 0, "
                          "deadline 30 s)")
    sim.add_argument("--json", help="write one object per policy here (a list)")
    sim.add_argument("--plot", help="PNG of empty hosts and stranding over time (matplotlib)")
    sim.set_defaults(fn=_cmd_sim)

    tr = subparsers.add_parser("placement-trace", help="generate a synthetic VM (sqlite) or "
                               "LLM (CSV) trace for placement-sim")
    tr.add_argument("--domain", choices=["vm", "llm"], required=True)
    tr.add_argument("--out", required=True)
    tr.add_argument("--n", type=int, default=100_000, help="VMs or requests (100000)")
    tr.add_argument("--days", type=float, default=14.0, help="vm: arrival window (14)")
    tr.add_argument("--rate", type=float, default=400.0, help="llm: requests per s (400)")
    tr.add_argument("--seed", type=int, default=0)
    tr.set_defaults(fn=_cmd_trace)
