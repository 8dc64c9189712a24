"""``flashkit debloat inspect | prune | trace``: add_parser(subparsers) registers them."""
from __future__ import annotations

import argparse
import json
import os
import sys

__all__ = ["add_parser"]


def _mib(n: int) -> str:
    if n < 2**20:
        return f"{n / 1024:.1f} KiB" if n >= 1024 else f"{n} B"
    return f"{n / 2**20:.1f} MiB"


def _print_savings(r: dict, arch: str) -> None:
    from .select import arch_savings

    dropped = arch_savings(r, arch)
    in_fatbin = arch_savings({"entries": [e for e in r["entries"]
                                          if e["section"] == ".nv_fatbin"]}, arch)
    print(f"  {arch} only: {_mib(dropped)} of entries not needed "
          f"({dropped / max(r['file_bytes'], 1):.1%} of the file), {_mib(in_fatbin)} of them in "
          ".nv_fatbin (what prune removes)")


def _print_report(r: dict, kernels: bool) -> None:
    print(f"{r['path']}: {_mib(r['file_bytes'])}, GPU code {_mib(r['gpu_bytes'])} "
          f"({r['gpu_share']:.1%}) in {sum(s['containers'] for s in r['sections'])} containers, "
          f"{len(r['entries'])} entries")
    print(f"  {'arch':<8} {'cubin':>12} {'ptx':>12} {'other':>10} {'kernels':>8}")
    for arch, a in sorted(r["archs"].items(), key=lambda kv: (int(kv[0][3:].rstrip("af")),
                                                               kv[0])):
        print(f"  {arch:<8} {_mib(a['cubin']):>12} {_mib(a['ptx']):>12} {_mib(a['other']):>10} "
              f"{a['kernels']:>8}")
    for w in r["warnings"]:
        print(f"  warning: {w}")
    if kernels:
        for e in r["entries"]:
            print(f"  {e['section']}[{e['container']}] {e['kind']} {e['arch']} "
                  f"{e['stored_bytes']} B ({e['compression'] or 'raw'})")
            for k in e["kernels"]:
                size = f"{k['size']:>8}" if k["size"] is not None else " " * 8
                print(f"    {size}  {k['demangled']}")


def _cmd_inspect(args) -> int:
    from .fatbin import FatbinError
    from .inspect import inspect_library, inspect_site_packages

    try:
        if (args.site_packages is None) == (not args.libs):
            raise ValueError("give libraries or --site-packages [DIR], not both or neither")
        if args.arch:
            from .select import parse_arch

            parse_arch(args.arch, "--arch")
        if args.site_packages is not None:
            reports = inspect_site_packages(args.site_packages or None, kernels=args.kernels)
        else:
            reports = []
            for lib in args.libs:
                r = inspect_library(lib, kernels=True)
                if not r["sections"]:
                    raise FatbinError(f"{lib}: no CUDA fatbin (not a CUDA library)")
                reports.append(r)
    except (ValueError, TypeError) as exc:
        print(f"flashkit debloat inspect: {exc}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(reports if len(reports) != 1 or args.site_packages is not None else reports[0],
                  sys.stdout, indent=1)
        print()
        return 0
    if args.site_packages is not None:
        gpu = [r for r in reports if r["gpu_bytes"]]
        print(f"{len(reports)} shared objects, {len(gpu)} with GPU code, "
              f"{_mib(sum(r['gpu_bytes'] for r in gpu))} of "
              f"{_mib(sum(r['file_bytes'] for r in reports))}")
        for r in gpu:
            archs = ",".join(sorted(r["archs"], key=lambda a: int(a[3:].rstrip("af"))))
            print(f"  {_mib(r['gpu_bytes']):>11} {r['gpu_share']:6.1%}  {r['path']}  [{archs}]")
        for r in reports:
            if "error" in r:
                print(f"  skipped {r['path']}: {r['error']}")
        return 0
    for r in reports:
        _print_report(r, args.kernels)
        if args.arch:
            _print_savings(r, args.arch)
    return 0


