"""Triton backend: the rendered source is a Python module of @triton.jit kernels.

Triton compiles each kernel for the device on first launch and keeps its own binary cache; this
backend's job is to give every specialization its own module file, checked for syntax at build
time, and imported from the cache (so tracebacks point at the rendered file).
"""
from __future__ import annotations

import importlib.util
import sys
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
        return module
