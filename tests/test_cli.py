"""The flashkit command line."""
import subprocess
import sys

import pytest

from flashkit.cli import main


def test_doctor(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for field in ("python", "torch", "triton", "nvrtc", "nvcc", "ninja", "c++", "gpu",
                  "cache_dir", "cache_size", "backends:"):
        assert field in out


def test_jit_build_ls_clear(isolated_cache, capsys):
    assert main(["jit", "build", "merge_state_triton_hd64", "merge_state_cuda_bf16_hd128*",
                 "--arch", "sm_80,sm_90"]) == 0
    out = capsys.readouterr().out
    assert "0 failed" in out and "compiled" in out
    assert main(["jit", "ls"]) == 0
    out = capsys.readouterr().out
    assert "merge_state_triton_hd64_" in out and "merge_state_cuda_bf16_hd128" in out
    assert "triton" in out and "nvrtc" in out and "sm_80" in out and "sm_90" in out
    # A second build is all cache hits.
    assert main(["jit", "build", "merge_state_triton_hd64", "--arch", "sm_90"]) == 0
    assert "0 compiled, 1 cached" in capsys.readouterr().out
    assert main(["jit", "clear"]) == 0
    assert "removed" in capsys.readouterr().out
    assert not list(isolated_cache.rglob("manifest.json"))


def test_jit_build_needs_names_or_all(capsys):
    assert main(["jit", "build"]) == 2
    assert main(["jit", "build", "no_such_kernel*"]) == 2


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "flashkit", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for command in ("doctor", "jit", "bench", "demo"):
        assert command in out


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    """`flashkit demo` (what `make demo` runs): every check passes on this machine."""
    proc = subprocess.run([sys.executable, "-m", "flashkit", "demo"], capture_output=True,
                          text=True, timeout=900)
    failed = [line for line in proc.stdout.splitlines() if "FAIL" in line]
    assert proc.returncode == 0, "\n".join(failed) + proc.stderr[-3000:]
    assert "all checks passed" in proc.stdout
    assert "every cached answer equals its recompute" in proc.stdout  # the serving demo ran
    assert "placement llm loop (ninja)" in proc.stdout  # the compiled placement loop ran
    assert "FAIL" not in proc.stdout
