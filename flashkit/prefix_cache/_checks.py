"""Argument checks shared by the prefix cache's public classes: token ids and finite numbers."""
from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["MAX_TOKEN_ID", "token_ids", "finite_number"]

# Edges are int32 numpy arrays (half the memory of int64 on a 50 M-token trace), so an id must
# fit: a larger one would wrap and match another token (a false hit). Ids outside are refused.
MAX_TOKEN_ID = 2**31 - 1


def token_ids(name: str, tokens, allow_empty: bool = True) -> np.ndarray:
    """``tokens`` as a 1-D int32 array, or ValueError/TypeError naming ``name``."""
    try:
        a = np.asarray(tokens)
    except (ValueError, TypeError) as e:  # ragged nesting
        raise ValueError(f"{name} must be a 1-D sequence of token ids: {e}") from None
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of token ids, got shape {a.shape}")
    if a.size == 0:
        if not allow_empty:
            raise ValueError(f"{name} must hold at least one token id, got none")
        return np.empty(0, np.int32)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer token ids, got dtype {a.dtype}")
    if a.dtype == np.int32 and a.min() >= 0:
        return a
    bad = (a < 0) | (a > MAX_TOKEN_ID)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name}[{i}] = {int(a[i])} is not a token id in [0, 2^31 - 1]")
    return a.astype(np.int32)


def finite_number(name: str, value, low: float = 0.0) -> float:
    """``value`` as a float if it is a real number, finite and >= ``low``; else an error."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or v < low:
        raise ValueError(f"{name} must be finite and >= {low:g}, got {value!r}")
    return v
