"""The one render helper: Jinja with StrictUndefined, so a missing parameter is an error."""
from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Mapping

import jinja2

from .env import CSRC_DIR, TEMPLATE_DIR


@functools.lru_cache(maxsize=None)
def _environment(root: str) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(root),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        # The file's text is hashed into the uri, so a stale compiled template must never win.
        auto_reload=True,
    )


def render(template: str, params: Mapping[str, Any], root: str | Path | None = None) -> str:
    """Render ``template`` (a path under ``root``, default the shipped templates/) with ``params``."""
    env = _environment(str(root or TEMPLATE_DIR))
    return env.get_template(template).render(**params)


_INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.MULTILINE)


def included_headers(source: str, include_dir: Path | None = None) -> list[Path]:
    """Every header reached from ``source`` through ``#include "..."``, resolved as the compilers
    do: next to the including header first, then under ``include_dir`` (default csrc/).

    They are hashed into the uri: editing a header gives a new specialization.
    """
    include_dir = Path(include_dir or CSRC_DIR)
    seen: dict[Path, None] = {}
    todo: list[tuple[str, Path | None]] = [(source, None)]
    while todo:
        text, folder = todo.pop()
        for name in _INCLUDE.findall(text):
            candidates = ([folder / name] if folder else []) + [include_dir / name]
            path = next((c.resolve() for c in candidates if c.is_file()), None)
            if path is not None and path not in seen:
                seen[path] = None
                todo.append((path.read_text(), path.parent))
    return sorted(seen)
