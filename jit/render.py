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


def included_headers(source: str, include_dir: Path = CSRC_DIR) -> list[Path]:
    """Every header under ``include_dir`` reached from ``source`` through ``#include "..."``.

    They are hashed into the uri: editing a header gives a new specialization.
    """
    seen: dict[Path, None] = {}
    todo = [source]
    while todo:
        for name in _INCLUDE.findall(todo.pop()):
            path = include_dir / name
            if path.is_file() and path not in seen:
                seen[path] = None
                todo.append(path.read_text())
    return sorted(seen)
