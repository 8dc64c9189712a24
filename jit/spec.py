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

from .render import included_headers, render

BACKENDS = ("triton", "nvrtc", "ninja")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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
        What the template is rendered with (sorted; use :meth:`create` to pass a dict).
    target : str
        The nvrtc backend's GPU arch (``"sm_90"``); empty for the others.
    flags : tuple of str
        Extra compiler flags.
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
        if not _NAME.match(self.name):
            raise ValueError(f"KernelSpec.name must be an identifier, got {self.name!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"KernelSpec.backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.backend == "nvrtc" and not re.match(r"^sm_\d+a?$", self.target):
            raise ValueError(f"an nvrtc KernelSpec needs target='sm_XX', got {self.target!r}")
        try:
            hash((self.params, self.flags))
        except TypeError:
            raise ValueError("KernelSpec.params values must be hashable (tuples, not lists), got "
                             f"{self.params!r}") from None

    @classmethod
    def create(cls, name: str, backend: str, template: str, params: Mapping[str, Any] = None,
               **kwargs) -> "KernelSpec":
        params = {k: tuple(v) if isinstance(v, list) else v for k, v in (params or {}).items()}
        return cls(name, backend, template, tuple(sorted(params.items())), **kwargs)

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
