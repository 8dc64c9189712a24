"""The registry of benchmark cases: one ``Case`` per (op, shape), registered by bench/cases/*.

A case builds its inputs lazily in ``setup(device, quick)``, which returns a ``Setup``: the
flashkit implementations to time (``"flashkit-<backend>"``), the baselines measured beside them
in the same process, one or more input sets, and the reference that every output is checked
against once. The FLOP and byte counts are written, with their formulas, next to each case.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import math
import pkgutil
from typing import Callable, Sequence

__all__ = ["Case", "Setup", "Unavailable", "register", "cases", "load_cases", "input_sets",
           "optional", "needs_cuda"]


@dataclasses.dataclass
class Setup:
    """What a case's ``setup`` returns.

    impls : {"flashkit-<backend>": fn}, each called as ``fn(*inputs[i])``
    baselines : {"torch-reference": fn, ...}, called the same way; speedups are against these
    inputs : one or more argument tuples; timing cycles through them (several where one set
        would stay in L2 between repetitions)
    reference : the oracle for the error check (float32 math), called on ``inputs[0]``
    atol : a row whose max abs error exceeds this is reported as inaccurate
    skipped : {impl: why it is not timed here}; reported as rows, never dropped silently
    """

    impls: dict[str, Callable]
    baselines: dict[str, Callable]
    inputs: list[tuple]
    reference: Callable | None = None
    atol: float | None = None
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark: an op at one shape.

    name : "<op>/<shape id>", unique
    op : the op family selected on the command line ("merge_states")
    shape : a readable shape description
    setup : (device, quick) -> Setup
    flops, bytes : per call, from the case's formulas (0: not meaningful, e.g. host code)
    devices : device types the case runs on
    full : whether a normal run includes it
    quick : device types whose ``--quick`` run includes it
    host : host code, timed on the CPU whatever ``--device`` says
    cold_l2 : flush L2 before each repetition
    """

    name: str
    op: str
    shape: str
    setup: Callable[[str, bool], Setup]
    flops: float = 0.0
    bytes: float = 0.0
    devices: tuple[str, ...] = ("cpu", "cuda")
    full: bool = True
    quick: tuple[str, ...] = ()
    host: bool = False
    cold_l2: bool = False


_CASES: dict[str, Case] = {}


class Unavailable(Exception):
    """Raised by a builder passed to :func:`optional`: this implementation cannot run here (the
    message says why, e.g. "needs a CUDA device")."""


def optional(table: dict, skipped: dict, name: str, build: Callable[[], Callable]) -> bool:
    """``table[name] = build()`` if it can be built here, else ``skipped[name] = why``.

    The one way every case adds an implementation or baseline that may be missing: ``build``
    imports what it needs and returns the callable (it may call it once to probe). An
    ImportError becomes "<module> is not installed", :class:`Unavailable` its message, any other
    exception "<type>: <message>" (a baseline that cannot run is a skipped row with its reason,
    never a missing one). Returns whether it was added. flashkit's own implementations are
    added directly, not through this: a failure there is an error row, never a skip.
    """
    try:
        table[name] = build()
        return True
    except ImportError as exc:
        skipped[name] = f"{exc.name or exc} is not installed"
    except Unavailable as exc:
        skipped[name] = str(exc)
    except Exception as exc:  # noqa: BLE001 - any failure to build is the row's reason
        text = f"{type(exc).__name__}: {exc}".strip().splitlines()
        skipped[name] = text[0][:300] if text else type(exc).__name__
    return False


def needs_cuda(device: str) -> None:
    """Raise :class:`Unavailable` unless ``device`` is a CUDA device."""
    if not str(device).startswith("cuda"):
        raise Unavailable("needs a CUDA device")


def register(case: Case) -> Case:
    if case.name in _CASES:
        raise ValueError(f"benchmark case {case.name!r} is registered twice")
    _CASES[case.name] = case
    return case


def load_cases() -> None:
    """Import every module of the ``cases`` package next to this one (they register cases)."""
    pkg = importlib.import_module(f"{__package__}.cases")
    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{info.name}")


def _matches(case: Case, pattern: str) -> bool:
    """An op (its public name, any case: ``apollo`` selects ``APOLLO``), a case-name prefix or a
    glob."""
    return (pattern.lower() == case.op.lower() or case.name.startswith(pattern)
            or fnmatch.fnmatchcase(case.name, pattern))


def cases(patterns: Sequence[str] = (), *, device: str | None = None,
          quick: bool | None = None) -> list[Case]:
    """Registered cases matching any pattern (an op, a name prefix or a glob; none: all),
    runnable on ``device``'s type and part of the quick / full selection, in registration order."""
    load_cases()
    dev_type = None if device is None else str(device).split(":")[0]
    selected = []
    for c in _CASES.values():
        if patterns and not any(_matches(c, p) for p in patterns):
            continue
        if dev_type is not None and not (c.host or dev_type in c.devices):
            continue
        in_quick = bool(c.quick) if dev_type is None else dev_type in c.quick
        if quick is not None and not (in_quick if quick else c.full):
            continue
        selected.append(c)
    return selected


def input_sets(set_bytes: int, device: str, *, cap: int = 32) -> int:
    """How many input sets to rotate through so that the working set is at least 4x L2.

    One set of 8 MB on an H100 (50 MB L2) gives 25 sets. On the CPU one set: CPU timings here
    are smoke tests, not the numbers we compare.
    """
    if not str(device).startswith("cuda"):
        return 1
    import torch

    props = torch.cuda.get_device_properties(torch.device(device))
    l2 = getattr(props, "L2_cache_size", 0) or 50 * 2**20
    return max(1, min(cap, math.ceil(4 * l2 / max(set_bytes, 1))))
