"""Ninja backend: rendered C++ host code with pybind11 bindings, built into a Python extension.

The build is a generated build.ninja (compile, then link) run by the ``ninja`` binary; the
extension's module name is the uri (passed as -DFLASHKIT_MODULE_NAME), so two versions of one
template can be loaded side by side.
"""
from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from ..env import CSRC_DIR
from ..errors import BackendUnavailableError, JitCompileError
from .base import Backend

# -O2: the host planners are loops over a few thousand items; -O3 changed nothing measurable and
# added compile time. -fvisibility=hidden is what pybind11 asks for.
CXXFLAGS = ("-O2", "-std=c++17", "-fPIC", "-fvisibility=hidden", "-Wall")


@functools.lru_cache(maxsize=None)
def _cxx() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@functools.lru_cache(maxsize=None)
def _ninja() -> str | None:
    try:
        import ninja

        path = os.path.join(ninja.BIN_DIR, "ninja")
        if os.path.exists(path):
            return path
    except ImportError:
        pass
    return shutil.which("ninja")


@functools.lru_cache(maxsize=None)
def _cxx_version() -> str:
    cxx = _cxx()
    if cxx is None:
        return "none"
    out = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else cxx


def _ninja_words(words) -> str:
    """``words`` as one ninja variable value: each shell-quoted (ninja runs commands through
    /bin/sh), then ``$`` escaped for ninja, so every flag and path stays exactly one argument."""
    return " ".join(shlex.quote(str(w)) for w in words).replace("$", "$$")


def _pybind11_include() -> str:
    import pybind11

    return pybind11.get_include()


class NinjaBackend(Backend):
    name = "ninja"
    source_suffix = ".cpp"

    def available(self):
        missing = [what for what, ok in (("a C++ compiler", _cxx()), ("ninja", _ninja()),
                                         ("pybind11", importlib.util.find_spec("pybind11")))
                   if not ok]
        return (not missing, "missing " + ", ".join(missing) if missing else "")

    def toolchain(self) -> str:
        try:
            import pybind11

            pyb = pybind11.__version__
        except ImportError:
            pyb = "missing"
        return f"{_cxx_version()}|pybind11-{pyb}|{sysconfig.get_config_var('EXT_SUFFIX')}"

    def target_dir(self, spec) -> str:
        return "host-" + (sysconfig.get_config_var("EXT_SUFFIX") or ".so").strip(".").rsplit(".", 1)[0]

    def compile(self, spec, source_path: Path, build_dir: Path) -> Path:
        ok, why = self.available()
        if not ok:
            raise BackendUnavailableError(f"the ninja backend cannot build here: {why}")
        artifact = f"{spec.uri}{sysconfig.get_config_var('EXT_SUFFIX')}"
        includes = [_pybind11_include(), sysconfig.get_paths()["include"], str(CSRC_DIR)]
        cflags = [*CXXFLAGS, *(f"-I{p}" for p in includes), f"-DFLASHKIT_MODULE_NAME={spec.uri}",
                  *spec.flags]
        ldflags = ["-shared"]
        if sys.platform == "darwin":
            ldflags += ["-undefined", "dynamic_lookup"]
        (build_dir / "build.ninja").write_text(
            "ninja_required_version = 1.3\n"
            f"cxx = {_ninja_words([_cxx()])}\n"
            f"cflags = {_ninja_words(cflags)}\n"
            f"ldflags = {_ninja_words(ldflags)}\n"
            "rule cxx\n"
            "  command = $cxx -MMD -MF $out.d $cflags -c $in -o $out\n"
            "  depfile = $out.d\n"
            "  deps = gcc\n"
            "rule link\n"
            "  command = $cxx $in $ldflags -o $out\n"
            f"build main.o: cxx {source_path.name}\n"
            f"build {artifact}: link main.o\n"
            f"default {artifact}\n"
        )
        proc = subprocess.run([_ninja(), "-C", str(build_dir)], capture_output=True, text=True)
        log_path = build_dir / "build.log"
        log_path.write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise JitCompileError(spec.uri, source_path, log_path, proc.stdout + proc.stderr)
        return build_dir / artifact

    def load(self, spec, artifact: Path):
        if spec.uri in sys.modules:
            return sys.modules[spec.uri]
        loader = importlib.machinery.ExtensionFileLoader(spec.uri, str(artifact))
        mod_spec = importlib.util.spec_from_file_location(spec.uri, artifact, loader=loader)
        module = importlib.util.module_from_spec(mod_spec)
        loader.exec_module(module)
        sys.modules[spec.uri] = module
        return module
