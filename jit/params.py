"""What a KernelSpec may carry, checked when the spec is made.

Params and flags are pasted into rendered sources (a Triton module imported at load, a ``.cu``
NVRTC compiles, a build.ninja whose commands run through a shell), so every value is typed: a
value that could close a line, a string or a block and open code of its own is refused before
anything renders. Allowed param values:

- ``bool``, ``int``, a finite ``float``;
- a ``str`` that is an identifier (``"silu"``, ``"NHD"``) or a known dtype tag (``DTYPE_TAGS``:
  ``"tl.bfloat16"``, ``"flashkit::half_t"``, ``"float"``);
- a :class:`Snippet`: code the variant API made, which a template renders inside one function;
- a tuple of these.

Param names are identifiers other than Python keywords and the names Jinja gives meaning to
(``self``, ``loop``, ``range``, ...): a template could never read them, or ``render`` itself
fails. Flags are compiler options: strings starting with ``-``, without control characters.
"""
from __future__ import annotations

import ast
import dataclasses
import keyword
import math
import re
import textwrap
from typing import Any, Iterator

__all__ = ["Snippet", "DTYPE_TAGS", "check_params", "check_flags"]

# \Z, not $: "$" also matches before a trailing newline.
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

# The element types templates name: Triton's tl.* dtypes and the C++ types csrc/ defines.
DTYPE_TAGS = frozenset(
    [f"tl.{t}" for t in ("float16", "bfloat16", "float32", "float64", "int1", "int8", "int16",
                         "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                         "float8e4nv", "float8e5", "float8e4b15", "float8e4b8", "float8e5b16")]
    + ["float", "double", "half", "__half", "__nv_bfloat16", "int", "int8_t", "int16_t",
       "int32_t", "int64_t", "uint8_t", "uint16_t", "uint32_t", "uint64_t",
       "flashkit::half_t", "flashkit::bf16_t", "flashkit::fp8_e4m3_t", "flashkit::fp8_e5m2_t"])

# Jinja's own names: the render signature (self), the template's special variables and the
# default globals (jinja2.defaults.DEFAULT_NAMESPACE); a param of that name breaks render or a
# template that uses the builtin.
_JINJA_RESERVED = frozenset({"self", "loop", "caller", "varargs", "kwargs", "super", "true",
                             "false", "none", "range", "dict", "lipsum", "cycler", "joiner",
                             "namespace"})
# A line break in any form Python's tokenizer or a C preprocessor honours, and other controls.
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\x85]")


@dataclasses.dataclass(frozen=True)
class Snippet:
    """Python (Triton) code a template renders inside one of its functions.

    A ``"statements"`` snippet is a tuple of lines a template writes one per line, each indented
    into a function body (``{% for line in snippet %}    {{ line }}{% endfor %}``); an
    ``"expression"`` snippet is one expression (``return {{ snippet }}``). Neither can hold a line
    break, and both are parsed where they will sit, so no snippet can end its function and run
    code at module level when the rendered module is imported.

    Parameters
    ----------
    code : str or tuple of str
        The statements (any common indentation) or the expression.
    kind : str
        ``"statements"`` (default) or ``"expression"``.
    """

    code: Any
    kind: str = "statements"

    def __post_init__(self):
        if self.kind not in ("statements", "expression"):
            raise ValueError(f"Snippet kind must be 'statements' or 'expression', got "
                             f"{self.kind!r}")
        code = self.code
        if isinstance(code, tuple) and all(isinstance(ln, str) for ln in code):
            for ln in code:
                if _CONTROL.search(ln.replace("\t", " ")):
                    raise ValueError(f"Snippet lines must not contain line breaks or control "
                                     f"characters, got {ln!r}")
            code = "\n".join(code)
        elif not isinstance(code, str):
            raise TypeError(f"Snippet code must be a str or a tuple of str, got {code!r}")
        text = textwrap.dedent(code).strip("\n")
        lines = tuple(text.splitlines()) if text.strip() else ()
        for ln in lines:  # a str's own lines: splitlines already split at \r, \x0c, \u2028, ...
            if _CONTROL.search(ln.replace("\t", " ")):
                raise ValueError(f"Snippet lines must not contain line breaks or control "
                                 f"characters, got {ln!r}")
        object.__setattr__(self, "code", lines)
        if self.kind == "expression":
            if len(lines) != 1:
                raise ValueError(f"an expression Snippet is one line, got {len(lines)}")
            try:
                ast.parse(lines[0].strip(), mode="eval")
            except SyntaxError as exc:
                raise ValueError(f"Snippet {lines[0]!r} is not a Python expression: "
                                 f"{exc.msg}") from None
            return
        # Parsed as a template holds it: a body, then the function's own next line, which an
        # unclosed bracket, a trailing backslash or a stray indent would break.
        body = "".join(f"    {ln}\n" for ln in lines)
        try:
            ast.parse("def _snippet():\n" + body + "    pass\n")
        except SyntaxError as exc:
            raise ValueError(f"Snippet is not a valid function body: {exc.msg} (line "
                             f"{(exc.lineno or 2) - 1})") from None

    @property
    def lines(self) -> tuple[str, ...]:
        return self.code

    def __iter__(self) -> Iterator[str]:
        return iter(self.lines)

    def __len__(self) -> int:
        return len(self.lines)

    def __str__(self) -> str:
        if self.kind == "expression":
            return self.lines[0].strip()
        # Joined lines would lose the per-line indentation that keeps them inside a function.
        raise TypeError("a statements Snippet renders line by line: "
                        "{% for line in snippet %}    {{ line }}{% endfor %}")


def _check_value(where: str, value) -> None:
    if isinstance(value, (bool, int, Snippet)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} must be a finite float, got {value!r}")
        return
    if isinstance(value, str):
        if IDENTIFIER.match(value) or value in DTYPE_TAGS:
            return
        raise ValueError(
            f"{where} must be an identifier or a dtype tag ({', '.join(sorted(DTYPE_TAGS)[:4])}, "
            f"...), got {value!r}; pass numbers as int/float and code as a jit.Snippet")
    if isinstance(value, tuple):
        for i, item in enumerate(value):
            _check_value(f"{where}[{i}]", item)
        return
    raise TypeError(f"{where} must be a bool, int, float, identifier str, dtype tag, "
                    f"jit.Snippet or a tuple of them, got {type(value).__name__} {value!r}")


def check_params(params) -> None:
    """Raise unless ``params`` is a sorted tuple of (name, value) pairs of allowed values."""
    if not isinstance(params, tuple) or not all(isinstance(p, tuple) and len(p) == 2
                                                for p in params):
        raise TypeError(f"KernelSpec.params must be a tuple of (name, value) pairs (use "
                        f"KernelSpec.create to pass a dict), got {params!r}")
    names = [name for name, _ in params]
    for name, value in params:
        if not isinstance(name, str) or not IDENTIFIER.match(name):
            raise ValueError(f"KernelSpec.params names must be identifiers, got {name!r}")
        if keyword.iskeyword(name) or name in _JINJA_RESERVED:
            raise ValueError(f"KernelSpec.params name {name!r} is reserved (a Python keyword or "
                             f"a Jinja name); rename the parameter")
        _check_value(f"KernelSpec.params[{name!r}]", value)
    if names != sorted(set(names)):
        raise ValueError(f"KernelSpec.params names must be distinct and sorted, got {names}")


def check_flags(flags) -> None:
    """Raise unless ``flags`` is a tuple of compiler options without control characters."""
    if not isinstance(flags, tuple) or not all(isinstance(f, str) for f in flags):
        raise TypeError(f"KernelSpec.flags must be a tuple of str, got {flags!r}")
    for flag in flags:
        if not flag.startswith("-") or _CONTROL.search(flag):
            raise ValueError(f"KernelSpec.flags must be compiler options starting with '-' "
                             f"without line breaks or control characters, got {flag!r}")
