"""The one way an op becomes a torch.library custom op, and the eager-mode dispatcher bypass.

An op is a plain implementation function ``_<op>_impl`` whose annotations are the schema,
registered with :func:`custom_op` (then ``@op.register_fake`` for its meta function), and called
through :func:`eager_or_op`.
"""
from __future__ import annotations

import functools

import torch


def custom_op(name: str, impl, *, mutates_args=()):
    """``impl`` registered as ``flashkit::<name>``; ``impl`` itself stays callable."""
    return torch.library.custom_op(f"flashkit::{name}", mutates_args=tuple(mutates_args))(impl)


def eager_or_op(op, impl, **eager_kwargs):
    """The registered op while torch.compile traces; the implementation itself in eager mode,
    which skips the dispatcher's per-call cost (what a decode step pays on every launch).

    ``eager_kwargs`` go to the implementation in eager mode only: host values the caller already
    read (chunk_ssd_scan's cu_seqlens), which a trace would bake into the graph as constants."""
    if torch.compiler.is_compiling():
        return op
    return functools.partial(impl, **eager_kwargs) if eager_kwargs else impl
