"""flashkit.jit: specs, rendering, the cache and the three compile backends.

Nothing here compiles or touches a GPU at import; ``load(spec)`` does the work on first use.
"""
from .backends import get_backend
from .bundle import export_bundle, import_bundle, loaded_uris
from .cache import BuildResult, build, cache_size, clear, entry_dir, list_entries, load
from .env import CSRC_DIR, TEMPLATE_DIR, cache_root, jit_disabled
from .errors import (BackendUnavailableError, JitCacheError, JitCompileError,
                     JitDisabledError, JitError)
from .registry import build_many, register_shipped, shipped_specs
from .render import render
from .params import Snippet
from .spec import KernelSpec

__all__ = [
    "KernelSpec", "Snippet", "render", "load", "build", "build_many", "BuildResult", "entry_dir",
    "list_entries", "cache_size", "clear", "cache_root", "jit_disabled", "get_backend",
    "register_shipped", "shipped_specs", "export_bundle", "import_bundle", "loaded_uris",
    "TEMPLATE_DIR", "CSRC_DIR", "JitError",
    "JitCompileError", "JitDisabledError", "JitCacheError", "BackendUnavailableError",
]
