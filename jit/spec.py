"""KernelSpec: a frozen description of one specialization, and its uri."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Mapping

from flashkit._version import __version__

from .params import IDENTIFIER, check_flags, check_params
from .render import included_headers, render

BACKENDS = ("triton", "nvrtc", "ninja")
_TARGET = re.compile(r"sm_\d{2,3}[af]?\Z")


def _frozen(value):
    """Lists (at any depth) as tuples: a spec is hashable."""
    return tuple(_frozen(v) for v in value) if isinstance(value, (list, tuple)) else value


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """One specialization of one template.

    Parameters
    ----------
    name : str
        Readable identifier, e.g. ``merge_state_bf16_hd128``; becomes the uri's prefix.
    backend : str
        ``"triton"``, ``"nvrtc"`` or ``"ninja"``.
    template : str
        Path of the Jinja template, relative to ``template_root`` (default: shipped templates/).
    params : tuple of (str, value) pairs
        What the template is rendered with (sorted; use :meth:`create` to pass a dict). Values
        are bools, ints, finite floats, identifier strings, dtype tags, :class:`Snippet` s or
        tuples of them (see flashkit.jit.params); anything else raises here, before a render.
    target : str
        The nvrtc backend's GPU arch (``"sm_90"``); empty for the others.
    flags : tuple of str
        Extra compiler options (each starting with ``-``, no line breaks).
    template_root : str or None
        Another template directory (user templates, tests).
    """

    name: str
    backend: str
    template: str
    params: tuple = ()
    target: str = ""
    flags: tuple = ()
    template_root: str | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not IDENTIFIER.match(self.name):
            raise ValueError(f"KernelSpec.name must be an identifier, got {self.name!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"KernelSpec.backend must be one of {BACKENDS}, got {self.backend!r}")
        if not isinstance(self.template, str) or not self.template:
            raise TypeError(f"KernelSpec.template must be a template path (str), got "
                            f"{self.template!r}")
        if self.template_root is not None and not isinstance(self.template_root, str):
            raise TypeError(f"KernelSpec.template_root must be a str or None, got "
                            f"{self.template_root!r}")
        # The target names a cache folder, so anything but an arch (or nothing) is refused.
        if self.backend == "nvrtc":
            if not isinstance(self.target, str) or not _TARGET.match(self.target):
                raise ValueError(f"an nvrtc KernelSpec needs target='sm_XX', got {self.target!r}")
        elif self.target != "":
            raise ValueError(f"KernelSpec.target is only for the nvrtc backend; a "
                             f"{self.backend} spec takes target='', got {self.target!r}")
        check_params(self.params)
        check_flags(self.flags)

    @classmethod
    def create(cls, name: str, backend: str, template: str, params: Mapping[str, Any] = None,
               **kwargs) -> "KernelSpec":
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise TypeError(f"KernelSpec.create params must be a mapping of name to value, got "
                            f"{type(params).__name__}")
        params = {k: _frozen(v) for k, v in params.items()}
        if isinstance(kwargs.get("flags"), list):
            kwargs["flags"] = tuple(kwargs["flags"])
        if isinstance(kwargs.get("template_root"), Path):
            kwargs["template_root"] = str(kwargs["template_root"])
        try:
            items = tuple(sorted(params.items()))
        except TypeError:  # names of mixed types do not sort: check_params names the culprit
            items = tuple(params.items())
        return cls(name, backend, template, items, **kwargs)

    @property
    def param_dict(self) -> dict[str, Any]:
        return dict(self.params)

    @functools.cached_property
    def source(self) -> str:
        """The rendered source."""
        return render(self.template, self.param_dict, self.template_root)

    @functools.cached_property
    def headers(self) -> list[Path]:
        return included_headers(self.source)

    @functools.cached_property
    def digest(self) -> str:
        from .backends import get_backend

        h = hashlib.sha256()
        meta = [__version__, self.backend, self.target, list(self.flags),
                get_backend(self.backend).toolchain()]
        h.update(json.dumps(meta).encode())
        h.update(self.source.encode())
        for path in self.headers:
            h.update(path.name.encode())
            h.update(path.read_bytes())
        return h.hexdigest()

    @property
    def uri(self) -> str:
        """``<name>_<hash>``: any change to what is compiled, or how, gives a new uri."""
        return f"{self.name}_{self.digest[:12]}"
