"""Paths and the FLASHKIT_* environment variables read by the JIT.

| variable                 | meaning                                                          |
|--------------------------|------------------------------------------------------------------|
| FLASHKIT_CACHE_DIR       | cache root (default ~/.cache/flashkit); entries live under       |
|                          | <root>/<version>/<target>/<uri>/                                 |
| FLASHKIT_DISABLE_JIT=1   | never compile: a cache miss raises JitDisabledError              |
| FLASHKIT_JIT_WORKERS     | parallel builds in `flashkit jit build` (default: cores, max 8)  |
| FLASHKIT_LOCK_TIMEOUT    | seconds to wait for another process's build (default 900)        |
| CXX                      | C++ compiler of the ninja backend (default g++, then c++)        |
| FLASHKIT_INTERPRET_BF16_DOT | `f32` (default) or `native`: how bf16 `tl.dot`s run under     |
|                          | Triton's interpreter (see interpreted_bf16_dot_upcast)           |
"""
from __future__ import annotations

import os
from pathlib import Path

from flashkit._version import __version__

# jit/ sits next to templates/ and csrc/ both in a source checkout (repo root) and in an
# installed wheel (site-packages/flashkit/), so one relative path serves both.
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_DIR = PACKAGE_ROOT / "templates"
CSRC_DIR = PACKAGE_ROOT / "csrc"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def jit_disabled() -> bool:
    return _flag("FLASHKIT_DISABLE_JIT")


def cache_root() -> Path:
    """Root of this flashkit version's cache: a new version never loads an old artifact."""
    base = os.environ.get("FLASHKIT_CACHE_DIR") or os.path.join("~", ".cache", "flashkit")
    return Path(base).expanduser() / __version__


def lock_timeout() -> float:
    return float(os.environ.get("FLASHKIT_LOCK_TIMEOUT", "900"))


def build_workers() -> int:
    env = os.environ.get("FLASHKIT_JIT_WORKERS")
    return max(1, int(env)) if env else max(1, min(8, os.cpu_count() or 1))


def interpreted_bf16_dot_upcast() -> bool:
    """Whether Triton kernels upcast bf16 dot operands to float32: only under Triton's
    interpreter (TRITON_INTERPRET=1), whose bf16 ``tl.dot`` multiplies the operands' uint16 bit
    patterns (a randn 16x16 product came out 2.5e10 off with triton 3.9). On a GPU the dots stay
    bf16 (tensor cores). ``FLASHKIT_INTERPRET_BF16_DOT=native`` keeps bf16 under the interpreter
    too: the numbers are then wrong, but the launches are the GPU's, which is what
    ``flashkit.jit.triton_aot`` records to compile them for a GPU architecture."""
    if os.environ.get("TRITON_INTERPRET", "0") != "1":
        return False
    return os.environ.get("FLASHKIT_INTERPRET_BF16_DOT", "f32").strip().lower() != "native"
