"""Custom attention variants: a user's logits transform and/or mask rendered into the kernel.

A variant is a few lines of Triton that run on every tile of logits, after ``sm_scale`` and the
soft cap and before the softmax, with these names in scope:

- ``logits`` [BLOCK_M, BLOCK_N] float32 (natural-log scale), ``keep`` the same shape, bool;
- ``q_pos`` [BLOCK_M, 1] (the query's position in the KV), ``k_pos`` [1, BLOCK_N] and
  ``qo_head`` [BLOCK_M, 1], all int32;
- one name per extra parameter: a tensor on the inputs' device, seen by the snippet as a pointer
  (a scalar is a 1-element tensor read with ``tl.load``), passed to ``run()`` / the single_*
  functions as ``variant_args`` in the order of ``params``.

The lines assign ``logits`` and/or ``keep``. flashkit renders them into
templates/attention/attention.py.j2 and JIT-compiles a specialization whose uri carries the
variant's name and a hash of its text. ``torch_fn(logits, keep, q_pos, k_pos, qo_head, *args)``
(same names, broadcastable [heads, qo, kv] torch tensors) is the variant's reference: the torch
backend runs it, and tests compare the kernel with it.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable

__all__ = ["AttentionVariant", "VariantParam"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED = {"logits", "keep", "q_pos", "k_pos", "qo_head", "tl", "triton"}
# The sizes a VariantParam's shape may name, filled in from the plan at run().
SIZE_NAMES = ("num_qo_heads", "num_kv_heads", "head_dim")


@dataclasses.dataclass(frozen=True)
class VariantParam:
    """An extra parameter of a variant with what run() checks its tensor against: ``dtype``
    (a torch.dtype, None: any) and ``shape`` (a tuple of ints and of the names in SIZE_NAMES,
    None: any). A snippet indexes its parameters as flat pointers, so only a declared shape
    keeps its loads in bounds: ALiBi's slopes are ``VariantParam("slopes", torch.float32,
    ("num_qo_heads",))``."""

    name: str
    dtype: object = None
    shape: tuple | None = None

    def __post_init__(self):
        if self.shape is not None:
            shape = tuple(self.shape)
            object.__setattr__(self, "shape", shape)
            for d in shape:
                ok_int = isinstance(d, int) and not isinstance(d, bool) and d >= 0
                if not ok_int and d not in SIZE_NAMES:
                    raise ValueError(f"VariantParam shape entries must be ints >= 0 or one of "
                                     f"{SIZE_NAMES}, got {d!r}")


@dataclasses.dataclass(frozen=True)
class AttentionVariant:
    """A logits transform / mask for the attention kernels (see the module docstring).

    Parameters
    ----------
    name : str
        An identifier; becomes part of the kernel's uri (``attention_triton_hd128_alibi_<hash>``).
    triton : str
        Triton statements (any indentation; a blank snippet is the identity).
    params : tuple of str or VariantParam
        The extra parameters the snippet reads (a VariantParam also declares the dtype and
        shape run() checks ``variant_args`` against).
    torch_fn : callable or None
        The reference ``(logits, keep, q_pos, k_pos, qo_head, *args) -> (logits, keep)``.

    Example
    -------
    >>> alibi = AttentionVariant("alibi", triton='''
    ...     slope = tl.load(slopes + qo_head)
    ...     logits = logits + slope * (k_pos - q_pos).to(tl.float32)
    ... ''', params=(VariantParam("slopes", torch.float32, ("num_qo_heads",)),),
    ...     torch_fn=lambda lg, keep, qp, kp, h, slopes: (lg + slopes[h] * (kp - qp), keep))
    """

    name: str
    triton: str = ""
    params: tuple = ()
    torch_fn: Callable | None = dataclasses.field(default=None, compare=False, hash=False)
    specs: tuple = dataclasses.field(default=(), init=False)

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"variant name must be an identifier, got {self.name!r}")
        if not isinstance(self.triton, str):
            raise ValueError(f"variant triton must be a str of Triton statements, got "
                             f"{type(self.triton).__name__}")
        specs = tuple(p if isinstance(p, VariantParam) else VariantParam(p)
                      for p in tuple(self.params))
        params = tuple(p.name for p in specs)
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "specs", specs)
        for p in params:
            if not isinstance(p, str) or not _NAME.match(p) or p in _RESERVED:
                raise ValueError(f"variant params must be identifiers other than "
                                 f"{sorted(_RESERVED)}, got {p!r}")
        if len(set(params)) != len(params):
            raise ValueError(f"variant params must be distinct, got {params}")
        try:
            compile(self._dedented(), f"<variant {self.name}>", "exec")
        except SyntaxError as exc:
            raise ValueError(f"variant triton snippet of {self.name!r} is not valid Python: "
                             f"{exc}") from None

    def check_run(self, backend: str, args, device, sizes: dict) -> tuple:
        """run()'s ``variant_args`` against ``params`` (count, tensors on ``device``,
        contiguous, declared dtype and shape; ``sizes`` gives SIZE_NAMES' values), and the
        variant against the backend: the torch backend needs ``torch_fn`` when there is a
        snippet, the kernels need a snippet when there is a ``torch_fn`` (either way the other
        would run plain attention). Returns the args as a tuple."""
        if backend == "torch" and self.triton_lines and self.torch_fn is None:
            raise ValueError(f"variant {self.name!r} has a Triton snippet but no torch_fn: the "
                             f"torch backend cannot run it (give torch_fn or use 'triton')")
        if backend != "torch" and not self.triton_lines and self.torch_fn is not None:
            raise ValueError(f"variant {self.name!r} has a torch_fn but no Triton snippet: "
                             f"backend={backend!r} would run plain attention")
        import torch

        args = tuple(args)
        if len(args) != len(self.params):
            raise ValueError(f"variant_args must hold {len(self.params)} tensor(s), one per param "
                             f"{self.params} of variant {self.name!r}, got {len(args)}")
        for i, (spec, a) in enumerate(zip(self.specs, args)):
            name = f"variant_args[{i}] ({spec.name})"
            if not isinstance(a, torch.Tensor):
                raise ValueError(f"{name} must be a torch.Tensor, got {type(a).__name__}")
            if a.device != device:
                raise ValueError(f"{name} must be on {device} (like q), got {a.device}")
            if not a.is_contiguous():
                raise ValueError(f"{name} must be contiguous (the snippet reads it as a flat "
                                 f"pointer), got strides {tuple(a.stride())}")
            if spec.dtype is not None and a.dtype != spec.dtype:
                raise ValueError(f"{name} must be {spec.dtype}, got {a.dtype}")
            if spec.shape is not None:
                want = tuple(sizes[d] if isinstance(d, str) else d for d in spec.shape)
                if tuple(a.shape) != want:
                    raise ValueError(f"{name} must have shape {want} "
                                     f"({', '.join(map(str, spec.shape))}), got "
                                     f"{tuple(a.shape)}")
        return args

    @classmethod
    def default(cls) -> "AttentionVariant":
        return _DEFAULT

    def _dedented(self) -> str:
        import textwrap

        return textwrap.dedent(self.triton).strip("\n")

    @property
    def triton_lines(self) -> tuple[str, ...]:
        text = self._dedented()
        return tuple(text.splitlines()) if text.strip() else ()

    @property
    def param_names(self) -> tuple[str, ...]:
        # Prefixed so that a user's name never shadows one of the kernel's own arguments.
        return tuple(f"var_{p}" for p in self.params)


_DEFAULT = AttentionVariant("default")
