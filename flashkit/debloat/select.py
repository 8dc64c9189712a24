"""Which fatbin entries a deployment on one GPU arch (and, given a trace, one workload) needs.

The rule, per container (one translation unit):

- cubins: a cubin for sm_XY runs on a device of compute capability X.Z only when Z >= Y (same
  major; an arch-specific sm_XYa cubin only when Z == Y). Of the cubins that run, those with the
  highest minor are kept (the driver would pick them), the rest dropped.
- PTX: dropped, unless ``keep_ptx``: then the PTX entries of the highest arch not above the
  target are kept (the driver JIT-compiles them where no cubin fits).
- with a trace (``used``, a set of kernel names, mangled or demangled), a cubin or PTX entry none
  of whose kernels is used is dropped too. Cubins without kernels (device variables only) and
  entries of kinds this reader does not know are always kept.
"""
from __future__ import annotations

import re

_ARCH = re.compile(r"^sm_(\d+)(a|f)?$")


def parse_arch(arch: str, name: str = "arch") -> tuple[int, int, str]:
    """``(major, minor, suffix)`` of ``sm_90`` / ``sm_90a`` (``compute_90`` is accepted too)."""
    if not isinstance(arch, str):
        raise TypeError(f"{name}: expected a str like 'sm_90', got {type(arch).__name__}")
    m = _ARCH.match(arch.replace("compute_", "sm_"))
    if not m:
        raise ValueError(f"{name}: expected an arch like 'sm_90' or 'sm_90a', got {arch!r}")
    num = int(m.group(1))
    return num // 10, num % 10, m.group(2) or ""


def _runs_on(entry_arch: str, target: str) -> bool:
    major, minor, suffix = parse_arch(entry_arch, "entry arch")
    tmajor, tminor, _ = parse_arch(target, "target")
    if suffix:
        return (major, minor) == (tmajor, tminor)
    return major == tmajor and minor <= tminor


def _ptx_fits(entry_arch: str, target: str) -> bool:
    major, minor, suffix = parse_arch(entry_arch, "entry arch")
    tmajor, tminor, _ = parse_arch(target, "target")
    return (major, minor) == (tmajor, tminor) if suffix else (major, minor) <= (tmajor, tminor)


def _used(row: dict, used: set[str] | None) -> bool:
    if used is None or not row["kernels"]:
        return True
    return any(k["name"] in used or k["demangled"] in used for k in row["kernels"])


def select_entries(rows: list[dict], target: str, keep_ptx: bool = False,
                   used: set[str] | None = None) -> list[dict]:
    """The rows (entries of one container, as `inspect_library` lists them) to keep."""
    parse_arch(target, "arch")
    cubins = [r for r in rows if r["kind"] == "cubin" and _runs_on(r["arch"], target)]
    best = max((parse_arch(r["arch"])[1] for r in cubins), default=None)
    ptx = [r for r in rows if r["kind"] == "ptx" and _ptx_fits(r["arch"], target)]
    best_ptx = max((parse_arch(r["arch"])[:2] for r in ptx), default=None)
    runnable = {id(r) for r in cubins + ptx}
    kept = []
    for r in rows:
        if r["kind"] == "cubin":
            keep = id(r) in runnable and parse_arch(r["arch"])[1] == best and _used(r, used)
        elif r["kind"] == "ptx":
            keep = (keep_ptx and id(r) in runnable and parse_arch(r["arch"])[:2] == best_ptx
                    and _used(r, used))
        else:
            keep = True
        if keep:
            kept.append(r)
    return kept


def group_by_container(report: dict) -> dict[tuple[str, int], list[dict]]:
    """The report's entry rows keyed by (section, container index), in file order."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in report["entries"]:
        groups.setdefault((r["section"], r["container"]), []).append(r)
    return groups


def arch_savings(report: dict, target: str, keep_ptx: bool = False) -> int:
    """Entry bytes (as stored) that a ``target``-only deployment drops from ``report``."""
    dropped = 0
    for rows in group_by_container(report).values():
        kept = select_entries(rows, target, keep_ptx)
        dropped += sum(r["stored_bytes"] for r in rows) - sum(r["stored_bytes"] for r in kept)
    return dropped
