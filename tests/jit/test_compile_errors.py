"""A rejected source raises JitCompileError pointing at its files; every compile is logged."""
import logging
import re
from pathlib import Path

import pytest

from flashkit import jit

from .specs import BACKENDS, broken_spec, spec_for

# The compiler's first error line, per backend (gcc's quotes depend on the locale).
FIRST_ERROR = {
    "triton": r"SyntaxError: .*",
    "nvrtc": r'error: identifier "not_declared_anywhere" is undefined',
    "ninja": r"error: .not_declared_anywhere. was not declared.*",
}


@pytest.fixture(params=BACKENDS)
def failure(request, isolated_cache):
    backend = request.param
    spec = broken_spec(backend)
    with pytest.raises(jit.JitCompileError) as info:
        jit.build(spec)
    return backend, spec, info.value


def test_message_names_uri_source_and_log(failure):
    _, spec, exc = failure
    message = str(exc)
    assert exc.uri == spec.uri and spec.uri in message
    assert exc.source_path in message
    assert exc.log_path in message


def test_source_file_holds_the_rendered_source(failure):
    _, spec, exc = failure
    assert Path(exc.source_path).read_text() == spec.source


def test_log_file_holds_the_compiler_output(failure):
    backend, _, exc = failure
    log = Path(exc.log_path).read_text()
    assert re.search(FIRST_ERROR[backend], log), log


def test_message_quotes_the_first_error_line(failure):
    backend, _, exc = failure
    log = Path(exc.log_path).read_text()
    first = re.search(FIRST_ERROR[backend], log).group(0)
    assert first in str(exc)


def test_failed_build_leaves_no_entry_and_no_temp_dirs(failure):
    _, spec, _ = failure
    entry = jit.entry_dir(spec)
    assert not entry.exists()
    assert [p.name for p in entry.parent.iterdir() if p.name.startswith(".")] == []
    assert jit.list_entries() == []


def test_failure_is_not_cached_and_load_raises_too(failure, monkeypatch):
    _, spec, first = failure
    calls = []
    backend = jit.get_backend(spec.backend)
    real = type(backend).compile

    def counting(self, *args):
        calls.append(1)
        return real(self, *args)

    monkeypatch.setattr(type(backend), "compile", counting)
    with pytest.raises(jit.JitCompileError) as again:
        jit.load(spec)
    assert calls == [1]
    assert again.value.log_path == first.log_path and Path(first.log_path).is_file()


# --- compile logging --------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["triton", "nvrtc"])  # ninja: test_corruption's rebuild
def test_compile_logs_uri_and_seconds(backend, isolated_cache, caplog):
    spec = spec_for(backend)
    with caplog.at_level(logging.INFO, logger="flashkit.jit"):
        result = jit.build(spec)
    messages = [r.getMessage() for r in caplog.records if r.name == "flashkit.jit"]
    match = [m for m in messages if re.search(rf"{spec.uri}\b.* \d+\.\d+ s\b", m)]
    assert len(match) == 1, messages
    assert result.compiled


def test_cache_hit_logs_no_compile(isolated_cache, caplog):
    spec = spec_for("triton")
    jit.build(spec)
    with caplog.at_level(logging.INFO, logger="flashkit.jit"):
        jit.build(spec)
        jit.load(spec)
    assert not [r for r in caplog.records if "compiled" in r.getMessage()]
