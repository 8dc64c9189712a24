"""``python -m flashkit.gpucheck``: parse the options, print the plan, run it."""
from __future__ import annotations

import argparse
import datetime as _dt
import shlex
import sys
from pathlib import Path

from . import estimate
from .plan import DEFAULT_BUDGET_S, REPO, TEST_SELECTIONS, default_plan
from .runner import SUMMARY, run_plan, scaled_caps

__all__ = ["main", "print_plan"]

def _default_out() -> Path | None:
    """bench/results/gpucheck_<UTC date>_<commit>/ in a source checkout, else None."""
    from flashkit.bench import record

    results = record.results_dir()
    if results is None:
        return None
    commit = (record.commit() or "nogit")[:7]
    return results / f"gpucheck_{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d}_{commit}"


def print_plan(sections, caps, budget_s: float, out=print) -> None:
    """The plan: one line per section with its cap and estimated seconds, then the totals."""
    out(f"gpucheck plan: {len(sections)} sections, budget {budget_s:.0f} s "
        f"(caps scaled from {sum(s.cap_s for s in sections):.0f} s)")
    out(f"{'#':>2}  {'section':<12} {'cap s':>6} {'est s':>6}  what (estimate counts)")
    for i, (s, cap) in enumerate(zip(sections, caps), 1):
        flag = "  <- estimate over cap" if s.estimate_s > cap else ""
        out(f"{i:>2}  {s.name:<12} {cap:>6.0f} {s.estimate_s:>6.0f}  {s.title} "
            f"({s.detail}){flag}")
    out(f"    {'total':<12} {sum(caps):>6.0f} {sum(s.estimate_s for s in sections):>6.0f}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m flashkit.gpucheck",
                                description=__doc__.split("\n")[0])
    p.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                   help=f"seconds for all sections together (default {DEFAULT_BUDGET_S}: with "
                        "make gpu-check's installs, inside 8.5 minutes on a 16-core H200)")
    p.add_argument("--out", metavar="DIR",
                   help="where the JSON files go (default: bench/results/gpucheck_<date>_<commit>"
                        " in a source checkout)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan with estimated seconds per section; run nothing")
    p.add_argument("--only", nargs="+", metavar="SECTION",
                   help="run only these sections (a rerun of what failed), caps rescaled")
    p.add_argument("--workers", type=int, help="pytest-xdist workers (default: every core)")
    p.add_argument("--quick", action="store_true",
                   help="rehearse the mechanics on any machine: gpu-marked tests only, each "
                        "op's smallest --quick bench cases on this device, cold JIT of nvrtc "
                        "and the first plan")

    def error(message):
        p.exit(2, f"{p.prog}: error: {message}\n")

    p.error = error
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args_list = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(args_list)
    if not args.budget_s > 0:
        parser.error(f"--budget-s must be > 0, got {args.budget_s}")
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    out = Path(args.out) if args.out else _default_out()
    if out is None:
        parser.error("--out DIR is required outside a source checkout")
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out}: not a folder")
    if args.only:
        names = [s.name for s in default_plan(str(out), plugins=set())]
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            parser.error(f"--only: no section {', '.join(unknown)}; sections: "
                         f"{', '.join(names)}")
    n_tests = None
    if args.dry_run and (REPO / "tests").is_dir():
        n_tests = estimate.count_tests(sys.executable, TEST_SELECTIONS, REPO)
    # A dry run estimates for the GPU host (16 cores, pytest-xdist there), wherever it runs.
    sections = default_plan(str(out), workers=args.workers or (16 if args.dry_run else None),
                            plugins={"xdist", "timeout"} if args.dry_run else None,
                            n_tests=n_tests, quick=args.quick)
    if args.only:
        keep = [s for s in sections if s.name in args.only or s.name == "environment"]
        sections = keep  # the environment always runs: the others divide by its ceilings
    caps = scaled_caps(sections, args.budget_s)
    print_plan(sections, caps, args.budget_s)
    if args.dry_run:
        print(f"(dry run: nothing started; results would go to {out})")
        return 0
    command = shlex.join([sys.executable, "-m", "flashkit.gpucheck", *args_list])
    summary = run_plan(sections, out, args.budget_s, command=command,
                       context={"plan": [s.name for s in sections]})
    from .report import markdown

    print(markdown(out))  # last, so that the end of the log carries it
    bad = [s for s in summary["sections"] if s["status"] != "ok"]
    print(f"gpucheck: {len(summary['sections']) - len(bad)}/{len(summary['sections'])} sections "
          f"ok in {summary['elapsed_s']:.0f} s; summary {out / SUMMARY}")
    for s in bad:
        print(f"  {s['name']}: {s['status']}")
    return 1 if bad else 0
