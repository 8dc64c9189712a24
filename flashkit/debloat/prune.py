"""Prune a shared library's fatbin to one GPU arch (and, given a trace, one workload's kernels)."""
from __future__ import annotations

import os

from .elf import HostLibrary
from .inspect import _describe
from .select import group_by_container, parse_arch, select_entries


def prune_library(path: str | os.PathLike, out: str | os.PathLike, arch: str,
                  keep_ptx: bool = False, used: set[str] | None = None) -> dict:
    """Write a copy of the library ``path`` to ``out`` whose `.nv_fatbin` keeps only the entries
    `flashkit.debloat.select.select_entries` selects for ``arch`` (and ``used`` kernel names).

    Returns
    -------
    dict
        ``path``, ``out``, ``arch``, ``bytes_before`` / ``bytes_after`` (file sizes),
        ``fatbin_before`` / ``fatbin_after`` (section bytes), ``entries_before`` /
        ``entries_kept``, ``kernels_kept`` (mangled names of the kept cubins' kernels),
        ``containers_without_code`` (containers that had a cubin or PTX able to run on ``arch``
        and keep none: their kernels fail to launch there),
        ``split`` (whether the segment was split) and ``cut_bytes``.

    Raises
    ------
    FatbinError
        (a ValueError) the library does not parse, has no `.nv_fatbin`, or cannot be rewritten
        safely (see `flashkit.debloat.rewrite`).
    """
    from .rewrite import rewrite_fatbin

    for name, value in (("path", path), ("out", out)):
        if not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"{name}: expected a str or PathLike, got {type(value).__name__}")
    parse_arch(arch, "arch")
    if used is not None and not isinstance(used, (set, frozenset)):
        raise TypeError(f"used: expected a set of kernel names, got {type(used).__name__}")
    if os.path.abspath(path) == os.path.abspath(out):
        raise ValueError(f"out: must differ from the input {path}")
    with HostLibrary(path) as lib:
        report = _describe(lib, kernels=True)
        sec = next((f for f in lib.fatbins if f.name == ".nv_fatbin"), None)
        if sec is None:
            from .fatbin import FatbinError

            raise FatbinError(f"{path}: no .nv_fatbin section (not a CUDA library?)")
        entries = {e.offset: e for c in sec.containers for e in c.entries}
        keep, kernels, bare = {}, [], 0
        for (section, ci), rows in group_by_container(report).items():
            if section != ".nv_fatbin":
                continue
            kept = select_entries(rows, arch, keep_ptx, used)
            keep[sec.containers[ci].offset] = [entries[r["offset"]] for r in kept]
            kernels += [k["name"] for r in kept if r["kind"] == "cubin" for k in r["kernels"]]
            runnable = select_entries(rows, arch, keep_ptx=True)
            if runnable and not any(r["kind"] in ("cubin", "ptx") for r in kept):
                bare += 1
        info = rewrite_fatbin(lib, keep, os.fspath(out))
    after = os.path.getsize(out)
    return {"path": os.fspath(path), "out": os.fspath(out), "arch": arch,
            "bytes_before": report["file_bytes"], "bytes_after": after,
            "fatbin_before": sec.size,
            "fatbin_after": sum(16 + sum(e.size for e in v) for v in keep.values()),
            "entries_before": sum(len(c.entries) for c in sec.containers),
            "entries_kept": sum(len(v) for v in keep.values()),
            "kernels_kept": sorted(kernels), "containers_without_code": bare, **info}
