"""A cache that cannot be written: a miss raises JitCacheError naming the folder, a hit still loads."""
import shutil
import subprocess
import sys

import pytest

from flashkit import jit

from .specs import (BACKENDS, CALL, as_unprivileged, make_read_only, make_writable, run_python,
                    spec_code, spec_for)


@pytest.fixture(scope="module")
def unprivileged():
    """``run_python`` kwargs for a child bound by file permissions (see ``as_unprivileged``)."""
    kwargs = as_unprivileged()
    try:
        subprocess.run([sys.executable, "-c", "pass"], check=True, **kwargs)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot start a child that obeys file permissions here: {exc}")
    return kwargs


@pytest.fixture
def read_only(tmp_path):
    """Make folders read-only for the test; restore them after so tmp_path can be cleaned."""
    done = []

    def apply(root):
        make_read_only(root)
        done.append(root)

    yield apply
    for root in done:
        make_writable(root)


CHILD_BUILD = (
    "import json\nimport flashkit.jit as jit\n"
    "try:\n"
    "    jit.build(spec)\n"
    "    print(json.dumps({'raised': None}))\n"
    "except jit.JitError as exc:\n"
    "    print(json.dumps({'raised': type(exc).__name__, 'message': str(exc),\n"
    "                      'dir': str(jit.entry_dir(spec).parent)}))\n"
)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cache_under_a_regular_file_raises_cache_error(backend, tmp_path, monkeypatch):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache's parent folder should be")
    monkeypatch.setenv("FLASHKIT_CACHE_DIR", str(blocker / "cache"))
    spec = spec_for(backend)
    with pytest.raises(jit.JitCacheError) as info:
        jit.build(spec)
    message = str(info.value)
    assert str(jit.entry_dir(spec).parent) in message
    assert "FLASHKIT_CACHE_DIR" in message  # says how to fix it


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_only_cache_dir_raises_cache_error(backend, tmp_path, read_only, unprivileged):
    cache = tmp_path / "cache"
    cache.mkdir()
    read_only(cache)
    child = run_python(spec_code(backend) + CHILD_BUILD, env={"FLASHKIT_CACHE_DIR": str(cache)},
                       **unprivileged)
    assert child["raised"] == "JitCacheError", child
    assert child["dir"] in child["message"]


def test_read_only_cache_that_holds_the_entry_still_loads(warm, tmp_path, read_only, unprivileged):
    cache = tmp_path / "ro-cache"
    shutil.copytree(jit.cache_root().parent, cache)
    read_only(cache)
    code = spec_code(warm) + (
        "import json\nimport flashkit.jit as jit\n"
        "result = jit.build(spec)\n"
        "module = jit.load(spec)\n"
        f"{CALL[warm]}\n"
        "print(json.dumps({'ok': bool(ok), 'compiled': result.compiled}))\n")
    child = run_python(code, env={"FLASHKIT_CACHE_DIR": str(cache)}, **unprivileged)
    assert child == {"ok": True, "compiled": False}


def test_read_only_probe_really_denies_writes(tmp_path, read_only, unprivileged):
    """Guards the tests above: the child must not write through a read-only folder."""
    read_only(tmp_path)
    code = ("import json\ntry:\n"
            f"    open({str(tmp_path / 'x')!r}, 'w')\n    denied = False\n"
            "except PermissionError:\n    denied = True\n"
            "print(json.dumps({'denied': denied}))\n")
    assert run_python(code, **unprivileged) == {"denied": True}
