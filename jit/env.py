"""Paths and the FLASHKIT_* environment variables read by the JIT.

| variable                 | meaning                                                          |
|--------------------------|------------------------------------------------------------------|
| FLASHKIT_CACHE_DIR       | cache root (default ~/.cache/flashkit); entries live under       |
|                          | <root>/<version>/<target>/<uri>/                                 |
| FLASHKIT_DISABLE_JIT=1   | never compile: a cache miss raises JitDisabledError              |
| FLASHKIT_JIT_WORKERS     | parallel builds in `flashkit jit build` (default: cores, max 8)  |
| FLASHKIT_LOCK_TIMEOUT    | seconds to wait for another process's build (default 900; inf)  |
| CXX                      | C++ compiler of the ninja backend (default g++, then c++)        |
| FLASHKIT_INTERPRET_BF16_DOT | `f32` (default) or `native`: how bf16 `tl.dot`s run under     |
|                          | Triton's interpreter (see interpreted_bf16_dot_upcast)           |

A value these functions cannot parse raises ValueError naming the variable.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

from flashkit._version import __version__

# jit/ sits next to templates/ and csrc/ both in a source checkout (repo root) and in an
# installed wheel (site-packages/flashkit/), so one relative path serves both.
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_DIR = PACKAGE_ROOT / "templates"
CSRC_DIR = PACKAGE_ROOT / "csrc"


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def _flag(name: str) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name} must be 1/0 (or true/false, yes/no, on/off), got "
                     f"{os.environ[name]!r}")


def jit_disabled() -> bool:
    return _flag("FLASHKIT_DISABLE_JIT")


def cache_root() -> Path:
    """Root of this flashkit version's cache: a new version never loads an old artifact."""
    base = os.environ.get("FLASHKIT_CACHE_DIR") or os.path.join("~", ".cache", "flashkit")
    if "\0" in base:
        raise ValueError(f"FLASHKIT_CACHE_DIR must be a path, got {base!r}")
    return Path(base).expanduser() / __version__


def lock_timeout() -> float:
    """FLASHKIT_LOCK_TIMEOUT in seconds (default 900; ``inf`` waits for ever)."""
    raw = os.environ.get("FLASHKIT_LOCK_TIMEOUT", "").strip()
    if not raw:
        return 900.0
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not value >= 0:  # also refuses nan
        raise ValueError(f"FLASHKIT_LOCK_TIMEOUT must be a number of seconds >= 0, got {raw!r}")
    return value


def build_workers() -> int:
    raw = os.environ.get("FLASHKIT_JIT_WORKERS", "").strip()
    if not raw:
        return max(1, min(8, os.cpu_count() or 1))
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"FLASHKIT_JIT_WORKERS must be an integer >= 1, got {raw!r}")
    return value


def interpreted_bf16_dot_upcast() -> bool:
    """Whether Triton kernels upcast bf16 dot operands to float32: only under Triton's
    interpreter (TRITON_INTERPRET=1), whose bf16 ``tl.dot`` multiplies the operands' uint16 bit
    patterns (a randn 16x16 product came out 2.5e10 off with triton 3.9). On a GPU the dots stay
    bf16 (tensor cores). ``FLASHKIT_INTERPRET_BF16_DOT=native`` keeps bf16 under the interpreter
    too: the numbers are then wrong, but the launches are the GPU's, which is what
    ``flashkit.jit.triton_aot`` records to compile them for a GPU architecture."""
    mode = os.environ.get("FLASHKIT_INTERPRET_BF16_DOT", "f32").strip().lower() or "f32"
    if mode not in ("f32", "native"):
        raise ValueError(f"FLASHKIT_INTERPRET_BF16_DOT must be 'f32' or 'native', got "
                         f"{os.environ['FLASHKIT_INTERPRET_BF16_DOT']!r}")
    if os.environ.get("TRITON_INTERPRET", "0") != "1":
        return False
    return mode != "native"


def check_environment() -> None:
    """Parse every FLASHKIT_* variable the JIT reads; a bad value raises ValueError naming it
    (the CLI calls this first, so a typo fails once, up front, not in each of 72 builds)."""
    jit_disabled()
    cache_root()
    lock_timeout()
    build_workers()
    interpreted_bf16_dot_upcast()
