"""A damaged cache entry is detected, rebuilt in place, and the rebuilt artifact works."""
import hashlib
import json
import logging
import shutil
import sys

import pytest

from flashkit import jit

from .specs import CALL, check_loaded, run_python, spec_code, spec_for


def _artifact(entry):
    return entry / json.loads((entry / "manifest.json").read_text())["artifact"]


def truncate(entry):
    path = _artifact(entry)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_byte(entry):
    path = _artifact(entry)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def empty_artifact(entry):
    _artifact(entry).write_bytes(b"")


def remove_artifact(entry):
    _artifact(entry).unlink()


def garbage_manifest(entry):
    (entry / "manifest.json").write_text("{not json")


def manifest_not_a_dict(entry):
    (entry / "manifest.json").write_text("[1, 2, 3]")


def manifest_without_checksum(entry):
    manifest = json.loads((entry / "manifest.json").read_text())
    del manifest["sha256"]
    (entry / "manifest.json").write_text(json.dumps(manifest))


def remove_manifest(entry):
    (entry / "manifest.json").unlink()


DAMAGE = [truncate, flip_byte, empty_artifact, remove_artifact, garbage_manifest,
          manifest_not_a_dict, manifest_without_checksum, remove_manifest]


def _fresh_import(monkeypatch, spec):
    """Forget an earlier import of this uri so that load really reads the rebuilt artifact."""
    monkeypatch.delitem(sys.modules, f"flashkit_jit_{spec.uri}", raising=False)  # triton
    monkeypatch.delitem(sys.modules, spec.uri, raising=False)  # ninja


@pytest.mark.parametrize("backend", ["triton", "nvrtc"])
@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__.replace("_", "-"))
def test_damaged_entry_is_rebuilt_and_works(backend, damage, isolated_cache, monkeypatch):
    spec = spec_for(backend)
    first = jit.build(spec)
    good = _artifact(first.path).read_bytes()
    damage(first.path)

    again = jit.build(spec)
    assert again.compiled, "a damaged entry was served as a hit"
    assert again.path == first.path
    rebuilt = _artifact(again.path).read_bytes()
    if backend == "triton":
        assert rebuilt == good
    else:  # a cubin embeds the (temp) source path for -lineinfo, so compare what it is
        assert rebuilt[:4] == good[:4] == b"\x7fELF" and len(rebuilt) > 0
    manifest = json.loads((again.path / "manifest.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(rebuilt).hexdigest()
    assert not jit.build(spec).compiled  # and the rebuilt entry is a valid hit
    assert [p.name for p in again.path.parent.iterdir() if p.name.startswith(".")] == []

    _fresh_import(monkeypatch, spec)
    module = jit.load(spec)
    assert check_loaded(backend, spec, module)
    if backend == "triton":
        assert module.__file__ == str(_artifact(again.path))


@pytest.mark.parametrize("damage", [truncate, flip_byte, garbage_manifest],
                         ids=lambda f: f.__name__.replace("_", "-"))
def test_damage_is_logged_naming_the_entry(damage, isolated_cache, caplog):
    spec = spec_for("nvrtc")
    entry = jit.build(spec).path
    damage(entry)
    with caplog.at_level(logging.WARNING, logger="flashkit.jit"):
        jit.build(spec)
    assert any(str(entry) in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records), caplog.text


def test_damaged_entry_is_not_loaded_even_in_process(isolated_cache, monkeypatch):
    spec = spec_for("triton")
    entry = jit.build(spec).path
    _artifact(entry).write_text("raise RuntimeError('loaded a corrupt artifact')\n")
    _fresh_import(monkeypatch, spec)
    assert check_loaded("triton", spec, jit.load(spec))


def test_truncated_ninja_extension_is_rebuilt_and_works(ninja_race, tmp_path, monkeypatch, caplog):
    # A copy of the race's cache: the original .so may be mapped into this process, and
    # truncating a mapped library under a live process is a SIGBUS, not a test.
    cache = tmp_path / "cache"
    shutil.copytree(ninja_race["cache"], cache)
    monkeypatch.setenv("FLASHKIT_CACHE_DIR", str(cache))
    spec = spec_for("ninja")
    entry = jit.entry_dir(spec)
    good_size = _artifact(entry).stat().st_size
    truncate(entry)

    with caplog.at_level(logging.INFO, logger="flashkit.jit"):
        result = jit.build(spec)
    assert result.compiled
    assert _artifact(entry).stat().st_size == good_size
    assert any(spec.uri in r.getMessage() and "compiled" in r.getMessage()
               for r in caplog.records), caplog.text

    code = spec_code("ninja") + (
        "import json\nimport flashkit.jit as jit\n"
        "module = jit.load(spec)\n"
        f"{CALL['ninja']}\n"
        "print(json.dumps({'ok': bool(ok), 'file': module.__file__}))\n")
    child = run_python(code, env={"FLASHKIT_CACHE_DIR": str(cache), "FLASHKIT_DISABLE_JIT": "1"})
    assert child["ok"]
    assert child["file"] == str(_artifact(entry))
