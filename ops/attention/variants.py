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

__all__ = ["AttentionVariant"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED = {"logits", "keep", "q_pos", "k_pos", "qo_head", "tl", "triton"}


@dataclasses.dataclass(frozen=True)
class AttentionVariant:
    """A logits transform / mask for the attention kernels (see the module docstring).

    Parameters
    ----------
    name : str
        An identifier; becomes part of the kernel's uri (``attention_triton_hd128_alibi_<hash>``).
    triton : str
        Triton statements (any indentation; a blank snippet is the identity).
    params : tuple of str
        Names of the extra parameters the snippet reads.
    torch_fn : callable or None
        The reference ``(logits, keep, q_pos, k_pos, qo_head, *args) -> (logits, keep)``.

    Example
    -------
    >>> alibi = AttentionVariant("alibi", triton='''
    ...     slope = tl.load(slopes + qo_head)
    ...     logits = logits + slope * (k_pos - q_pos).to(tl.float32)
    ... ''', params=("slopes",),
    ...     torch_fn=lambda lg, keep, qp, kp, h, slopes: (lg + slopes[h] * (kp - qp), keep))
    """

    name: str
    triton: str = ""
    params: tuple = ()
    torch_fn: Callable | None = dataclasses.field(default=None, compare=False, hash=False)

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"variant name must be an identifier, got {self.name!r}")
        if not isinstance(self.triton, str):
            raise ValueError(f"variant triton must be a str of Triton statements, got "
                             f"{type(self.triton).__name__}")
        params = tuple(self.params)
        object.__setattr__(self, "params", params)
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
