"""The JIT under bad input: KernelSpec fields, params, flags, snippets, FLASHKIT_* variables and
bundles. Each row names what it breaks; properties check that no accepted value changes the
shape of a rendered source."""
import ast
import gzip
import io
import math
import re
import shlex
import tarfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from flashkit import jit
from flashkit.jit import KernelSpec, Snippet
from flashkit.jit import env as jit_env
from flashkit.jit.backends.ninja import _ninja_words
from flashkit.jit.params import DTYPE_TAGS, IDENTIFIER

from .framework import Case, environ, table, tried_example, with_env

TEMPLATES = str(Path(__file__).resolve().parent / "templates")


def spec(params=None, **kw):
    fields = dict(name="k", backend="triton", template="one_value.py.j2", template_root=TEMPLATES)
    fields.update(kw)
    return KernelSpec.create(fields.pop("name"), fields.pop("backend"), fields.pop("template"),
                             params, **fields)


def value(v):
    return lambda: spec({"v": v})


test_spec_params = table([
    Case("newline-python", value("1\nimport os"), ValueError, r"params\['v'\].*identifier"),
    Case("newline-alone", value("\n"), ValueError, r"params\['v'\]"),
    Case("trailing-newline", value("silu\n"), ValueError, r"params\['v'\]"),
    Case("carriage-return", value("a\rb"), ValueError, r"params\['v'\]"),
    Case("semicolon", value("1; import os"), ValueError, r"params\['v'\]"),
    Case("quote", value('x" + __import__("os").getcwd() + "'), ValueError, r"params\['v'\]"),
    Case("jinja-braces", value("{{ v }}"), ValueError, r"params\['v'\]"),
    Case("space", value("two words"), ValueError, r"params\['v'\]"),
    Case("number-as-str", value("1e-08"), ValueError, r"pass numbers as int/float"),
    Case("dotted-not-a-dtype", value("os.system"), ValueError, r"dtype tag"),
    Case("dtype-with-suffix", value("tl.float32;"), ValueError, r"params\['v'\]"),
    Case("empty-str", value(""), ValueError, r"params\['v'\]"),
    Case("nan", value(math.nan), ValueError, r"params\['v'\] must be a finite float"),
    Case("inf", value(-math.inf), ValueError, r"finite float"),
    Case("none", value(None), TypeError, r"params\['v'\].*NoneType"),
    Case("bytes", value(b"x"), TypeError, r"params\['v'\].*bytes"),
    Case("dict", value({"a": 1}), TypeError, r"params\['v'\].*dict"),
    Case("object", value(object()), TypeError, r"params\['v'\]"),
    Case("tuple-bad-item", value((1, "a\nb")), ValueError, r"params\['v'\]\[1\]"),
    Case("list-nested-bad", value([1, [2, 2.5, math.nan]]), ValueError, r"params\['v'\]\[1\]\[2\]"),
    Case("name-self", lambda: spec({"self": 1}), ValueError, r"'self' is reserved"),
    Case("name-loop", lambda: spec({"loop": 1}), ValueError, r"'loop' is reserved"),
    Case("name-keyword", lambda: spec({"class": 1}), ValueError, r"'class' is reserved"),
    Case("name-true", lambda: spec({"True": 1}), ValueError, r"reserved"),
    Case("name-range", lambda: spec({"range": 1}), ValueError, r"reserved"),
    Case("name-dash", lambda: spec({"a-b": 1}), ValueError, r"params names must be identifiers"),
    Case("name-empty", lambda: spec({"": 1}), ValueError, r"identifiers"),
    Case("name-int", lambda: spec({1: 1, "a": 2}), ValueError, r"identifiers, got 1"),
    Case("params-list", lambda: spec([("a", 1)]), TypeError, r"params must be a mapping"),
    Case("raw-unsorted", lambda: KernelSpec("k", "triton", "t", (("b", 1), ("a", 2))),
         ValueError, r"distinct and sorted"),
    Case("raw-duplicate", lambda: KernelSpec("k", "triton", "t", (("a", 1), ("a", 2))),
         ValueError, r"distinct and sorted"),
    Case("raw-not-pairs", lambda: KernelSpec("k", "triton", "t", ("a",)), TypeError,
         r"tuple of \(name, value\) pairs"),
    Case("accepts-shipped-kinds", lambda: spec({"v": (1, True, 0.5, "silu", "tl.bfloat16",
                                                      "flashkit::bf16_t")}).params,
         None, r"flashkit::bf16_t"),
])

