"""The `flashkit` command (also `python -m flashkit`)."""
from __future__ import annotations

import argparse
import logging
import sys
import time


def _cmd_doctor(args) -> int:
    from .doctor import collect, render

    print(render(collect()))
    return 0


def _default_archs() -> list[str]:
    import torch

    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return [f"sm_{major}{minor}"]
    return ["sm_80", "sm_90"]


def _cmd_jit_ls(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from . import jit

    entries = jit.list_entries()
    table = Table(title=f"flashkit JIT cache: {jit.cache_root()}", title_justify="left")
    for col in ("uri", "backend", "target", "size", "build s", "last used"):
        table.add_column(col, justify="right" if col in ("size", "build s") else "left")
    for e in sorted(entries, key=lambda e: -e["last_used"]):
        table.add_row(e["uri"], e.get("backend", "?"), e.get("target") or "-",
                      f"{e['disk_bytes'] / 1024:.1f} KiB",
                      f"{e['build_seconds']:.2f}" if "build_seconds" in e else "corrupt",
                      time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["last_used"])))
    Console(width=160).print(table)
    print(f"{len(entries)} entries, {jit.cache_size() / 2**20:.1f} MiB")
    return 0


def _cmd_jit_build(args) -> int:
    from . import jit, ops  # noqa: F401  (ops registers the shipped specializations)

    if not args.all and not args.names:
        print("flashkit jit build: name specs (globs over families or spec names) or pass --all",
              file=sys.stderr)
        return 2
    archs = [a for arg in (args.arch or _default_archs()) for a in arg.split(",") if a]
    specs = jit.shipped_specs(archs, [] if args.all else args.names)
    if not specs:
        print(f"no shipped specialization matches {args.names}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    results = jit.build_many(specs, progress=sys.stderr.isatty())
    failed = [(s, r) for s, r in zip(specs, results) if isinstance(r, BaseException)]
    built = sum(1 for r in results if not isinstance(r, BaseException) and r.compiled)
    for spec, exc in failed:
        print(f"FAILED {spec.name}: {exc}", file=sys.stderr)
    print(f"{len(specs)} specs for {','.join(archs)}: {built} compiled, "
          f"{len(specs) - built - len(failed)} cached, {len(failed)} failed "
          f"in {time.perf_counter() - t0:.1f} s")
    return 1 if failed else 0


def _cmd_jit_clear(args) -> int:
    from . import jit

    n = jit.clear()
    print(f"removed {n} entries from {jit.cache_root()}")
    return 0


def _cmd_jit_bundle(args) -> int:
    from . import jit

    since = time.time() - 60 * args.since_minutes if args.since_minutes is not None else None
    uris = None
    if args.names:
        import fnmatch

        uris = [e["uri"] for e in jit.list_entries()
                if any(fnmatch.fnmatch(e["uri"], p) or fnmatch.fnmatch(e.get("name", ""), p)
                       for p in args.names)]
    written = jit.export_bundle(args.path, uris=uris, since=since)
    print(f"wrote {len(written)} entries to {args.path}")
    return 0 if written else 1


def _cmd_jit_unbundle(args) -> int:
    from . import jit

    added = jit.import_bundle(args.path)
    print(f"added {len(added)} entries to {jit.cache_root()}")
    return 0


def _cmd_bench(args) -> int:
    from .bench.run import main as bench_main

    return bench_main(args.bench_args)


def _cmd_demo(args) -> int:
    from .demo import main as demo_main

    return demo_main(quick=not args.full)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flashkit", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="log every JIT compile")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", help="versions, GPU, cache and which backends run here"
                   ).set_defaults(fn=_cmd_doctor)

    jit_p = sub.add_parser("jit", help="inspect, prebuild or clear the JIT cache")
    jit_sub = jit_p.add_subparsers(dest="jit_command", required=True)
    jit_sub.add_parser("ls", help="list cached specializations").set_defaults(fn=_cmd_jit_ls)
    b = jit_sub.add_parser("build", help="prebuild shipped specializations")
    b.add_argument("names", nargs="*", help="families or spec names (shell globs)")
    b.add_argument("--all", action="store_true", help="every shipped specialization")
    b.add_argument("--arch", action="append",
                   help="nvrtc target(s), e.g. sm_90 or sm_80,sm_90 (default: this GPU, else both)")
    b.set_defaults(fn=_cmd_jit_build)
    jit_sub.add_parser("clear", help="remove this version's cache").set_defaults(fn=_cmd_jit_clear)
    bundle = jit_sub.add_parser("bundle", help="pack cache entries into an AOT bundle (.tar.gz)")
    bundle.add_argument("path")
    bundle.add_argument("names", nargs="*", help="uris or spec names (shell globs); default all")
    bundle.add_argument("--since-minutes", type=float,
                        help="only entries used in the last N minutes (e.g. by a workload)")
    bundle.set_defaults(fn=_cmd_jit_bundle)
    unbundle = jit_sub.add_parser("unbundle", help="add a bundle's entries to the cache")
    unbundle.add_argument("path")
    unbundle.set_defaults(fn=_cmd_jit_unbundle)

    bench = sub.add_parser("bench", help="run benchmarks (flashkit bench [OP…] [--quick] [--json PATH])",
                           add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(fn=_cmd_bench)

    from .cache.cli import add_parser as add_cache_parsers

    add_cache_parsers(sub)  # cache-sim, cache-trace
    from .placement.cli import add_parser as add_placement_parsers

    add_placement_parsers(sub)  # placement-sim, placement-trace

    demo = sub.add_parser("demo", help="run every op on the best device against its reference")
    demo.add_argument("--full", action="store_true", help="larger shapes and timings")
    demo.set_defaults(fn=_cmd_demo)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(name)s: %(message)s")
    if args.verbose:
        logging.getLogger("flashkit").setLevel(logging.INFO)
    return args.fn(args)
