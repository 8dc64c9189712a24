"""The JIT under misuse: what a spec may carry, locks per entry, leftovers of killed builds, a
clear during a build, and compile errors that only show at launch."""
import os
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from flashkit import jit
from flashkit.jit import KernelSpec, Snippet, cache
from flashkit.jit.backends import ninja

from .specs import TEMPLATES, ninja_spec, triton_spec


def snippet_spec(*lines: str) -> KernelSpec:
    return KernelSpec.create("snippet", "triton", "snippet.py.j2", {"body": Snippet(lines)},
                             template_root=str(TEMPLATES))


def run_snippet(spec: KernelSpec):
    import torch

    device = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
    x = torch.arange(16, dtype=torch.float32, device=device)
    jit.load(spec)._snippet_kernel[(1,)](x, BLOCK=16)
    return x.cpu()


INTERPRETED = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                 reason="records launches of Triton's interpreter")


# --- what a spec may carry --------------------------------------------------------------------

def test_every_shipped_spec_passes_the_checks():
    import flashkit.ops  # noqa: F401  (registers the shipped specs)

    specs = jit.shipped_specs(["sm_80", "sm_90"])
    assert len(specs) > 50
    for spec in specs:  # rebuilt field by field, so __post_init__ checks each again
        assert KernelSpec(spec.name, spec.backend, spec.template, spec.params, spec.target,
                          spec.flags, spec.template_root) == spec


def test_statements_snippet_renders_inside_its_function(isolated_cache):
    x = run_snippet(snippet_spec("y = x * 2", "x = y + 1"))
    assert x.tolist() == [2.0 * i + 1 for i in range(16)]


def test_snippet_cannot_end_its_function():
    # The one way out of a function body is a line at column 0; a Snippet cannot hold one.
    with pytest.raises(ValueError, match="line breaks"):
        Snippet(("x = x", "\nimport os"))
    spec = snippet_spec("return x", "import os")  # a dedent inside a line is still the body
    assert "\n    import os\n" in spec.source and "\nimport os" not in spec.source


def test_statements_snippet_refuses_str():
    with pytest.raises(TypeError, match="line by line"):
        str(Snippet("x = 1"))


def test_expression_snippet_renders_as_text():
    assert str(Snippet("x * tl.sigmoid(x)", "expression")) == "x * tl.sigmoid(x)"


def test_ninja_flags_stay_one_argument_each():
    words = ["-DA=1", "-DB=a b;touch /tmp/x", "-DC=$HOME", "-DD='q'", "/usr/bin/g++ x"]
    value = ninja._ninja_words(words)
    assert "\n" not in value
    assert shlex.split(value.replace("$$", "$")) == words


def test_ninja_flag_with_shell_metacharacters_builds_without_running_them(tmp_path,
                                                                          isolated_cache):
    marker = tmp_path / "injected"
    spec = ninja_spec(flags=(f"-DFK_NOTE=1;touch {marker}", "-DFK_DOLLAR=$cxx"))
    assert jit.load(spec).add(2, 3) == 105
    assert not marker.exists()


# --- locks per entry --------------------------------------------------------------------------

def test_loading_a_built_spec_does_not_wait_behind_another_compile(isolated_cache, monkeypatch):
    built = triton_spec(scale=3)
    jit.build(built)
    slow = triton_spec(scale=4)
    backend = jit.get_backend("triton")
    real = type(backend).compile
    compiling, release = threading.Event(), threading.Event()

    def blocking_compile(self, spec, *args):
        if spec.uri == slow.uri:
            compiling.set()
            assert release.wait(60)
        return real(self, spec, *args)

    monkeypatch.setattr(type(backend), "compile", blocking_compile)
    errors = []
    builder = threading.Thread(target=lambda: errors.append(jit.load(slow) and None))
    builder.start()
    try:
        assert compiling.wait(30)
        done = threading.Event()
        loader = threading.Thread(target=lambda: (jit.load(built), done.set()))
        loader.start()
        # With one global load lock this wait ran out: the loader sat behind the compile.
        assert done.wait(30), "loading a built spec waited for another spec's compile"
        assert builder.is_alive()
    finally:
        release.set()
        builder.join(60)
    assert errors == [None]


# --- leftovers of killed builds ---------------------------------------------------------------

def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_next_build_sweeps_temp_folders_of_dead_processes(isolated_cache):
    spec = triton_spec(scale=6)
    parent = jit.entry_dir(spec).parent
    parent.mkdir(parents=True)
    dead = _dead_pid()
    stale = [parent / f".{spec.uri}.tmp-{dead}-0123abcd",
             parent / f".other_0123456789ab.tmp-{dead}-89abcdef",
             parent / f".{spec.uri}.trash-0badf00d"]
    alive = parent / f".other_0123456789ab.tmp-{os.getpid()}-76543210"
    for folder in stale + [alive]:
        folder.mkdir()
        (folder / "source.py").write_text("partial")
    assert jit.build(spec).compiled
    assert [p for p in stale if p.exists()] == []
    assert alive.is_dir()  # its process lives: it may still be building


