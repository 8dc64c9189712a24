"""Benchmark (not a test): inspect and prune real CUDA libraries, one row per library.

    python -m flashkit.debloat.survey LIB.so... [--arch sm_90] [--json PATH] [--no-save]

Per library: inspect time (twice: the first read may come from disk, the second from the page
cache), file and GPU bytes, bytes per arch, the entry bytes an ``--arch``-only deployment drops,
and a real `prune_library` to a scratch copy (its size, time, and whether it still dlopens in a
fresh process). The record is appended to bench/results/ like every benchmark's.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import subprocess
import sys
import tempfile
import time

from .inspect import inspect_library
from .prune import prune_library
from .select import arch_savings


def _timed(fn, *args, **kw):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kw)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def _loads(path: str, deps_dir: str) -> bool:
    """Whether ``path`` dlopens in a fresh process, its dependencies found in ``deps_dir`` (the
    original's folder: libcublas needs the libcublasLt beside it)."""
    code = f"import ctypes; ctypes.CDLL({path!r})"
    env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(
        [deps_dir] + ([os.environ["LD_LIBRARY_PATH"]] if os.environ.get("LD_LIBRARY_PATH")
                      else [])))
    return subprocess.run([sys.executable, "-c", code], capture_output=True,
                          env=env).returncode == 0


def survey_library(path: str, arch: str, scratch: str) -> dict:
    """One row for the library ``path`` (see the module docstring)."""
    report, first_s, _ = _timed(inspect_library, path)
    report, warm_s, warm_cpu_s = _timed(inspect_library, path)
    out = os.path.join(scratch, os.path.basename(path) + f".{arch}")
    pruned, prune_s, _ = _timed(prune_library, path, out, arch)
    row = {"library": os.path.basename(path), "path": path,
           "inspect_first_s": round(first_s, 3), "inspect_s": round(warm_s, 3),
           "inspect_cpu_s": round(warm_cpu_s, 3), "file_bytes": report["file_bytes"],
           "gpu_bytes": report["gpu_bytes"], "gpu_share": round(report["gpu_share"], 4),
           "entries": len(report["entries"]),
           "kernels": sum(len(e["kernels"]) for e in report["entries"] if e["kind"] == "cubin"),
           "archs": report["archs"], "warnings": report["warnings"],
           "other_sections": _big_other_sections(path),
           f"{arch}_entry_bytes_dropped": arch_savings(report, arch),
           "prune": {k: pruned[k] for k in ("bytes_before", "bytes_after", "fatbin_before",
                                             "fatbin_after", "entries_before", "entries_kept",
                                             "containers_without_code", "split", "cut_bytes")},
           "prune_s": round(prune_s, 3),
           "pruned_loads": _loads(out, os.path.dirname(os.path.abspath(path)))}
    os.remove(out)
    return row


def _big_other_sections(path: str, floor: int = 16 << 20) -> dict:
    """Sections of at least ``floor`` bytes besides .text and the fatbin (where else bytes go)."""
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        return {s.name: s["sh_size"] for s in ELFFile(f).iter_sections()
                if s["sh_size"] >= floor and s.name not in (".text", ".nv_fatbin")
                and s["sh_type"] != "SHT_NOBITS"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m flashkit.debloat.survey", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("libs", nargs="+")
    p.add_argument("--arch", default="sm_90")
    p.add_argument("--json", help="also write the record here")
    p.add_argument("--no-save", action="store_true", help="do not append to bench/results/")
    args = p.parse_args(argv)
    from flashkit.bench import record

    rows = []
    with tempfile.TemporaryDirectory(prefix="flashkit-survey-") as scratch:
        for lib in args.libs:
            row = survey_library(lib, args.arch, scratch)
            pr = row["prune"]
            print(f"{row['library']}: {row['file_bytes'] / 2**20:.1f} MiB, GPU "
                  f"{row['gpu_share']:.1%}, inspect {row['inspect_s']:.2f} s "
                  f"(first {row['inspect_first_s']:.2f} s); {args.arch} prune "
                  f"{pr['bytes_before'] / 2**20:.1f} -> {pr['bytes_after'] / 2**20:.1f} MiB "
                  f"in {row['prune_s']:.1f} s, loads: {row['pruned_loads']}", flush=True)
            rows.append(row)
    rec = {"schema": "flashkit.debloat.survey/1",
           "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "command": "python -m flashkit.debloat.survey " + " ".join(argv or sys.argv[1:]),
           **record.environment("cpu"), "arch": args.arch, "rows": rows}
    if args.json:
        record.write_json(rec, args.json)
    out = record.results_dir()
    if out is not None and not args.no_save:
        print(f"saved {record.save(rec, out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
