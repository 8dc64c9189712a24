"""The sweep's two kinds of case, as table rows.

``Case(id, call, raises, match)``: ``call()`` must raise ``raises`` with a message matching the
regex ``match`` (naming the argument or variable); ``raises=None`` means it must return, and
``match`` then applies to ``repr`` of the result. ``call`` may take ``tmp_path`` (a fresh
folder). ``CliCase(id, argv, status, match)`` runs ``flashkit.cli.main(argv)`` in-process with
``env`` set and ``files`` written under tmp_path (``{tmp}`` in argv is that folder): the exit
status must be ``status`` and stderr must match ``match`` and, unless ``traceback``, hold no
traceback.

A family's file is a table::

    test_fused_moe = table([
        Case("num_experts-zero", lambda: FusedMoE(0, 8, 16), ValueError, r"num_experts"),
    ])

conftest.py counts every case and property example tried and prints the totals.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
import re
from contextlib import contextmanager
from typing import Any, Callable

import pytest

TRIED = {"table": 0, "cli": 0, "property": 0}


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    call: Callable[..., Any]
    raises: type[BaseException] | tuple | None
    match: str = ""


@dataclasses.dataclass(frozen=True)
class CliCase:
    id: str
    argv: tuple
    status: int = 2
    match: str = ""
    env: tuple = ()  # (name, value) pairs; value None unsets
    files: tuple = ()  # (name, bytes) pairs written under tmp_path first
    traceback: bool = False


def run_case(case: Case, tmp_path) -> None:
    TRIED["table"] += 1
    kwargs = {"tmp_path": tmp_path} if "tmp_path" in inspect.signature(case.call).parameters else {}
    if case.raises is None:
        result = case.call(**kwargs)
        assert re.search(case.match, repr(result)), f"{case.id}: returned {result!r}"
        return
    with pytest.raises(case.raises) as info:
        case.call(**kwargs)
    message = str(info.value)
    assert re.search(case.match, message), (
        f"{case.id}: {type(info.value).__name__}({message!r}) does not match {case.match!r}")


def run_cli_case(case: CliCase, tmp_path, monkeypatch, capsys) -> None:
    from flashkit.cli import main

    TRIED["cli"] += 1
    monkeypatch.setenv("FLASHKIT_CACHE_DIR", str(tmp_path / "cache"))
    for name, value in case.env:
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    for name, data in case.files:
        (tmp_path / name).write_bytes(data)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in case.argv]
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's errors
        status = exc.code
    err = capsys.readouterr().err
    assert status == case.status, f"{case.id}: exit {status}, stderr:\n{err}"
    assert re.search(case.match, err), f"{case.id}: stderr does not match {case.match!r}:\n{err}"
    if not case.traceback:
        assert "Traceback" not in err, f"{case.id}: traceback on stderr:\n{err}"
        if case.status == 2:
            last = err.strip().splitlines()[-1] if err.strip() else ""
            assert last.startswith("flashkit"), f"{case.id}: last line {last!r} names no command"


def table(rows: list) -> Callable:
    """A parametrized test over ``rows`` (Case or CliCase), one test id per row."""
    ids = [r.id for r in rows]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    assert not duplicates, f"duplicate case ids: {duplicates}"
    params = [pytest.param(r, id=r.id) for r in rows]

    if all(isinstance(r, CliCase) for r in rows):
        @pytest.mark.parametrize("case", params)
        def test(case, tmp_path, monkeypatch, capsys):
            run_cli_case(case, tmp_path, monkeypatch, capsys)
    else:
        @pytest.mark.parametrize("case", params)
        def test(case, tmp_path):
            run_case(case, tmp_path)
    return test


def tried_example() -> None:
    """Count one property-based example (call it first thing in a @given test)."""
    TRIED["property"] += 1


@contextmanager
def environ(**values):
    """Set (or, with None, unset) environment variables for a block; for property tests, where a
    function-scoped monkeypatch would be shared by every example."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def with_env(call: Callable, **values) -> Callable:
    """``call`` run with environment variables set: a table row's callable."""
    def run():
        with environ(**values):
            return call()
    return run
