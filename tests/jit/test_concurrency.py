"""Concurrent processes asking for one spec: one compiles, the others wait and load its artifact."""
import pytest
from filelock import FileLock

from flashkit import jit

from .conftest import RACERS
from .specs import nvrtc_spec


def test_racers_really_overlapped(ninja_race):
    outputs = ninja_race["outputs"]
    builder = next(o for o in outputs if o["compiled"])
    # Every racer asked before the build finished, so all but one waited on the lock.
    assert max(o["start"] for o in outputs) < builder["end"]


def test_exactly_one_process_compiles(ninja_race):
    compiled = [o["compiled"] for o in ninja_race["outputs"]]
    assert len(compiled) == RACERS
    assert compiled.count(True) == 1, compiled


def test_every_process_loads_and_calls_the_same_artifact(ninja_race):
    outputs = ninja_race["outputs"]
    assert {o["uri"] for o in outputs} == {ninja_race["spec"].uri}
    assert [o["add"] for o in outputs] == [105] * RACERS


def test_race_leaves_one_whole_entry_and_no_temp_dirs(ninja_race, ninja_cache):
    spec = ninja_race["spec"]
    entry = jit.entry_dir(spec)
    leftovers = [p.name for p in entry.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    assert [e["uri"] for e in jit.list_entries()] == [spec.uri]
    assert (entry / "manifest.json").is_file()


def test_waiting_past_the_lock_timeout_raises_cache_error(isolated_cache, monkeypatch):
    spec = nvrtc_spec()
    parent = jit.entry_dir(spec).parent
    parent.mkdir(parents=True)
    monkeypatch.setenv("FLASHKIT_LOCK_TIMEOUT", "0.2")
    # Another holder of the build lock (a separate FileLock is a separate flock, as in another
    # process), which never finishes.
    with FileLock(str(parent / f"{spec.uri}.lock")):
        with pytest.raises(jit.JitCacheError) as info:
            jit.build(spec)
    message = str(info.value)
    assert spec.uri in message and "FLASHKIT_LOCK_TIMEOUT" in message
    assert jit.build(spec).compiled  # the lock released: the next build goes through