KILLED_BUILDER = """
import sys, time
from flashkit import jit
from tests.jit.specs import triton_spec
backend = jit.get_backend("triton")
def stuck(self, spec, source_path, build_dir):
    print("compiling", flush=True)
    time.sleep(120)
type(backend).compile = stuck
jit.build(triton_spec(scale=12))
"""


def test_build_after_a_sigkilled_build_sweeps_its_temp_folder(isolated_cache):
    spec = triton_spec(scale=12)
    child = subprocess.Popen([sys.executable, "-c", KILLED_BUILDER], cwd=Path(__file__).parents[2],
                             env={**os.environ, "FLASHKIT_CACHE_DIR": str(isolated_cache)},
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "compiling"
    finally:
        child.kill()  # SIGKILL: no cleanup handler runs
        child.wait()
    parent = jit.entry_dir(spec).parent
    left = [p.name for p in parent.iterdir() if ".tmp-" in p.name]
    assert len(left) == 1 and left[0].startswith(f".{spec.uri}.tmp-{child.pid}-"), left
    assert jit.load(spec).SCALE == 12
    assert [p.name for p in parent.iterdir() if ".tmp-" in p.name] == []


def test_sweep_keeps_a_dead_pids_folder_whose_lock_is_held(isolated_cache):
    """A pid this process cannot see may live in another container: its lock decides."""
    from filelock import FileLock

    spec = triton_spec(scale=7)
    parent = jit.entry_dir(spec).parent
    parent.mkdir(parents=True)
    busy = parent / f".busy_0123456789ab.tmp-{_dead_pid()}-0123abcd"
    busy.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from filelock import FileLock\n"
         "with FileLock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)",
         str(parent / "busy_0123456789ab.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        jit.build(spec)
        assert busy.is_dir()
    finally:
        holder.kill()
        holder.wait()
    with FileLock(str(parent / "busy_0123456789ab.lock"), timeout=5):
        pass  # the holder is gone: the lock is free again
    jit.build(triton_spec(scale=8))
    assert not busy.exists()


# --- a clear during a build -------------------------------------------------------------------

def _clearing_compile(monkeypatch, times: int):
    backend = jit.get_backend("triton")
    real = type(backend).compile
    calls = []

    def compile_then_clear(self, spec, source_path, build_dir):
        calls.append(1)
        artifact = real(self, spec, source_path, build_dir)
        if len(calls) <= times:
            jit.clear()  # what `flashkit jit clear` in another shell does
        return artifact

    monkeypatch.setattr(type(backend), "compile", compile_then_clear)
    return calls


def test_clear_during_a_build_builds_again(isolated_cache, monkeypatch):
    calls = _clearing_compile(monkeypatch, times=1)
    spec = triton_spec(scale=9)
    x = jit.load(spec)
    assert len(calls) == 2
    assert cache.read_manifest(jit.entry_dir(spec)) is not None
    assert x.SCALE == 9


def test_clear_in_a_loop_is_a_cache_error_not_file_not_found(isolated_cache, monkeypatch):
    _clearing_compile(monkeypatch, times=99)
    with pytest.raises(jit.JitCacheError, match="removed 3 times"):
        jit.build(triton_spec(scale=10))


def test_clear_between_build_and_load_loads_anyway(isolated_cache, monkeypatch):
    spec = triton_spec(scale=11)
    real_build = cache.build
    calls = []

    def build_then_clear(s, force=False):
        result = real_build(s, force)
        calls.append(1)
        if len(calls) == 1:
            jit.clear()
        return result

    monkeypatch.setattr(cache, "build", build_then_clear)
    assert jit.load(spec).SCALE == 11 and len(calls) == 2


# --- compile errors at launch -----------------------------------------------------------------

def test_undefined_name_at_launch_names_uri_source_and_log(isolated_cache):
    spec = snippet_spec("x = x + not_defined_anywhere")
    jit.build(spec)  # valid Python: the name is only looked up when the kernel compiles/runs
    with pytest.raises(jit.JitCompileError) as info:
        run_snippet(spec)
    exc = info.value
    assert exc.uri == spec.uri and spec.uri in str(exc)
    assert Path(exc.source_path).read_text() == spec.source
    assert "not_defined_anywhere" in Path(exc.log_path).read_text()
    assert "not_defined_anywhere" in str(exc) and exc.log_path in str(exc)
    assert isinstance(exc.__cause__, Exception)  # the compiler's own error stays attached


@INTERPRETED
def test_launch_error_wrapper_keeps_class_level_hooks(isolated_cache):
    from flashkit.jit.triton_aot import record_launches

    spec = snippet_spec("x = x + 1")
    with record_launches() as launches:
        run_snippet(spec)
    assert [launch.kernel for launch in launches] == ["_snippet_kernel"]
