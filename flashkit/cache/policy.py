"""Deprecated alias of ``flashkit.prefix_cache.policy`` (the same module
object; see __init__)."""
import sys

from flashkit.prefix_cache import policy as _module

sys.modules[__name__] = _module
