"""The benchmark runner: ``python -m flashkit.bench.run [OP ...] [--quick] [--list] [--json PATH]``.

Measures the device's ceilings, then for each selected case and implementation: checks the
output against the case's reference once (max abs error), times it (median, p20, p80) and derives
GB/s and TFLOP/s, their fractions of the measured ceilings and the speedup over every baseline of
the case. An implementation that fails is an error row; one that cannot run here is a skipped
row with the reason. The record (device, versions, commit, command, ceilings, rows) goes to
``--json PATH`` and, in a source checkout, to a new file in bench/results/ (unless --no-save).
Exit status 1 when any row errored or was inaccurate.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import itertools
import logging
import shlex
import sys
import time
import traceback

from . import record
from .ceilings import measure_ceilings
from .registry import Case, Setup, cases
from .timing import measure, sync

__all__ = ["main", "run", "run_case", "max_abs_error", "add_arguments", "argv_of"]

log = logging.getLogger("flashkit.bench")

# Full runs: 25 ms warm-up, 100 ms of repetitions (triton.testing.do_bench's defaults).
# --quick is a smoke test for CI and `make demo`: a few repetitions, numbers not for comparing.
SETTINGS = {False: dict(warmup_ms=25, rep_ms=100, min_reps=5),
            True: dict(warmup_ms=5, rep_ms=20, min_reps=3)}


def _leaves(x) -> list:
    import dataclasses

    import numpy as np
    import torch

    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, np.ndarray):
        return [torch.from_numpy(x)]
    if isinstance(x, (bool, int, float)):
        return [torch.tensor(float(x), dtype=torch.float64)]
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return [y for f in dataclasses.fields(x) for y in _leaves(getattr(x, f.name))]
    if isinstance(x, (tuple, list)):
        return [y for item in x for y in _leaves(item)]
    if isinstance(x, dict):
        return [y for k in sorted(x) for y in _leaves(x[k])]
    raise TypeError(f"cannot compare an output of type {type(x).__name__}")


def max_abs_error(out, ref) -> float:
    """Largest |out - ref| over all tensors of two outputs (tuples, dataclasses, numbers...).

    Equal infinities count as 0; a NaN in ``out`` gives NaN. A different number of tensors or a
    shape mismatch raises ValueError.
    """
    import torch

    outs, refs = _leaves(out), _leaves(ref)
    if len(outs) != len(refs):
        raise ValueError(f"{len(outs)} output tensors, the reference has {len(refs)}")
    err = 0.0
    for i, (o, r) in enumerate(zip(outs, refs)):
        if tuple(o.shape) != tuple(r.shape):
            raise ValueError(f"output {i} has shape {tuple(o.shape)}, the reference "
                             f"{tuple(r.shape)}")
        if o.numel() == 0:
            continue
        o = o.detach().to(device=r.device, dtype=torch.float64)
        r = r.detach().to(torch.float64)
        worst = float(torch.where(o == r, torch.zeros_like(o), (o - r).abs()).max())
        if worst != worst:
            return worst
        err = max(err, worst)
    return err


def _exc(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def _rotating(fn, inputs: list[tuple]):
    if len(inputs) == 1:
        args = inputs[0]
        return lambda: fn(*args)
    cycle = itertools.cycle(inputs)
    return lambda: fn(*next(cycle))


def _row(case: Case, impl: str, role: str, device: str, **kw) -> dict:
    row = dict(case=case.name, op=case.op, shape=case.shape, impl=impl, role=role, device=device,
               status="ok", error=None, traceback=None, note=None, median_ms=None, p20_ms=None, p80_ms=None,
               reps=None, first_call_ms=None, max_abs_err=None, atol=None, flops=case.flops,
               bytes=case.bytes, gbps=None, tflops=None, frac_copy=None, frac_matmul=None,
               speedup={}, input_sets=None, cold_l2=case.cold_l2)
    row.update(kw)
    return row


def _time_impl(case: Case, st: Setup, impl: str, role: str, fn, device: str, ref_out,
               ref_error: str | None, settings: dict, ceilings: dict) -> dict:
    row = _row(case, impl, role, device, atol=st.atol, input_sets=len(st.inputs))
    try:
        t0 = time.perf_counter()
        out = fn(*st.inputs[0])
        sync(device)
        # Includes any JIT build or torch.compile on the first use.
        row["first_call_ms"] = (time.perf_counter() - t0) * 1e3
        if ref_out is not None:
            err = max_abs_error(out, ref_out)
            row["max_abs_err"] = err
            if st.atol is not None and not err <= st.atol:
                row["status"] = "inaccurate"
                row["note"] = f"max abs error {err:.3g} > {st.atol:.3g}"
        elif ref_error is not None:
            row["note"] = f"not checked: the reference failed ({ref_error})"
        del out
        t = measure(_rotating(fn, st.inputs), device=device, cold_l2=case.cold_l2, **settings)
    except Exception as exc:  # a failing implementation is a row, not the end of the run
        log.debug("%s / %s failed", case.name, impl, exc_info=True)
        row.update(status="error", error=_exc(exc), traceback=traceback.format_exc(limit=-8))
        _free(device)
        return row
    row.update(median_ms=t.median_ms, p20_ms=t.p20_ms, p80_ms=t.p80_ms, reps=t.reps)
    seconds = t.median_ms * 1e-3
    if case.bytes:
        row["gbps"] = case.bytes / seconds / 1e9
        row["frac_copy"] = row["gbps"] / ceilings["copy_gbps"]
    if case.flops:
        row["tflops"] = case.flops / seconds / 1e12
        row["frac_matmul"] = row["tflops"] / ceilings["matmul_tflops"]
    return row


def run_case(case: Case, device: str, quick: bool, ceilings: dict) -> list[dict]:
    """All rows of one case: its implementations, then its baselines, then what was skipped."""
    device = "cpu" if case.host else device
    settings = SETTINGS[quick]
    try:
        st = case.setup(device, quick)
    except Exception as exc:
        log.debug("%s: setup failed", case.name, exc_info=True)
        _free(device)
        return [_row(case, "(setup)", "flashkit", device, status="error", error=_exc(exc),
                     traceback=traceback.format_exc(limit=-8))]
    ref_out, ref_error = None, None
    if st.reference is not None:
        try:
            ref_out = st.reference(*st.inputs[0])
            sync(device)
        except Exception as exc:
            ref_error = _exc(exc)
    rows = [_time_impl(case, st, name, role, fn, device, ref_out, ref_error, settings, ceilings)
            for role, impls in (("flashkit", st.impls), ("baseline", st.baselines))
            for name, fn in impls.items()]
    rows += [_row(case, name, "flashkit" if name.startswith("flashkit-") else "baseline", device,
                  status="skipped", note=why) for name, why in st.skipped.items()]
    timed = {r["impl"]: r["median_ms"] for r in rows if r["median_ms"] is not None}
    for r in rows:
        if r["median_ms"] is not None:
            r["speedup"] = {b: timed[b] / r["median_ms"] for b in st.baselines
                            if b in timed and b != r["impl"]}
    del st, ref_out
    _free(device)
    return rows


# ----------------------------------------------------------------------------- the CLI


def _fmt(x, spec: str = ".4g") -> str:
    return "-" if x is None else format(x, spec)


def _table(rows: list[dict], ceilings: dict, device_name: str):
    from rich.table import Table

    t = Table(title=f"flashkit bench on {device_name}: copy {ceilings['copy_gbps']:.0f} GB/s, "
                    f"{ceilings['matmul_dtype']} matmul {ceilings['matmul_tflops']:.3g} TFLOP/s",
              show_lines=False, header_style="bold")
    for col, justify in (("case", "left"), ("impl", "left"), ("median ms", "right"),
                         ("p20-p80 ms", "right"), ("GB/s", "right"), ("% copy", "right"),
                         ("TFLOP/s", "right"), ("% mm", "right"), ("speedup", "left"),
                         ("max err", "right"), ("1st call ms", "right"), ("note", "left")):
        t.add_column(col, justify=justify, overflow="fold", no_wrap=col in ("case", "impl"))
    style = {"ok": None, "skipped": "dim", "error": "bold red", "inaccurate": "yellow"}
    last = None
    for r in rows:
        if last is not None and r["case"] != last:
            t.add_section()
        name = r["case"] if r["case"] != last else ""
        last = r["case"]
        spread = (f"{r['p20_ms']:.4g}-{r['p80_ms']:.4g}" if r["p20_ms"] is not None else "-")
        pct = lambda f: "-" if f is None else f"{100 * f:.1f}"  # noqa: E731
        speed = "\n".join(f"{x:.2f}x {b}" for b, x in r["speedup"].items()) or "-"
        note = r["error"] or r["note"] or ""
        t.add_row(name, r["impl"], _fmt(r["median_ms"]), spread, _fmt(r["gbps"], ".1f"),
                  pct(r["frac_copy"]), _fmt(r["tflops"], ".3g"), pct(r["frac_matmul"]), speed,
                  _fmt(r["max_abs_err"], ".2g"), _fmt(r["first_call_ms"], ".1f"), note,
                  style=style[r["status"]])
    return t


@contextlib.contextmanager
def _flashkit_logs(console):
    """Show flashkit's INFO lines (JIT builds with their seconds) while the bench runs."""
    from rich.logging import RichHandler

    logger = logging.getLogger("flashkit")
    handler, level = RichHandler(console=console, show_path=False), logger.level
    logger.addHandler(handler)
    if level == logging.NOTSET or level > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make ``parser.error`` print one line (``prog: error: message``) and exit with status 2."""
    def error(message):
        parser.exit(2, f"{parser.prog}: error: {message}\n")

    parser.error = error
    return parser


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The bench options (shared by ``python -m flashkit.bench.run`` and ``flashkit bench``)."""
    p.add_argument("ops", nargs="*", metavar="OP",
                   help="public op names (any case), case-name prefixes or globs (default: all)")
    p.add_argument("--quick", action="store_true", help="small shapes, few repetitions (CI, demo)")
    p.add_argument("--json", metavar="PATH",
                   help="also write the record to PATH (rewritten after every case)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--no-save", action="store_true", help="do not add the record to bench/results/")
    p.add_argument("--list", action="store_true", help="list the selected cases and exit")
    p.add_argument("--ceilings", metavar="JSON",
                   help="take the ceilings from this record (one measured earlier in the same "
                        "run, e.g. gpucheck's environment section) instead of measuring them")
    return one_line_errors(p)


