"""``flashkit bench``: the benchmark runner's subcommand (the same options as
``python -m flashkit.bench.run``)."""
from __future__ import annotations

import argparse

__all__ = ["add_parser"]


def _cmd(args: argparse.Namespace) -> int:
    from . import run

    command = " ".join(["flashkit", "bench", *run.argv_of(args)])
    return run.run(args, args.bench_parser, command)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``bench`` to the flashkit CLI's subparsers (``--help``, ``--quick``, ``--list`` and
    every other option parsed here, bad ones answered in one line with exit status 2)."""
    from .run import add_arguments

    p = subparsers.add_parser(
        "bench", help="run benchmarks (flashkit bench [OP…] [--quick] [--list] [--json PATH])",
        description="Time flashkit's ops against their baselines on this device; every row is "
                    "checked against the op's reference first. OP is a public op name "
                    "(chunk_ssd_scan, fused_moe, ...), a case-name prefix or a glob.")
    add_arguments(p)
    known = p.parse_known_args

    def parse_known_args(args=None, namespace=None):
        # The main parser would report leftovers with its own two-line usage message.
        ns, extra = known(args, namespace)
        if extra:
            p.error(f"unrecognized arguments: {' '.join(extra)}")
        return ns, extra

    p.parse_known_args = parse_known_args
    p.set_defaults(fn=_cmd, bench_parser=p)
    return p

