"""Deprecated alias of ``flashkit.prefix_cache.engine`` (the same module
object; see __init__)."""
import sys

from flashkit.prefix_cache import engine as _module

sys.modules[__name__] = _module