test_spec_fields = table([
    Case("name-space", lambda: spec(name="a b"), ValueError, r"KernelSpec.name"),
    Case("name-int", lambda: spec(name=5), ValueError, r"KernelSpec.name"),
    Case("name-path", lambda: spec(name="../x"), ValueError, r"KernelSpec.name"),
    Case("backend-unknown", lambda: spec(backend="cuda"), ValueError, r"KernelSpec.backend"),
    Case("template-empty", lambda: spec(template=""), TypeError, r"KernelSpec.template"),
    Case("template-none", lambda: spec(template=None), TypeError, r"KernelSpec.template"),
    Case("template-root-int", lambda: spec(template_root=3), TypeError, r"template_root"),
    Case("triton-with-target", lambda: spec(target="sm_90"), ValueError, r"only for the nvrtc"),
    Case("triton-target-path", lambda: spec(target="../../etc"), ValueError, r"target"),
    Case("nvrtc-target-path", lambda: spec(backend="nvrtc", target="../sm_90"), ValueError,
         r"target='sm_XX'"),
    Case("nvrtc-target-newline", lambda: spec(backend="nvrtc", target="sm_90\n"), ValueError,
         r"target='sm_XX'"),
    Case("name-trailing-newline", lambda: spec(name="k\n"), ValueError, r"KernelSpec.name"),
    Case("nvrtc-target-none", lambda: spec(backend="nvrtc", target=None), ValueError, r"target"),
    Case("flag-newline", lambda: spec(flags=("-O2\nrule x",)), ValueError, r"KernelSpec.flags"),
    Case("flag-nul", lambda: spec(flags=("-O2\x00",)), ValueError, r"KernelSpec.flags"),
    Case("flag-not-option", lambda: spec(flags=("O2",)), ValueError, r"starting with '-'"),
    Case("flag-empty", lambda: spec(flags=("",)), ValueError, r"KernelSpec.flags"),
    Case("flags-str", lambda: spec(flags="-O2"), TypeError, r"KernelSpec.flags must be a tuple"),
    Case("flags-int", lambda: spec(flags=(2,)), TypeError, r"KernelSpec.flags"),
    Case("flags-list-accepted", lambda: spec({"v": 1}, flags=["-O2"]).flags, None, r"-O2"),
])

test_snippets = table([
    Case("line-with-newline", lambda: Snippet(("x = 1", "y = 2\nimport os")), ValueError,
         r"line breaks"),
    Case("line-with-cr", lambda: Snippet(("x = 1\rimport os",)), ValueError, r"line breaks"),
    Case("line-with-u2028", lambda: Snippet(("x = 1\u2028import os",)), ValueError,
         r"line breaks"),
    Case("not-a-body", lambda: Snippet("x = ("), ValueError, r"not a valid function body"),
    Case("dedent-out", lambda: Snippet(("    x = 1", "y = 2")), ValueError, r"function body"),
    Case("trailing-backslash", lambda: Snippet(("x = 1 + \\",)), ValueError, r"function body"),
    Case("open-bracket", lambda: Snippet(("x = [1,",)), ValueError, r"function body"),
    Case("open-triple-quote", lambda: Snippet(('s = """',)), ValueError, r"function body"),
    Case("tuple-lines-dedented", lambda: Snippet(("  if x:", "      x = 1")).lines, None,
         r"\('if x:', '    x = 1'\)"),
    Case("code-int", lambda: Snippet(5), TypeError, r"str or a tuple of str"),
    Case("code-list", lambda: Snippet(["x = 1"]), TypeError, r"tuple of str"),
    Case("kind-unknown", lambda: Snippet("x", "macro"), ValueError, r"kind"),
    Case("expression-statement", lambda: Snippet("x; import os", "expression"), ValueError,
         r"not a Python expression"),
    Case("expression-two-lines", lambda: Snippet("x\ny", "expression"), ValueError, r"one line"),
    Case("expression-empty", lambda: Snippet("", "expression"), ValueError, r"one line"),
    Case("str-of-statements", lambda: str(Snippet("x = 1")), TypeError, r"line by line"),
])

