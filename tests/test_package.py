"""Packaging and import-time promises."""
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO


def test_import_is_cheap_and_lazy():
    """`import flashkit` loads neither torch nor triton nor CUDA bindings (0.07 s measured on
    2 cores; torch alone takes 1.3 s there)."""
    code = ("import time, sys; t = time.perf_counter(); import flashkit; "
            "dt = time.perf_counter() - t; "
            "print(dt, *[m in sys.modules for m in ('torch', 'triton', 'cuda.bindings.driver')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds, *loaded = out.stdout.split()
    assert loaded == ["False", "False", "False"]
    assert float(seconds) < 0.5


def test_lazy_attributes_resolve():
    import flashkit

    assert callable(flashkit.merge_states) and callable(flashkit.plan_split_kv)
    with pytest.raises(AttributeError):
        flashkit.not_an_op


def test_ops_import_touches_no_gpu_and_compiles_nothing(tmp_path):
    code = ("import flashkit.ops, torch; from flashkit import jit; "
            "print(len(jit.list_entries()), torch.cuda.is_initialized())")
    env = {"FLASHKIT_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=env)
    assert out.stdout.split() == ["0", "False"]


@pytest.mark.slow
def test_wheel_ships_templates_and_csrc(tmp_path):
    """A non-editable install finds its templates: they must be inside the wheel."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(REPO)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("flashkit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for tracked in subprocess.run(["git", "ls-files", "templates", "csrc"], cwd=REPO,
                                  capture_output=True, text=True, check=True).stdout.split():
        assert f"flashkit/{tracked}" in names, f"{tracked} missing from the wheel"
    for module in ("flashkit/jit/cache.py", "flashkit/ops/attention/merge_state.py",
                   "flashkit/bench/run.py", "flashkit/cli.py"):
        assert module in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)
    code = ("import flashkit.jit as j; print(j.TEMPLATE_DIR, "
            "(j.TEMPLATE_DIR / 'attention' / 'merge_state.py.j2').is_file())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    where, found = out.stdout.split()
    assert where.startswith(str(target)) and found == "True"
