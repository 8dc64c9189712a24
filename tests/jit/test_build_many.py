"""build_many (ordered results, failures isolated, a progress bar) and cache housekeeping."""
import os
import time

import pytest

from flashkit import jit

from .specs import broken_spec, nvrtc_spec, spec_for, triton_spec


def _mixed_specs():
    return [triton_spec(scale=3), broken_spec("nvrtc"), nvrtc_spec(target="sm_80"),
            broken_spec("triton"), nvrtc_spec(target="sm_90"), triton_spec(scale=5)]


@pytest.mark.parametrize("workers", [1, 4])
def test_build_many_returns_results_in_order(workers, isolated_cache):
    specs = _mixed_specs()
    results = jit.build_many(specs, workers=workers)
    assert len(results) == len(specs)
    for spec, result in zip(specs, results):
        if spec.name == "broken":
            assert isinstance(result, jit.JitCompileError) and result.uri == spec.uri
        else:
            assert isinstance(result, jit.BuildResult) and result.uri == spec.uri
            assert result.compiled


def test_one_failure_does_not_stop_the_others(isolated_cache):
    specs = _mixed_specs()
    jit.build_many(specs, workers=2)
    good = [s for s in specs if s.name != "broken"]
    assert sorted(e["uri"] for e in jit.list_entries()) == sorted(s.uri for s in good)


def test_build_many_with_progress_prints_a_bar(isolated_cache, capsys):
    specs = _mixed_specs()
    results = jit.build_many(specs, progress=True)
    assert [getattr(r, "uri", None) for r in results] == [s.uri for s in specs]
    out = capsys.readouterr()
    assert "jit build" in out.out + out.err
    assert f"{len(specs)}/{len(specs)}" in out.out + out.err


def test_build_many_twice_is_all_hits(isolated_cache):
    specs = [s for s in _mixed_specs() if s.name != "broken"]
    jit.build_many(specs)
    assert [r.compiled for r in jit.build_many(specs, progress=True)] == [False] * len(specs)


def test_build_many_same_spec_in_threads_compiles_once(isolated_cache):
    spec = nvrtc_spec()
    results = jit.build_many([spec] * 6, workers=6)
    assert [r.compiled for r in results].count(True) == 1
    assert {r.uri for r in results} == {spec.uri}


# --- list_entries / cache_size / clear --------------------------------------------------------

@pytest.fixture
def three_entries(isolated_cache):
    specs = [spec_for("triton"), nvrtc_spec(target="sm_80"), nvrtc_spec(target="sm_90")]
    for spec in specs:
        jit.build(spec)
    return specs


def test_list_entries_shows_what_ls_prints(three_entries):
    entries = {e["uri"]: e for e in jit.list_entries()}
    assert sorted(entries) == sorted(s.uri for s in three_entries)
    now = time.time()
    for spec in three_entries:
        entry = entries[spec.uri]
        artifact = jit.entry_dir(spec) / entry["artifact"]
        assert entry["backend"] == spec.backend
        assert entry["size"] == artifact.stat().st_size > 0
        assert isinstance(entry["build_seconds"], float) and entry["build_seconds"] >= 0
        assert now - 60 < entry["last_used"] <= now + 1
        assert entry["path"] == str(jit.entry_dir(spec))


def test_load_updates_last_used(three_entries):
    spec = three_entries[0]
    os.utime(jit.entry_dir(spec), (1_000_000, 1_000_000))
    assert {e["uri"]: e["last_used"] for e in jit.list_entries()}[spec.uri] == 1_000_000
    jit.load(spec)
    assert {e["uri"]: e["last_used"] for e in jit.list_entries()}[spec.uri] > time.time() - 60


def test_list_entries_marks_a_corrupt_manifest(three_entries):
    spec = three_entries[1]
    (jit.entry_dir(spec) / "manifest.json").write_text("garbage")
    entries = {e["uri"]: e for e in jit.list_entries()}
    assert entries[spec.uri].get("corrupt") is True
    assert sum(1 for e in entries.values() if e.get("corrupt")) == 1


def test_list_entries_skips_failed_builds(isolated_cache):
    with pytest.raises(jit.JitCompileError):
        jit.build(broken_spec("nvrtc"))
    assert jit.list_entries() == []


def test_cache_size_counts_every_file(three_entries):
    root = jit.cache_root()
    expected = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    artifacts = sum(e["size"] for e in jit.list_entries())
    assert jit.cache_size() == expected >= artifacts > 0


def test_empty_cache_has_size_zero_and_no_entries(isolated_cache):
    assert jit.cache_size() == 0
    assert jit.list_entries() == []
    assert jit.clear() == 0


def test_clear_removes_everything_and_the_next_load_rebuilds(three_entries):
    spec = three_entries[0]
    jit.load(spec)
    assert jit.clear() == len(three_entries)
    assert jit.list_entries() == [] and jit.cache_size() == 0
    assert not jit.cache_root().exists()
    assert jit.build(spec).compiled