test_environment = table([
    Case("lock-timeout-abc", with_env(jit_env.lock_timeout, FLASHKIT_LOCK_TIMEOUT="abc"),
         ValueError, r"FLASHKIT_LOCK_TIMEOUT .*'abc'"),
    Case("lock-timeout-negative", with_env(jit_env.lock_timeout, FLASHKIT_LOCK_TIMEOUT="-1"),
         ValueError, r"FLASHKIT_LOCK_TIMEOUT"),
    Case("lock-timeout-nan", with_env(jit_env.lock_timeout, FLASHKIT_LOCK_TIMEOUT="nan"),
         ValueError, r"FLASHKIT_LOCK_TIMEOUT"),
    Case("lock-timeout-inf", with_env(jit_env.lock_timeout, FLASHKIT_LOCK_TIMEOUT="inf"),
         None, r"^inf$"),
    Case("workers-zero", with_env(jit_env.build_workers, FLASHKIT_JIT_WORKERS="0"), ValueError,
         r"FLASHKIT_JIT_WORKERS .*>= 1"),
    Case("workers-float", with_env(jit_env.build_workers, FLASHKIT_JIT_WORKERS="2.5"),
         ValueError, r"FLASHKIT_JIT_WORKERS"),
    Case("disable-maybe", with_env(jit_env.jit_disabled, FLASHKIT_DISABLE_JIT="maybe"),
         ValueError, r"FLASHKIT_DISABLE_JIT"),
    Case("disable-off", with_env(jit_env.jit_disabled, FLASHKIT_DISABLE_JIT="off"), None,
         r"False"),
    Case("bf16-dot-unknown", with_env(jit_env.interpreted_bf16_dot_upcast,
                                      FLASHKIT_INTERPRET_BF16_DOT="fp16"), ValueError,
         r"FLASHKIT_INTERPRET_BF16_DOT"),
    Case("check-environment", with_env(jit_env.check_environment, FLASHKIT_JIT_WORKERS="-3"),
         ValueError, r"FLASHKIT_JIT_WORKERS"),
])


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data)


def _tar_gz(members: dict) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _unbundle(data: bytes):
    def call(tmp_path):
        path = tmp_path / "in.tar.gz"
        path.write_bytes(data)
        with environ(FLASHKIT_CACHE_DIR=str(tmp_path / "cache")):
            return jit.import_bundle(path)
    return call


def _bundle_to(where):
    def call(tmp_path):
        with environ(FLASHKIT_CACHE_DIR=str(tmp_path / "cache")):
            return jit.export_bundle(where(tmp_path))
    return call


_REAL = _tar_gz({"flashkit-bundle.json": b'{"flashkit": "0.0.0", "entries": []}'})

