"""Triton backend: the rendered source is a Python module of @triton.jit kernels.

Triton compiles each kernel for the device on first launch and keeps its own binary cache; this
backend's job is to give every specialization its own module file, checked for syntax at build
time, and imported from the cache (so tracebacks point at the rendered file).
"""
from __future__ import annotations

import importlib.util
import sys
import tempfile
import traceback
from pathlib import Path

from ..errors import JitCompileError
from .base import Backend


class TritonBackend(Backend):
    name = "triton"
    source_suffix = ".py"

    def available(self):
        if importlib.util.find_spec("triton") is None:
            return False, "triton is not installed"
        return True, ""

    def toolchain(self) -> str:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"triton-{version('triton')}"
        except PackageNotFoundError:
            return "triton-missing"

    def compile(self, spec, source_path: Path, build_dir: Path) -> Path:
        log_path = build_dir / "build.log"
        try:
            compile(source_path.read_text(), f"{spec.uri}/{source_path.name}", "exec")
        except SyntaxError:
            log = traceback.format_exc(limit=0)
            log_path.write_text(log)
            raise JitCompileError(spec.uri, source_path, log_path, "error: " + log) from None
        log_path.write_text("syntax ok\n")
        return source_path

    def load(self, spec, artifact: Path):
        module_name = f"flashkit_jit_{spec.uri}"
        if module_name in sys.modules:
            return sys.modules[module_name]
        mod_spec = importlib.util.spec_from_file_location(module_name, artifact)
        module = importlib.util.module_from_spec(mod_spec)
        # @triton.jit reads the kernel's source through the module, so it must be registered.
        sys.modules[module_name] = module
        try:
            mod_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
        for value in vars(module).values():
            if _is_triton_function(value):
                _report_launch_errors(value, spec.uri, artifact)
        return module


def _is_triton_function(value) -> bool:
    from triton.runtime.jit import JITFunction

    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover - older Triton
        InterpretedFunction = JITFunction
    return isinstance(value, (JITFunction, InterpretedFunction))


def _launch_error_types() -> tuple:
    """What Triton raises when a kernel's source is wrong: its compiler's CompilationError (an
    undefined name, a type error: seen at the first launch on a GPU) and the interpreter's
    InterpreterError (the same mistakes under TRITON_INTERPRET=1)."""
    from triton.compiler.errors import CompilationError

    types = [CompilationError]
    try:
        from triton.runtime.errors import InterpreterError

        types.append(InterpreterError)
    except ImportError:  # pragma: no cover - older Triton
        pass
    return tuple(types)


def _report_launch_errors(fn, uri: str, source_path: Path) -> None:
    """Make a compile error at launch a JitCompileError naming the uri, the rendered source and
    a log, as a build error is. ``fn[grid](...)`` calls ``fn.run``; the class's ``run`` is looked
    up at each call so that wrappers installed on the class later (triton_aot's recorder) still
    apply."""
    errors = _launch_error_types()

    def run(*args, **kwargs):
        try:
            return type(fn).run(fn, *args, **kwargs)
        except errors as exc:
            text = "".join(traceback.format_exception(exc))
            raise JitCompileError(uri, source_path, _write_launch_log(source_path, uri, text),
                                  f"error: launching {fn.__name__}: {exc}\n{text}") from exc

    fn.run = run


def _write_launch_log(source_path: Path, uri: str, text: str) -> Path:
    """launch.log beside the source, or in the temp folder when the cache is read-only."""
    for folder in (source_path.parent, Path(tempfile.gettempdir())):
        path = folder / ("launch.log" if folder == source_path.parent else f"{uri}.launch.log")
        try:
            path.write_text(text)
            return path
        except OSError:
            continue
    return source_path.parent / "launch.log"
