"""The goals table of a GPU-check run: ``python -m flashkit.gpucheck.report DIR``.

Reads the section files of one run and prints, as Markdown, each goal of issue 11 with what the
run measured (ratios within that run), the goal and whether it was met; then the failed tests
and rows. gpucheck prints it as its last output, so the end of the log carries it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["goals", "markdown", "main"]

_DECODE, _PREFILL = "BatchDecodeWithPagedKVCacheWrapper", "single_prefill_with_kv_cache"


def _load(out_dir: Path) -> dict:
    """{section name: its record} for the files present."""
    recs = {}
    for path in sorted(out_dir.glob("[0-9][0-9]_*.json")):
        try:
            rec = json.loads(path.read_text())
        except ValueError:
            continue
        if rec.get("kind") == "gpucheck-section":
            recs[rec["section"]] = rec
    return recs


def _rows(recs: dict) -> list[dict]:
    out = []
    for rec in recs.values():
        result = rec.get("result")
        if isinstance(result, dict) and isinstance(result.get("rows"), list):
            out += [r for r in result["rows"] if "case" in r]
    return out


def _best(rows, case, prefix, key="median_ms"):
    """The fastest ok row of ``case`` whose impl starts with ``prefix`` (None if none)."""
    ok = [r for r in rows if r["case"] == case and r["impl"].startswith(prefix)
          and r["status"] == "ok" and r.get(key) is not None]
    return min(ok, key=lambda r: r["median_ms"]) if ok else None


def _ratio(rows, case, baseline_prefix):
    """(flashkit's best speedup over the best baseline row, text) for one case."""
    fk, base = _best(rows, case, "flashkit-"), _best(rows, case, baseline_prefix)
    if fk is None or base is None:
        return None, f"no ok {'flashkit' if fk is None else baseline_prefix} row"
    return base["median_ms"] / fk["median_ms"], (f"{base['median_ms'] / fk['median_ms']:.2f}x "
                                                  f"({fk['impl']} vs {base['impl']})")


def goals(recs: dict) -> list[tuple[str, str, str, bool | None]]:
    """(what, measured, goal, met) per goal; met None where the run has no number for it."""
    rows, out = _rows(recs), []
    cases = sorted({r["case"] for r in rows})
    for case in (c for c in cases if c.startswith(_DECODE + "/")):
        if "uniform" in case and int(case.split("_kv")[1].split("_")[0]) >= 4096:
            fk = _best(rows, case, "flashkit-")
            frac = fk and fk.get("frac_copy")
            out.append((case, "-" if frac is None else f"{100 * frac:.1f}% of copy "
                        f"({fk['impl']})", ">= 90% of copy", None if frac is None else
                        frac >= 0.9))
        if "zipf" in case:
            x, text = _ratio(rows, case, "torch-flex_attention")
            out.append((case, text, ">= 1.1x flex_attention", None if x is None else x >= 1.1))
    for case in (c for c in cases if c.startswith(_PREFILL + "/")):
        x, text = _ratio(rows, case, "torch-sdpa")
        out.append((case, text, ">= 0.9x best SDPA", None if x is None else x >= 0.9))
        if case.endswith("causal_seq8192"):
            fk = _best(rows, case, "flashkit-")
            frac = fk and fk.get("frac_matmul")
            out.append((case, "-" if frac is None else f"{100 * frac:.1f}% of matmul",
                        ">= 75% of matmul", None if frac is None else frac >= 0.75))
    for case in (c for c in cases if c.startswith("chunk_ssd_scan/")):
        x, text = _ratio(rows, case, "fla-")
        out.append((case, text, ">= 1.2x fla-core", None if x is None else x >= 1.2))
        if "/ckpt_" in case:
            plain = _best(rows, case.replace("/ckpt_", "/"), "flashkit-")
            ck = _best(rows, case, "flashkit-")
            extra = None if plain is None or ck is None else ck["median_ms"] / plain[
                "median_ms"] - 1
            out.append((case, "-" if extra is None else f"{100 * extra:+.1f}% over no "
                        "checkpoints", "<= 5% extra", None if extra is None else extra <= 0.05))
    for case in (c for c in cases if c.startswith("fused_moe/")):
        x, text = _ratio(rows, case, "torch-grouped_mm")
        out.append((case, text, ">= 1.2x torch._grouped_mm", None if x is None else x >= 1.2))
    jit = recs.get("jit_cold", {}).get("result") or {}
    for r in jit.get("rows", []):
        if r.get("backend") == "decode":
            out.append(("cold JIT, decode end to end", f"{r['cold_s']:.2f} s", "< 2 s",
                        r["cold_s"] < 2.0))
    return out


def markdown(out_dir) -> str:
    """The goals table, then the sections' status, failed tests and failed rows."""
    recs = _load(Path(out_dir))
    lines = ["| case | measured | goal | met |", "| --- | --- | --- | --- |"]
    mark = {True: "yes", False: "**no**", None: "-"}
    lines += [f"| `{what}` | {got} | {goal} | {mark[met]} |" for what, got, goal, met in
              goals(recs)]
    lines.append("")
    for name, rec in recs.items():
        lines.append(f"- {name}: {rec['status']} ({rec.get('elapsed_s', 0):.0f} s of "
                     f"{rec.get('cap_s', 0):.0f})")
    for t in recs.get("tests", {}).get("tests", {}).get("failed", []):
        lines.append(f"  - FAILED {t['test']}")
    for r in _rows(recs):
        if r["status"] in ("error", "inaccurate"):
            lines.append(f"  - {r['status'].upper()} {r['case']} {r['impl']}: "
                         f"{r.get('error') or r.get('note')}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m flashkit.gpucheck.report",
                                description=__doc__.split("\n")[0])
    p.add_argument("out_dir", metavar="DIR", help="a gpucheck run's folder")
    args = p.parse_args(argv)
    if not Path(args.out_dir).is_dir():
        p.exit(2, f"{p.prog}: error: {args.out_dir}: not a folder\n")
    print(markdown(args.out_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
