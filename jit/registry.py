"""Shipped specializations: what `flashkit jit build` prebuilds.

Each op family registers a function ``(arch) -> list[KernelSpec]`` under its name; the CLI
imports flashkit.ops to fill the registry. ``arch`` (``"sm_90"``) only matters to nvrtc specs.
"""
from __future__ import annotations

import fnmatch
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable

from .cache import BuildResult, build
from .env import build_workers
from .spec import KernelSpec

_SHIPPED: dict[str, Callable[[str], list[KernelSpec]]] = {}


def register_shipped(family: str, specs_for_arch: Callable[[str], list[KernelSpec]]):
    _SHIPPED[family] = specs_for_arch


def shipped_specs(archs: Iterable[str] = ("sm_90",), patterns: Iterable[str] = ()) -> list[KernelSpec]:
    """Every shipped spec for ``archs`` whose family or name matches one of ``patterns``
    (shell globs; none means all). Arch-independent specs appear once."""
    patterns = list(patterns)
    out: dict[KernelSpec, None] = {}
    for family, fn in sorted(_SHIPPED.items()):
        for arch in archs:
            for spec in fn(arch):
                if not patterns or any(fnmatch.fnmatch(family, p) or fnmatch.fnmatch(spec.name, p)
                                       for p in patterns):
                    out[spec] = None
    return list(out)


def build_many(specs: list[KernelSpec], workers: int | None = None,
               progress: bool = False) -> list[BuildResult | BaseException]:
    """Build ``specs`` in parallel (NVRTC and ninja release the GIL while compiling).

    Returns one BuildResult or exception per spec, in order; a failure never stops the others.
    """
    def one(spec):
        try:
            return build(spec)
        except Exception as exc:
            return exc

    workers = workers or build_workers()
    if not progress:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(one, specs))
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("[bold]jit build"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("{task.description}"))
    with Progress(*columns, transient=False) as bar, ThreadPoolExecutor(workers) as pool:
        task = bar.add_task("", total=len(specs))
        futures = [pool.submit(one, s) for s in specs]
        results = []
        for spec, fut in zip(specs, futures):
            results.append(fut.result())
            bar.update(task, advance=1, description=spec.name)
        return results
