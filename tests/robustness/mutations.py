"""One bad tensor at a time, for the property sweeps of every family's public ops.

``check_mutation(call, kwargs, name, how, dim)`` replaces the tensor argument ``name`` by a
mutated copy (another dtype, a meta tensor standing in for a wrong device, a non-contiguous view
of the same values, one dimension fewer or more, a dimension one longer or empty, a NaN or inf
element) and calls ``call(**kwargs)``. Allowed: a ValueError/TypeError whose message names one
of the arguments, or a normal return; a non-contiguous view that is accepted must give the
contiguous call's result. Anything else (IndexError, RuntimeError, ZeroDivisionError, a crash)
fails the property.
"""
from __future__ import annotations

import re

import torch
from hypothesis import strategies as st

from .framework import tried_example

MUTATIONS = ("dtype", "meta", "strided", "drop_dim", "add_dim", "grow", "zero", "nan", "inf")


def mutate(t: torch.Tensor, how: str, dim: int) -> torch.Tensor | None:
    """The mutated copy, or None where ``how`` does not apply to ``t``."""
    if t.dim() == 0 and how not in ("dtype", "meta", "add_dim", "nan", "inf"):
        return None
    dim = dim % max(t.dim(), 1)
    if how == "dtype":
        return t.to(torch.int32) if t.is_floating_point() else t.to(torch.float32)
    if how == "meta":
        return t.to("meta")
    if how == "strided":  # the same values, last dim stride 2
        return torch.stack([t, t], dim=-1).flatten(-2)[..., ::2]
    if how == "drop_dim":
        return t.select(dim, 0) if t.shape[dim] else t.sum(dim)
    if how == "add_dim":
        return t[None]
    if how == "grow":
        return torch.cat([t, t.narrow(dim, 0, 1)], dim) if t.shape[dim] else None
    if how == "zero":
        return t.narrow(dim, 0, 0)
    if how in ("nan", "inf"):
        if not t.is_floating_point() or t.numel() == 0:
            return None
        out = t.clone()
        out.view(-1)[dim % out.numel()] = float(how)
        return out
    raise AssertionError(how)


def mutation_args(names: list[str]):
    """Hypothesis strategy of (argument name, mutation, dimension)."""
    return st.tuples(st.sampled_from(names), st.sampled_from(MUTATIONS), st.integers(0, 7))


def _result_tensors(r):
    if isinstance(r, torch.Tensor):
        return [r]
    if isinstance(r, (tuple, list)):
        return [t for x in r for t in _result_tensors(x)]
    return []


def check_mutation(call, make_kwargs, name: str, how: str, dim: int) -> bool:
    """Run one mutated call (see the module docstring); False where the mutation did not apply."""
    kwargs = make_kwargs()
    bad = mutate(kwargs[name], how, dim)
    if bad is None:
        return False
    kwargs[name] = bad
    try:
        result = call(**kwargs)
    except (ValueError, TypeError) as exc:
        names = "|".join(re.escape(k) for k in kwargs)
        assert re.search(names, str(exc)), f"{name}/{how}: {exc!r} names no argument"
        return True
    if how == "strided":
        want = _result_tensors(call(**make_kwargs()))
        got = _result_tensors(result)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            # float32 GEMMs may sum in another order for another stride: 1e-4, not bitwise
            torch.testing.assert_close(g, w, equal_nan=True, atol=1e-4, rtol=1e-4)
    return True


def mutate_one(ops: dict, op: str, data) -> None:
    """One property example over a family's ``ops`` table (name -> (call, make_kwargs)): one
    tensor argument of ``op``, drawn from ``data``, broken one way (see check_mutation)."""
    call, make = ops[op]
    tensors = [k for k, v in make().items() if isinstance(v, torch.Tensor)]
    name, how, dim = data.draw(mutation_args(tensors))
    if check_mutation(call, make, name, how, dim):
        tried_example()
