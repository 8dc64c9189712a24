"""AOT bundles: export the entries a workload used, import them elsewhere, load without compiling."""
import tarfile

import pytest

from flashkit import jit
from flashkit.cli import main
from flashkit.jit import cache

from .specs import nvrtc_spec, triton_spec


def _fresh_process_state():
    cache._loaded.clear()


def test_round_trip_loads_without_compiling(isolated_cache, tmp_path, monkeypatch):
    used, unused = triton_spec(scale=5), nvrtc_spec(scale=5)
    jit.load(used)
    jit.build(unused)
    assert jit.loaded_uris() == [used.uri]
    bundle = tmp_path / "kernels.tar.gz"
    assert jit.export_bundle(bundle, uris=jit.loaded_uris()) == [used.uri]

    jit.clear()
    _fresh_process_state()
    assert jit.import_bundle(bundle) == [used.uri]
    assert jit.import_bundle(bundle) == []  # already valid here: kept
    monkeypatch.setenv("FLASHKIT_DISABLE_JIT", "1")
    assert jit.build(used).compiled is False
    jit.load(used)
    with pytest.raises(jit.JitDisabledError):
        jit.build(unused)


def test_since_selects_recently_used(isolated_cache, tmp_path):
    old, new = triton_spec(scale=6), triton_spec(scale=7)
    jit.build(old)
    import os
    import time

    os.utime(jit.entry_dir(old), (time.time() - 3600, time.time() - 3600))
    jit.build(new)
    assert jit.export_bundle(tmp_path / "b.tar.gz", since=time.time() - 60) == [new.uri]


def test_corrupt_entry_is_refused(isolated_cache, tmp_path):
    spec = triton_spec(scale=8)
    jit.build(spec)
    (jit.entry_dir(spec) / "manifest.json").write_text(
        (jit.entry_dir(spec) / "manifest.json").read_text().replace('"sha256": "', '"sha256": "0'))
    jit.export_bundle(tmp_path / "b.tar.gz")
    jit.clear()
    with pytest.raises(jit.JitCacheError, match="fails its checksum"):
        jit.import_bundle(tmp_path / "b.tar.gz")
    assert not list(isolated_cache.rglob("manifest.json"))


def test_other_version_and_unsafe_members_are_refused(isolated_cache, tmp_path, monkeypatch):
    spec = triton_spec(scale=9)
    jit.build(spec)
    bundle = tmp_path / "b.tar.gz"
    jit.export_bundle(bundle)
    monkeypatch.setattr("flashkit.jit.bundle.__version__", "0.0.0-other")
    with pytest.raises(jit.JitCacheError, match="made by flashkit"):
        jit.import_bundle(bundle)
    monkeypatch.undo()
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(bundle) as src, tarfile.open(evil, "w:gz") as dst:
        for member in src.getmembers():
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        extra = tarfile.TarInfo("../escape.txt")
        dst.addfile(extra)
    with pytest.raises(jit.JitCacheError, match="refusing member"):
        jit.import_bundle(evil)
    assert not (isolated_cache.parent / "escape.txt").exists()


def test_cli_bundle_unbundle(isolated_cache, tmp_path, capsys):
    spec = triton_spec(scale=10)
    jit.build(spec)
    path = str(tmp_path / "k.tar.gz")
    assert main(["jit", "bundle", path, "scale_add*"]) == 0
    assert "wrote 1 entries" in capsys.readouterr().out
    assert main(["jit", "clear"]) == 0
    assert main(["jit", "unbundle", path]) == 0
    assert "added 1 entries" in capsys.readouterr().out
    assert jit.build(spec).compiled is False
