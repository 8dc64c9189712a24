"""trace: the collector in a child process, trace files and their union, bundle --trace."""
import json
import os
import sys
import tarfile
from pathlib import Path

import pytest

from flashkit.cli import main
from flashkit.debloat import read_traces, run_traced, union_traces

REPO = Path(__file__).resolve().parents[2]


def test_records_loaded_libraries_and_children(plain_lib, tmp_path):
    out = tmp_path / "t.json"
    child = f"import ctypes; ctypes.CDLL({str(plain_lib)!r})"
    code = (f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}], "
            "check=True); import zlib; raise SystemExit(3)")
    rc, trace = run_traced([sys.executable, "-c", code], out, kernels=False)
    assert rc == 3
    assert trace["processes"] == 2
    assert str(plain_lib) in trace["libraries"]
    assert trace["kernels"] == [] and trace["kernel_source"] == "off"
    assert read_traces(out) == json.loads(out.read_text())


def test_records_flashkit_jit_uris(isolated_cache, tmp_path):
    code = ("import flashkit.jit as jit; from tests.jit.specs import triton_spec; "
            "jit.load(triton_spec(scale=13)); print(triton_spec(scale=13).uri)")
    out = tmp_path / "t.json"
    env_before = dict(os.environ)
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        rc, trace = run_traced([sys.executable, "-c", code], out, kernels=False)
    finally:
        os.chdir(cwd)
    assert os.environ == env_before
    assert rc == 0
    from tests.jit.specs import triton_spec

    assert trace["flashkit_uris"] == [triton_spec(scale=13).uri]

    # bundle exactly the trace's entries, not the others in the cache
    from flashkit import jit

    jit.build(triton_spec(scale=14))
    bundle = tmp_path / "b.tar.gz"
    assert main(["jit", "bundle", str(bundle), "--trace", str(out)]) == 0
    with tarfile.open(bundle) as tar:
        names = {Path(m.name).parts[1] for m in tar.getmembers() if len(Path(m.name).parts) > 2}
    assert names == {triton_spec(scale=13).uri}


def test_union_and_bad_files(tmp_path):
    a = {"flashkit_trace": 1, "processes": 1, "libraries": ["/a.so"], "kernels": ["k1"],
         "flashkit_uris": ["u1"]}
    b = {"flashkit_trace": 1, "processes": 2, "libraries": ["/a.so", "/b.so"],
         "kernels": ["k2", "k1"], "flashkit_uris": []}
    u = union_traces([a, b])
    assert (u["libraries"], u["kernels"], u["flashkit_uris"], u["processes"]) == \
        (["/a.so", "/b.so"], ["k1", "k2"], ["u1"], 3)
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    assert read_traces([pa, pb])["kernels"] == ["k1", "k2"]
    bad = tmp_path / "bad.json"
    for text, match in [("{", "not JSON"), ("[]", "not a flashkit trace"),
                        ('{"flashkit_trace": 1, "libraries": [1], "kernels": [], '
                         '"flashkit_uris": []}', "libraries")]:
        bad.write_text(text)
        with pytest.raises(ValueError, match=match):
            read_traces(bad)
    with pytest.raises(ValueError, match="cannot read"):
        read_traces(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="cmd"):
        run_traced([], tmp_path / "t.json")
    assert main(["debloat", "trace", "-o", str(tmp_path / "t.json"), "--",
                 str(tmp_path / "no-such-binary")]) == 2
    assert main(["jit", "bundle", str(tmp_path / "b.tar.gz"), "--trace", str(bad)]) == 2


def test_existing_sitecustomize_still_runs(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import os\nos.environ['FROM_SITECUSTOMIZE'] = '1'\n")
    monkeypatch.setenv("PYTHONPATH", str(site))
    code = "import os, sys; sys.exit(0 if os.environ.get('FROM_SITECUSTOMIZE') == '1' else 5)"
    rc, trace = run_traced([sys.executable, "-c", code], tmp_path / "t.json", kernels=False)
    assert rc == 0 and trace["processes"] == 1


def test_kernel_collection_without_a_gpu(tmp_path):
    """With kernels on and no CUDA device the collector says so and records the rest."""
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("has a GPU: the kernel path is exercised by the GPU procedure instead")
    rc, trace = run_traced([sys.executable, "-c", "import json"], tmp_path / "t.json")
    assert rc == 0 and trace["kernel_source"] == "unavailable (no CUDA device)"
    assert trace["kernels"] == [] and trace["libraries"]
