"""Deprecated alias of ``flashkit.prefix_cache.traces`` (the same module
object; see __init__)."""
import sys

from flashkit.prefix_cache import traces as _module

sys.modules[__name__] = _module