def _cmd_prune(args) -> int:
    from .prune import prune_library
    from .trace import read_traces

    try:
        trace = read_traces(args.trace) if args.trace else None
        used = set(trace["kernels"]) if trace else None
        r = prune_library(args.lib, args.out, args.arch, keep_ptx=args.keep_ptx, used=used)
    except (ValueError, TypeError, OSError) as exc:
        print(f"flashkit debloat prune: {exc}", file=sys.stderr)
        return 2
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)
    saved = r["bytes_before"] - r["bytes_after"]
    print(f"{r['path']} -> {r['out']}: {r['bytes_before']} -> {r['bytes_after']} bytes "
          f"(-{saved / max(r['bytes_before'], 1):.1%}); .nv_fatbin {_mib(r['fatbin_before'])} "
          f"-> {_mib(r['fatbin_after'])}; kept {r['entries_kept']} of {r['entries_before']} "
          f"entries, {len(r['kernels_kept'])} kernels")
    if trace and os.path.basename(args.lib) not in {os.path.basename(p)
                                                     for p in trace["libraries"]}:
        print(f"warning: the traced run never loaded {os.path.basename(args.lib)}: every cubin "
              "with kernels was dropped", file=sys.stderr)
    if r["split"]:
        print("note: the program header table grew by one entry; binutils strip/objcopy cannot "
              "rewrite the result (strip before pruning)", file=sys.stderr)
    if r["containers_without_code"]:
        print(f"warning: {r['containers_without_code']} containers keep no code for {r['arch']} "
              "(their kernels will not launch there; --keep-ptx keeps a PTX fallback)",
              file=sys.stderr)
    return 0


def _cmd_trace(args) -> int:
    from .trace import run_traced

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        print("flashkit debloat trace: give a command after --", file=sys.stderr)
        return 2
    try:
        rc, trace = run_traced(cmd, args.out, kernels=not args.no_kernels)
    except (ValueError, OSError) as exc:
        print(f"flashkit debloat trace: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {len(trace['libraries'])} libraries, {len(trace['kernels'])} "
          f"kernels, {len(trace['flashkit_uris'])} flashkit uris from {trace['processes']} "
          f"processes (command exit status {rc})")
    return rc


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("debloat", help="inspect, trace and prune the GPU code of libraries")
    sub = p.add_subparsers(dest="debloat_command", required=True)

    i = sub.add_parser("inspect", help="GPU bytes per arch and kernels of shared libraries")
    i.add_argument("libs", nargs="*", help="shared libraries (.so)")
    i.add_argument("--site-packages", nargs="?", const="", metavar="DIR",
                   help="every .so under DIR (default: this interpreter's site-packages)")
    i.add_argument("--json", action="store_true", help="print the full report as JSON")
    i.add_argument("--kernels", action="store_true", help="list every entry's kernels")
    i.add_argument("--arch", help="also say what a deployment on this arch (e.g. sm_90) does not "
                   "need")
    i.set_defaults(fn=_cmd_inspect)

    pr = sub.add_parser("prune", help="write a copy keeping one arch's (and a trace's) GPU code")
    pr.add_argument("lib")
    pr.add_argument("--arch", required=True, help="the deployment GPU, e.g. sm_90")
    pr.add_argument("--trace", action="append", help="trace JSON(s) from `debloat trace`; "
                    "several are unioned")
    pr.add_argument("--keep-ptx", action="store_true",
                    help="keep the PTX of the best-fit arch (a JIT fallback)")
    pr.add_argument("-o", "--out", required=True, help="the pruned library to write")
    pr.add_argument("--json", help="also write the before/after report here")
    pr.set_defaults(fn=_cmd_prune)

    t = sub.add_parser("trace", help="run a command; record the libraries and kernels it used")
    t.add_argument("-o", "--out", required=True, help="trace JSON to write")
    t.add_argument("--no-kernels", action="store_true",
                   help="libraries and flashkit uris only (no torch.profiler)")
    t.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    t.set_defaults(fn=_cmd_trace)
