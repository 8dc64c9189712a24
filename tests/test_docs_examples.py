"""Every ```python block of README.md and docs/**/*.md runs: one case per block, ``README.md:L66``.

Markers, HTML comments (invisible when rendered) on the lines right above a block's fence:

- ``<!-- requires: cuda -->``: the block needs a GPU; the case carries ``@pytest.mark.gpu`` and
  shows as skipped ("needs a CUDA GPU") on a machine without one.
- ``<!-- continues -->``: the block runs after the file's previous python block, in its
  namespace (it may use the names that block defined); it inherits that block's requirements.

A misspelled marker fails its case rather than being ignored. Blocks run with the working
directory set to a temporary folder, so files they write never land in the repository.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FENCE_OPEN = re.compile(r"^```(python|py)\s*$")
FENCE = re.compile(r"^```")
MARKER = re.compile(r"^<!--\s*(.*?)\s*-->\s*$")
REQUIREMENTS = {"cuda": pytest.mark.gpu}


@dataclasses.dataclass
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    code: str
    markers: list[str]
    previous: "Block | None" = None  # the file's python block before this one

    @property
    def id(self) -> str:
        path = self.path.relative_to(REPO) if self.path.is_relative_to(REPO) else self.path.name
        return f"{path}:L{self.line}"

    def marker_errors(self) -> list[str]:
        known = [m for m in self.markers if m == "continues" or m.startswith("requires:")]
        unknown = [m for m in self.markers if m not in known]
        bad = [m for m in known if m.startswith("requires:")
               and m.split(":", 1)[1].strip() not in REQUIREMENTS]
        errors = [f"unknown marker <!-- {m} -->" for m in unknown + bad]
        if "continues" in self.markers and self.previous is None:
            errors.append("<!-- continues --> on the file's first python block")
        return errors

    def chain(self) -> list["Block"]:
        """This block and the blocks it continues, first first."""
        blocks = [self]
        while "continues" in blocks[0].markers and blocks[0].previous is not None:
            blocks.insert(0, blocks[0].previous)
        return blocks

    def requirements(self) -> set[str]:
        return {m.split(":", 1)[1].strip() for b in self.chain() for m in b.markers
                if m.startswith("requires:")}


def doc_files() -> list[Path]:
    return [REPO / "README.md"] + sorted((REPO / "docs").rglob("*.md"))


def blocks_of(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        if not FENCE.match(lines[i]):
            i += 1
            continue
        start = i
        end = next((j for j in range(i + 1, len(lines)) if FENCE.match(lines[j])), None)
        if end is None:
            raise ValueError(f"{path.name}:L{start + 1}: code fence never closes")
        if FENCE_OPEN.match(lines[start]):
            markers = []
            j = start - 1
            while j >= 0 and MARKER.match(lines[j]):
                markers.insert(0, MARKER.match(lines[j]).group(1))
                j -= 1
            blocks.append(Block(path, start + 1, "\n".join(lines[start + 1:end]) + "\n",
                                [m for m in markers if _is_marker(m)],
                                blocks[-1] if blocks else None))
        i = end + 1
    return blocks


def _is_marker(text: str) -> bool:
    # Comments that are not about examples (notes to editors) are left alone; anything that
    # looks like one of ours, misspelled or not, is checked.
    return bool(re.match(r"(requires?|continues?|continued)\b", text))


ALL_BLOCKS = [b for path in doc_files() for b in blocks_of(path)]


def _param(block: Block):
    marks = [REQUIREMENTS[r] for r in sorted(block.requirements()) if r in REQUIREMENTS]
    return pytest.param(block, id=block.id, marks=marks)


def test_examples_are_found_and_parse():
    """The collector itself: README.md has python examples, ids name file and line, and every
    block parses (the GPU-only ones too, which run only under -m gpu)."""
    readme = [b for b in ALL_BLOCKS if b.path.name == "README.md"]
    assert readme, "no ```python block found in README.md"
    assert all(re.fullmatch(r"\S+\.md:L\d+", b.id) for b in ALL_BLOCKS)
    for b in ALL_BLOCKS:
        compile("\n" * b.line + b.code, str(b.path), "exec")


def test_markers_are_read_and_misspellings_fail(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("text\n<!-- requires: cuda -->\n```python\na = 1\n```\n```bash\nls\n```\n"
                   "<!-- continues -->\n```python\nb = a\n```\n<!-- require: cuda -->\n"
                   "```python\nc = 1\n```\n<!-- a note to editors -->\n```py\nd = 1\n```\n")
    first, second, third, fourth = blocks_of(doc)
    assert (first.id, second.id, third.id, fourth.id) == ("doc.md:L3", "doc.md:L10", "doc.md:L14",
                                                          "doc.md:L18")
    assert first.requirements() == second.requirements() == {"cuda"}
    assert [b.code for b in second.chain()] == ["a = 1\n", "b = a\n"]
    assert third.marker_errors() == ["unknown marker <!-- require: cuda -->"]
    assert fourth.markers == [] and fourth.requirements() == set()
    doc.write_text("```python\nnever closed\n")
    with pytest.raises(ValueError, match="never closes"):
        blocks_of(doc)


@pytest.mark.parametrize("block", [_param(b) for b in ALL_BLOCKS])
def test_doc_example_runs(block: Block, tmp_path, monkeypatch):
    errors = block.marker_errors()
    assert not errors, f"{block.id}: " + "; ".join(errors)
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs_example__"}
    for b in block.chain():
        # Padded to the fence's line, so a traceback points at the markdown file's own lines.
        exec(compile("\n" * b.line + b.code, str(b.path), "exec"), namespace)