test_bundles = table([
    Case("unbundle-text", _unbundle(b"not a bundle\n"), jit.JitCacheError, r"not a gzip file"),
    Case("unbundle-empty", _unbundle(b""), jit.JitCacheError, r"not a readable flashkit bundle"),
    Case("unbundle-gzip-not-tar", _unbundle(_gzip(b"hello" * 100)), jit.JitCacheError,
         r"not a readable flashkit bundle"),
    Case("unbundle-truncated", _unbundle(_REAL[:len(_REAL) // 2]), jit.JitCacheError,
         r"not a readable flashkit bundle"),
    Case("unbundle-no-info", _unbundle(_tar_gz({"x": b"1"})), jit.JitCacheError,
         r"not a flashkit bundle \(no valid flashkit-bundle.json\)"),
    Case("unbundle-info-not-json", _unbundle(_tar_gz({"flashkit-bundle.json": b"{"})),
         jit.JitCacheError, r"no valid flashkit-bundle.json"),
    Case("unbundle-info-list", _unbundle(_tar_gz({"flashkit-bundle.json": b"[]"})),
         jit.JitCacheError, r"not a JSON object"),
    Case("unbundle-other-version", _unbundle(_REAL), jit.JitCacheError, r"made by flashkit 0.0.0"),
    Case("unbundle-missing", lambda tmp_path: jit.import_bundle(tmp_path / "nope.tar.gz"),
         FileNotFoundError, r"nope.tar.gz"),
    Case("bundle-into-missing-dir", _bundle_to(lambda t: t / "no" / "such" / "b.tar.gz"),
         OSError, r"cannot write the bundle .*b.tar.gz"),
    Case("bundle-onto-a-dir", _bundle_to(lambda t: t), OSError, r"cannot write the bundle"),
])


# --- properties -------------------------------------------------------------------------------

# Characters that end lines, strings, statements or Jinja expressions, mixed with ordinary ones.
_TRICKY = st.text(alphabet=st.sampled_from(list("ab_Z09 .:;'\"\\\n\r\t\x0c{}()#$-=\u2028")) |
                  st.characters(blacklist_categories=("Cs",)), max_size=24)
PROPERTY = settings(max_examples=150, deadline=None, database=None)


@PROPERTY
@given(_TRICKY)
def test_any_str_value_is_refused_or_renders_one_statement(text):
    tried_example()
    try:
        s = spec({"v": text})
    except ValueError as exc:
        assert "params['v']" in str(exc)
        assert not (IDENTIFIER.match(text) or text in DTYPE_TAGS)
        return
    assert IDENTIFIER.match(text) or text in DTYPE_TAGS
    module = ast.parse(s.source)
    assert len(module.body) == 1 and isinstance(module.body[0], ast.Assign)


@PROPERTY
@given(st.lists(_TRICKY, max_size=4))
def test_any_snippet_is_refused_or_stays_inside_its_function(lines):
    tried_example()
    try:
        snippet = Snippet(tuple(lines))
    except ValueError:
        return
    source = spec({"body": snippet}, template="snippet_body.py.j2").source
    module = ast.parse(source)
    assert [type(n) for n in module.body] == [ast.FunctionDef], source


@PROPERTY
@given(st.lists(_TRICKY, max_size=4))
def test_accepted_flags_are_single_shell_words_in_ninja(flags):
    tried_example()
    try:
        spec({"v": 1}, flags=tuple(flags))
    except ValueError:
        assert any(not f.startswith("-") or re.search(r"[\x00-\x1f\x7f\u2028\u2029\x85]", f)
                   for f in flags)
        return
    value = _ninja_words(flags)
    assert "\n" not in value and "\r" not in value
    assert shlex.split(value.replace("$$", "$")) == list(flags)


_ENV_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                           blacklist_characters="\x00"), max_size=12)


@PROPERTY
@given(_ENV_TEXT)
def test_lock_timeout_parses_or_names_the_variable(raw):
    tried_example()
    with environ(FLASHKIT_LOCK_TIMEOUT=raw):
        try:
            value = jit_env.lock_timeout()
        except ValueError as exc:
            assert "FLASHKIT_LOCK_TIMEOUT" in str(exc)
            return
    assert value >= 0 and not math.isnan(value)


@PROPERTY
@given(_ENV_TEXT)
def test_jit_workers_parses_or_names_the_variable(raw):
    tried_example()
    with environ(FLASHKIT_JIT_WORKERS=raw):
        try:
            value = jit_env.build_workers()
        except ValueError as exc:
            assert "FLASHKIT_JIT_WORKERS" in str(exc)
            return
    assert isinstance(value, int) and value >= 1
