"""Deprecated: the prefix cache is ``flashkit.prefix_cache`` ("cache" alone also names the JIT
kernel cache). This alias keeps ``import flashkit.cache`` and ``from flashkit.cache.<module>
import ...`` working for one release; it will be removed in the next.

Every name here, and every ``flashkit.cache.<module>``, is the very object of
``flashkit.prefix_cache`` (no second copy is imported), so ``isinstance`` checks and module
state are shared across both spellings. Submodules are aliased lazily by the one-line files
beside this one, so importing the alias costs what importing the new package costs.
"""
import warnings

from flashkit.prefix_cache import *  # noqa: F401,F403  (the same objects, re-exported)
from flashkit.prefix_cache import __all__  # noqa: F401

warnings.warn("flashkit.cache is deprecated and will be removed in the next release; import "
              "flashkit.prefix_cache instead", DeprecationWarning, stacklevel=2)
