"""The integration's one setting: the ops' ``backend`` (set by ``register(backend=...)``)."""
from __future__ import annotations

BACKENDS = ("auto", "torch", "triton", "cuda")
_backend = "auto"


def set_backend(backend: str) -> None:
    global _backend
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    _backend = backend


def backend() -> str:
    return _backend


def attention_backend() -> str:
    """The attention prefill wrappers have no "cuda" backend: they take Triton instead."""
    return "triton" if _backend == "cuda" else _backend
