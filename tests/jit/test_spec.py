"""KernelSpec validation, render, and the uri: readable, and new for any change to what compiles."""
import functools
import importlib
import re
import shutil

import jinja2
import pytest

from flashkit import jit
from flashkit.jit import KernelSpec

from .specs import BACKENDS, TEMPLATES, nvrtc_spec, run_python, spec_code, spec_for

# The package re-exports the function render() under the submodule's name.
render_mod = importlib.import_module("flashkit.jit.render")
spec_mod = importlib.import_module("flashkit.jit.spec")

# One line a compiler would ignore, per source language: editing it changes only the text.
COMMENT = {"triton": "# edited\n", "nvrtc": "// edited\n", "ninja": "// edited\n"}
TEMPLATE = {"triton": "scale_add.py.j2", "nvrtc": "scale.cu.j2", "ninja": "add.cpp.j2"}
PARAM = {"triton": "scale", "nvrtc": "scale", "ninja": "offset"}


# --- validation and render --------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, field", [
    pytest.param(dict(name="has-dash", backend="triton", template="t"), "name", id="name-dash"),
    pytest.param(dict(name="9starts_with_digit", backend="triton", template="t"), "name",
                 id="name-digit"),
    pytest.param(dict(name="", backend="triton", template="t"), "name", id="name-empty"),
    pytest.param(dict(name="ok", backend="cuda", template="t"), "backend", id="backend-unknown"),
    pytest.param(dict(name="ok", backend="nvrtc", template="t"), "target", id="nvrtc-no-target"),
    pytest.param(dict(name="ok", backend="nvrtc", template="t", target="90"), "target",
                 id="nvrtc-bad-target"),
])
def test_spec_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        KernelSpec(**kwargs)


def test_create_sorts_params_so_dict_order_does_not_matter():
    a = KernelSpec.create("k", "triton", "t", {"b": 1, "a": 2})
    b = KernelSpec.create("k", "triton", "t", {"a": 2, "b": 1})
    assert a == b and hash(a) == hash(b)
    assert a.params == (("a", 2), ("b", 1))


def test_render_missing_param_raises_undefined():
    with pytest.raises(jinja2.UndefinedError, match="scale"):
        jit.render("scale.cu.j2", {}, TEMPLATES)


def test_spec_source_missing_param_raises_undefined():
    spec = KernelSpec.create("scale", "nvrtc", "scale.cu.j2", {}, target="sm_90",
                             template_root=str(TEMPLATES))
    with pytest.raises(jinja2.UndefinedError):
        spec.uri


def test_render_substitutes_params():
    assert "x[i] *= 3.0f;" in jit.render("scale.cu.j2", {"scale": 3}, TEMPLATES)


# --- uri --------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_uri_is_name_plus_short_hash(backend):
    spec = spec_for(backend)
    assert re.fullmatch(rf"{spec.name}_[0-9a-f]{{12}}", spec.uri), spec.uri


@pytest.mark.parametrize("backend", BACKENDS)
def test_uri_is_deterministic_for_equal_specs(backend):
    assert spec_for(backend).uri == spec_for(backend).uri


@pytest.mark.parametrize("backend", BACKENDS)
def test_uri_changes_with_param(backend):
    assert spec_for(backend).uri != spec_for(backend, **{PARAM[backend]: 7}).uri


@pytest.mark.parametrize("backend", BACKENDS)
def test_uri_changes_with_flags(backend):
    assert spec_for(backend).uri != spec_for(backend, flags=("-DFK_EXTRA=1",)).uri


def test_uri_changes_with_target():
    assert nvrtc_spec(target="sm_80").uri != nvrtc_spec(target="sm_90").uri


@pytest.mark.parametrize("backend", BACKENDS)
def test_uri_changes_when_template_is_edited(backend, tmp_path):
    root = tmp_path / "templates"
    shutil.copytree(TEMPLATES, root)
    before = spec_for(backend, root=root)
    before_source, before_uri = before.source, before.uri  # both are computed lazily
    path = root / TEMPLATE[backend]
    path.write_text(path.read_text() + COMMENT[backend])
    after = spec_for(backend, root=root)
    assert after == before  # same fields: only the template's text differs
    assert after.source == before_source + COMMENT[backend]
    assert after.uri != before_uri


@pytest.fixture
def csrc(tmp_path, monkeypatch):
    """A private csrc/ for header tests: the uri's header scan and the compilers both use it."""
    root = tmp_path / "csrc"
    (root / "fk_test").mkdir(parents=True)
    (root / "fk_test" / "consts.cuh").write_text("#pragma once\n#define FK_TEST_VALUE 1.0f\n")
    # spec.headers calls included_headers(source) with its default include_dir (bound to the
    # shipped csrc/ at import), so patch the name spec.py uses rather than render.CSRC_DIR.
    monkeypatch.setattr(spec_mod, "included_headers",
                        functools.partial(render_mod.included_headers, include_dir=root))
    from flashkit.jit.backends import ninja, nvrtc

    monkeypatch.setattr(nvrtc, "CSRC_DIR", root)
    monkeypatch.setattr(ninja, "CSRC_DIR", root)
    return root


def _header_spec(backend):
    if backend == "nvrtc":
        return KernelSpec.create("fill", "nvrtc", "with_header.cu.j2", target="sm_90",
                                 template_root=str(TEMPLATES))
    return KernelSpec.create("value", "ninja", "with_header.cpp.j2", template_root=str(TEMPLATES))


@pytest.mark.parametrize("backend", ["nvrtc", "ninja"])
def test_uri_changes_when_included_header_is_edited(backend, csrc):
    before = _header_spec(backend)
    assert before.headers == [csrc / "fk_test" / "consts.cuh"]
    before_uri = before.uri
    (csrc / "fk_test" / "consts.cuh").write_text("#pragma once\n#define FK_TEST_VALUE 2.0f\n")
    after = _header_spec(backend)
    assert after.source == before.source
    assert after.uri != before_uri


def test_included_headers_follow_nested_includes(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "outer.cuh").write_text('#include "a/inner.cuh"\n')
    (tmp_path / "a" / "inner.cuh").write_text("// leaf\n")
    found = render_mod.included_headers('#include "a/outer.cuh"\n#include <vector>\n', tmp_path)
    assert found == [tmp_path / "a" / "inner.cuh", tmp_path / "a" / "outer.cuh"]


def test_uri_changes_when_sibling_included_header_is_edited(csrc, isolated_cache):
    (csrc / "fk_test" / "consts.cuh").write_text('#pragma once\n#include "value.cuh"\n')
    (csrc / "fk_test" / "value.cuh").write_text("#define FK_TEST_VALUE 1.0f\n")
    before = _header_spec("nvrtc")
    assert jit.build(before).compiled  # NVRTC itself resolves value.cuh beside consts.cuh
    (csrc / "fk_test" / "value.cuh").write_text("#define FK_TEST_VALUE 2.0f\n")
    assert _header_spec("nvrtc").uri != before.uri


@pytest.mark.parametrize("backend", BACKENDS)
def test_uri_is_the_same_in_another_process(backend):
    child = run_python(spec_code(backend) + "import json; print(json.dumps({'uri': spec.uri}))")
    assert child["uri"] == spec_for(backend).uri
