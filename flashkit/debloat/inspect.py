"""What GPU code a shared library carries: bytes per arch, cubins, PTX and the kernels in each."""
from __future__ import annotations

import os
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .cubin import cubin_kernels, ptx_kernels
from .demangle import demangle
from .elf import HostLibrary
from .fatbin import FatbinError, payload


def inspect_library(path: str | os.PathLike, kernels: bool = True) -> dict:
    """Describe the fatbins of the shared library ``path``.

    Parameters
    ----------
    path : str or PathLike
        An ELF64 shared object (or executable).
    kernels : bool
        Also decompress each cubin and PTX entry and list its kernels (default). ``False``
        reads headers only.

    Returns
    -------
    dict
        ``path``, ``file_bytes``, ``gpu_bytes`` (bytes of all containers as stored),
        ``gpu_share``, ``archs`` (``{arch: {"cubin": bytes, "ptx": bytes, "other": bytes,
        "kernels": n}}``), ``sections``, ``entries`` (one dict per entry: ``section``,
        ``container``, ``kind``, ``arch``, ``version``, ``flags``, ``unknown_flags``,
        ``compression``, ``stored_bytes``, ``bytes`` uncompressed, ``kernels`` as
        ``[{"name", "demangled", "size"}]``; PTX kernels have ``size`` None) and ``warnings``.

    Raises
    ------
    FatbinError
        (a ValueError) the file is not an ELF64 file, or a header, container or payload is bad.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a str or PathLike, got {type(path).__name__}")
    with HostLibrary(path) as lib:
        return _describe(lib, kernels)


def _entry_kernels(lib: HostLibrary, e, where: str) -> list[tuple[str, int | None]]:
    data = payload(lib.mm, e, where)
    try:
        if e.kind == "cubin":
            return cubin_kernels(data, where)
        return [(n, None) for n in ptx_kernels(data)]
    finally:
        if isinstance(data, memoryview):
            data.release()


def _describe(lib: HostLibrary, kernels: bool) -> dict:
    report = {"path": lib.path, "file_bytes": lib.size, "gpu_bytes": 0, "archs": {},
              "sections": [], "entries": [], "warnings": []}
    unknown: dict[int, list[int]] = {}
    todo = []
    for sec in lib.fatbins:
        report["sections"].append({"name": sec.name, "offset": sec.offset, "size": sec.size,
                                   "containers": len(sec.containers)})
        for ci, c in enumerate(sec.containers):
            report["gpu_bytes"] += c.size
            for e in c.entries:
                row = {"section": sec.name, "container": ci, "offset": e.offset,
                       "kind": e.kind, "arch": e.arch, "version": list(e.version),
                       "flags": e.flags, "unknown_flags": e.unknown_flags,
                       "compression": e.compression, "stored_bytes": e.size,
                       "bytes": e.uncompressed_size or e.payload_size, "kernels": []}
                if e.unknown_flags:
                    unknown.setdefault(e.unknown_flags, []).append(e.offset)
                if kernels and e.kind in ("cubin", "ptx"):
                    todo.append((row, e, f"{lib.path} {sec.name} entry at {e.offset:#x}"))
                arch = report["archs"].setdefault(e.arch, {"cubin": 0, "ptx": 0, "other": 0,
                                                           "kernels": 0})
                arch[e.kind if e.kind in ("cubin", "ptx") else "other"] += e.size
                report["entries"].append(row)
    # Decompression is most of the time (libcublasLt 12.9: 4.1 s zstd + 1.8 s LZ4 of 12.5 s)
    # and lz4/zstandard release the GIL, so the entries are spread over the cores.
    workers = min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) if workers > 1 and len(todo) > 64 else _Serial() as pool:
        found = pool.map(lambda t: _entry_kernels(lib, t[1], t[2]), todo)
        for (row, e, _), names in zip(todo, found):
            row["kernels"] = [{"name": n, "demangled": demangle(n), "size": size}
                              for n, size in names]
            if e.kind == "cubin":
                report["archs"][e.arch]["kernels"] += len(names)
    for bits, offsets in sorted(unknown.items()):
        report["warnings"].append(f"{len(offsets)} entries carry unknown flag bits {bits:#x} "
                                  f"(first at offset {offsets[0]:#x}); they are listed as "
                                  "parsed, the bits not interpreted")
    report["gpu_share"] = report["gpu_bytes"] / lib.size if lib.size else 0.0
    return report


class _Serial:
    """A stand-in for the thread pool on one core or a few entries."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    map = staticmethod(map)


def iter_shared_objects(root: str | os.PathLike):
    """Every ELF shared object (``*.so``, ``*.so.N``) under ``root``, symlinks not followed."""
    for dirpath, _dirs, files in os.walk(root):
        for name in sorted(files):
            if name.endswith(".so") or ".so." in name:
                p = Path(dirpath, name)
                if p.is_file() and not p.is_symlink():
                    try:
                        with open(p, "rb") as f:
                            magic = f.read(4)
                    except OSError:  # unreadable: not ours to report on
                        continue
                    if magic == b"\x7fELF":
                        yield p


def inspect_site_packages(root: str | os.PathLike | None = None, kernels: bool = False
                          ) -> list[dict]:
    """`inspect_library` over every shared object under ``root`` (default: this interpreter's
    site-packages), sorted by GPU bytes, largest first. Files that do not parse get a report
    with ``error`` set instead of raising."""
    root = Path(root if root is not None else sysconfig.get_paths()["purelib"])
    if not root.is_dir():
        raise ValueError(f"root: {root} is not a directory")
    reports = []
    for p in iter_shared_objects(root):
        try:
            reports.append(inspect_library(p, kernels=kernels))
        except FatbinError as exc:
            reports.append({"path": str(p), "file_bytes": p.stat().st_size, "gpu_bytes": 0,
                            "gpu_share": 0.0, "archs": {}, "error": str(exc)})
    return sorted(reports, key=lambda r: (-r["gpu_bytes"], r["path"]))