def _parser() -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(prog="python -m flashkit.bench.run",
                                                 description=__doc__.split("\n")[0]))


def argv_of(args: argparse.Namespace) -> list[str]:
    """The canonical argument list of parsed bench options (what the record calls the command)."""
    out = list(args.ops)
    for flag in ("quick", "no_save", "list"):
        if getattr(args, flag):
            out.append("--" + flag.replace("_", "-"))
    for opt in ("json", "device", "ceilings"):
        if getattr(args, opt):
            out += ["--" + opt, getattr(args, opt)]
    return out


def _check_json_path(parser, path: str) -> None:
    """Fail before any measurement when ``--json`` cannot be written."""
    import os

    target = os.path.abspath(path)
    parent = os.path.dirname(target)
    try:
        os.makedirs(parent, exist_ok=True)
        existed = os.path.exists(target)
        with open(target, "a"):
            pass
        if not existed:
            os.remove(target)
    except OSError as exc:
        parser.error(f"--json {path}: cannot write there ({exc.strerror or exc})")


def _load_ceilings(parser, path: str) -> dict:
    import json

    try:
        with open(path) as f:
            rec = json.load(f)
        ceilings = rec["ceilings"]
        float(ceilings["copy_gbps"]), float(ceilings["matmul_tflops"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        parser.error(f"--ceilings {path}: no ceilings record there ({type(exc).__name__}: {exc})")
    return dict(ceilings, source=str(path))


def main(argv: list[str] | None = None) -> int:
    """``python -m flashkit.bench.run [OP ...] [options]``; see :func:`add_arguments`."""
    parser = _parser()
    args_list = sys.argv[1:] if argv is None else list(argv)
    module = __spec__.name if __spec__ is not None else "bench.run"
    return run(parser.parse_args(args_list), parser,
               shlex.join([sys.executable, "-m", module, *args_list]))


def run(args: argparse.Namespace, parser: argparse.ArgumentParser, command: str) -> int:
    """Run the parsed bench options; ``command`` is recorded as the exact command."""
    import torch
    from rich.console import Console

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available() and not args.list:
        parser.error("--device cuda: no CUDA device is available")
    selected = cases(args.ops, device=device, quick=args.quick)
    if not selected:
        known = sorted({c.op for c in cases()})
        parser.error(f"no case matches {' '.join(args.ops) or 'anything'} on {device}"
                     f"{' with --quick' if args.quick else ''}; ops: {', '.join(known)}")

    console = Console() if sys.stdout.isatty() else Console(width=200)
    if args.list:
        for c in selected:
            console.print(f"{c.name}  [dim]{c.shape}[/dim]", highlight=False)
        return 0
    if args.json:
        _check_json_path(parser, args.json)
    given = _load_ceilings(parser, args.ceilings) if args.ceilings else None
    started = _dt.datetime.now(_dt.timezone.utc)
    rec = {"schema": 1, "timestamp": started.isoformat(timespec="seconds"),
           "command": command, "argv": argv_of(args),
           **record.environment(device),
           "settings": {"quick": args.quick, **SETTINGS[args.quick],
                        "timing": ("cuda events behind a spin kernel (host cases: perf_counter)"
                                   if device == "cuda" else "perf_counter per call")},
           "complete": False, "cases": [c.name for c in selected]}
    rows = []
    with _flashkit_logs(console):
        if given is not None:
            rec["ceilings"] = given
        else:
            with console.status("measuring the device's ceilings"):
                rec["ceilings"] = measure_ceilings(device, args.quick)
        for case in selected:
            with console.status(case.name):
                rows += run_case(case, device, args.quick, rec["ceilings"])
            rec["rows"] = rows
            if args.json:  # a run stopped from outside keeps every finished case
                record.write_json(rec, args.json)
    rec["rows"] = rows
    rec["complete"] = True
    rec["elapsed_s"] = round((_dt.datetime.now(_dt.timezone.utc) - started).total_seconds(), 2)

    console.print(_table(rows, rec["ceilings"], rec["device"]["name"]))
    if args.json:
        console.print(f"record written to {record.write_json(rec, args.json)}")
    if not args.no_save:
        directory = record.results_dir()
        if directory is None:
            console.print("not a source checkout: the record is not saved (use --json PATH)")
        else:
            console.print(f"record saved as {record.save(rec, directory)}")
    bad = [r for r in rows if r["status"] in ("error", "inaccurate")]
    if bad:
        console.print(f"[bold red]{len(bad)} row(s) failed:[/] "
                      + ", ".join(f"{r['case']} {r['impl']}" for r in bad))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
