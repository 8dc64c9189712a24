"""The `flashkit` command (also `python -m flashkit`)."""
from __future__ import annotations

import argparse
import importlib
import logging
import math
import re
import sys
import time
import traceback


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
    from .placement import llm_native  # noqa: F401  (and the compiled llm event loop)

    if not args.all and not args.names:
        raise ValueError("name specs (globs over families or spec names) or pass --all")
    archs = [a for arg in (args.arch or [_default_archs()]) for a in arg]
    specs = jit.shipped_specs(archs, [] if args.all else args.names)
    if not specs:
        raise ValueError(f"no shipped specialization matches {' '.join(args.names)}")
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


def _arch_list(text: str) -> list[str]:
    """``--arch sm_80,sm_90``: NVRTC targets, checked before anything builds."""
    archs = [a.strip() for a in text.split(",") if a.strip()]
    bad = [a for a in archs if not re.fullmatch(r"sm_\d{2,3}[af]?", a)]
    if bad or not archs:
        raise argparse.ArgumentTypeError(f"expected GPU archs like sm_80 or sm_80,sm_90, got "
                                         f"{text!r}")
    return archs


def _minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a number of minutes >= 0, got {text!r}")
    return value


def _cmd_jit_bundle(args) -> int:
    from . import jit

    since = time.time() - 60 * args.since_minutes if args.since_minutes is not None else None
    uris = None
    if args.names:
        import fnmatch

        uris = [e["uri"] for e in jit.list_entries()
                if any(fnmatch.fnmatch(e["uri"], p) or fnmatch.fnmatch(e.get("name", ""), p)
                       for p in args.names)]
    if args.trace:  # exactly the flashkit kernels a `flashkit debloat trace` recorded
        from .debloat.trace import read_traces

        try:
            traced = set(read_traces(args.trace)["flashkit_uris"])
        except ValueError as exc:
            print(f"flashkit jit bundle: {exc}", file=sys.stderr)
            return 2
        uris = sorted(traced if uris is None else traced & set(uris))
    written = jit.export_bundle(args.path, uris=uris, since=since)
    print(f"wrote {len(written)} entries to {args.path}")
    if args.trace:
        from . import ops  # noqa: F401  (registers the shipped specializations)
        from .jit.bundle import bundle_summary

        targets = sorted({e["target"] for e in jit.list_entries()
                          if e["uri"] in set(written) and e.get("target")})
        print(bundle_summary(args.path, written, targets or _default_archs()))
    return 0 if written else 1


def _cmd_jit_unbundle(args) -> int:
    from . import jit

    added = jit.import_bundle(args.path)
    print(f"added {len(added)} entries to {jit.cache_root()}")
    return 0


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
    b.add_argument("--arch", action="append", type=_arch_list,
                   help="nvrtc target(s), e.g. sm_90 or sm_80,sm_90 (default: this GPU, else both)")
    b.set_defaults(fn=_cmd_jit_build)
    jit_sub.add_parser("clear", help="remove this version's cache").set_defaults(fn=_cmd_jit_clear)
    bundle = jit_sub.add_parser("bundle", help="pack cache entries into an AOT bundle (.tar.gz)")
    bundle.add_argument("path")
    bundle.add_argument("names", nargs="*", help="uris or spec names (shell globs); default all")
    bundle.add_argument("--since-minutes", type=_minutes,
                        help="only entries used in the last N minutes (e.g. by a workload)")
    bundle.add_argument("--trace", action="append",
                        help="only the flashkit uris of these `flashkit debloat trace` files")
    bundle.set_defaults(fn=_cmd_jit_bundle)
    unbundle = jit_sub.add_parser("unbundle", help="add a bundle's entries to the cache")
    unbundle.add_argument("path")
    unbundle.set_defaults(fn=_cmd_jit_unbundle)

    # Each family or integration owns its subcommands: bench; cache-sim, cache-trace, cache-latency;
    # reshard-sim, reshard-trace; debloat inspect | prune | trace; placement-sim, placement-trace.
    for owner in ("bench", "prefix_cache", "reshard", "debloat", "placement"):
        importlib.import_module(f"flashkit.{owner}.cli").add_parser(sub)

    demo = sub.add_parser("demo", help="run every op on the best device against its reference")
    demo.add_argument("--full", action="store_true", help="larger shapes and timings")
    demo.set_defaults(fn=_cmd_demo)
    _verbose_after_subcommands(p)
    return p


def _verbose_after_subcommands(parser: argparse.ArgumentParser) -> None:
    """Accept ``-v`` after a subcommand too (``flashkit jit build -v ...``), not only before it.
    SUPPRESS keeps a subcommand's default from overwriting a ``-v`` given before it. Commands
    that forward their arguments (bench) or define their own ``-v`` are left alone."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for sub in action.choices.values():
            forwards = any(a.nargs == argparse.REMAINDER for a in sub._actions)
            if not forwards and "-v" not in sub._option_string_actions:
                sub.add_argument("-v", "--verbose", action="store_true",
                                 default=argparse.SUPPRESS, help="log every JIT compile")
            _verbose_after_subcommands(sub)


def _exit_status(exc: BaseException) -> int | None:
    """How a command's exception ends the process: 2 for bad input (a value, a file, the
    environment, the cache), 1 for a kernel that does not compile, None for anything else,
    which is a bug and keeps its traceback."""
    from .jit.errors import JitCompileError, JitError

    if isinstance(exc, JitCompileError):
        return 1
    if isinstance(exc, (JitError, ValueError, OSError)):
        return 2
    return None


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(name)s: %(message)s")
    if args.verbose:
        logging.getLogger("flashkit").setLevel(logging.INFO)
    prog = " ".join(["flashkit", args.command]
                    + ([args.jit_command] if args.command == "jit" else []))
    # The one place where a command's errors become exit statuses: each command raises, none
    # prints its own usage errors.
    try:
        from .jit.env import check_environment

        check_environment()
        return args.fn(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        status = _exit_status(exc)
        if status is None or args.verbose:
            traceback.print_exc()
        if status is None:
            print(f"{prog}: internal error ({type(exc).__name__}: {exc}); this is a bug in "
                  f"flashkit, please report it with the traceback above", file=sys.stderr)
            return 1
        print(f"{prog}: {_message(exc)}", file=sys.stderr)
        return status
