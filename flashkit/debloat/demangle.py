"""Itanium C++ demangling through libstdc++'s own `abi::__cxa_demangle` (via ctypes).

libstdc++ is present wherever CUDA libraries or torch are, so no demangler is bundled; where it
cannot be loaded, names stay mangled (`demangle` returns its input).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.lru_cache(maxsize=1)
def _cxa_demangle():
    for name in ("libstdc++.so.6", ctypes.util.find_library("stdc++")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        fn = lib.__cxa_demangle
        fn.restype = ctypes.c_void_p
        fn.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p,
                       ctypes.POINTER(ctypes.c_int)]
        free = ctypes.CDLL(None).free
        free.argtypes = [ctypes.c_void_p]
        return fn, free
    return None


@functools.lru_cache(maxsize=1 << 16)  # a kernel's name repeats once per arch (up to 16)
def demangle(name: str) -> str:
    """The demangled form of ``name``; ``name`` itself for C names or when it does not demangle."""
    if not name.startswith("_Z"):
        return name
    lib = _cxa_demangle()
    if lib is None:
        return name
    fn, free = lib
    status = ctypes.c_int(0)
    ptr = fn(name.encode(), None, None, ctypes.byref(status))
    if not ptr:
        return name
    try:
        return ctypes.string_at(ptr).decode("utf-8", "replace") if status.value == 0 else name
    finally:
        free(ptr)
