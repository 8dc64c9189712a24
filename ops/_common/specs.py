"""Memoization of spec builders."""
from __future__ import annotations

import functools


def memoized_spec(builder):
    """Memoize a spec builder on its arguments (hashable: ints, strs, dtypes, variants).
    Launchers call their builder on every launch; rendering the template and hashing the uri
    once per specialization keeps that off the per-call path."""
    return functools.lru_cache(maxsize=None)(builder)
