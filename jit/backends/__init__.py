"""The three compile backends. Each turns a rendered source into a loadable artifact."""
from __future__ import annotations

import functools

from .base import Backend


@functools.lru_cache(maxsize=None)
def get_backend(name: str) -> Backend:
    if name == "triton":
        from .triton import TritonBackend as cls
    elif name == "nvrtc":
        from .nvrtc import NvrtcBackend as cls
    elif name == "ninja":
        from .ninja import NinjaBackend as cls
    else:
        raise ValueError(f"unknown backend {name!r}; expected 'triton', 'nvrtc' or 'ninja'")
    return cls()


__all__ = ["Backend", "get_backend"]
