from __future__ import annotations

import abc
from pathlib import Path
from typing import Any


class Backend(abc.ABC):
    """What the cache needs from a backend.

    ``compile`` writes ``build.log`` into ``build_dir`` and returns the artifact's path there, or
    raises JitCompileError; ``load`` turns a verified artifact into something callable.
    """

    name: str = ""
    source_suffix: str = ""

    @abc.abstractmethod
    def available(self) -> tuple[bool, str]:
        """Whether this backend can compile here, and why not."""

    @abc.abstractmethod
    def toolchain(self) -> str:
        """Compiler identity, hashed into every uri of this backend."""

    def target_dir(self, spec) -> str:
        """Cache subdirectory: artifacts for different targets never share a folder."""
        return spec.target or self.name

    @abc.abstractmethod
    def compile(self, spec, source_path: Path, build_dir: Path) -> Path:
        """Build ``source_path`` into an artifact inside ``build_dir``."""

    @abc.abstractmethod
    def load(self, spec, artifact: Path) -> Any:
        """Load a verified artifact."""
