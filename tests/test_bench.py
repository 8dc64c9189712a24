"""The benchmark runner end to end on the CPU (--quick): record fields, rows, ceilings, errors.

No timing asserts beyond "positive": benchmarks are not tests.
"""
import dataclasses
import json
import math
import re

import pytest
import torch

from flashkit.bench import record, registry, run
from flashkit.bench.registry import Case, Setup
from flashkit.bench.timing import measure

ROW_FIELDS = {"case", "op", "shape", "impl", "role", "device", "status", "error", "note",
              "median_ms", "p20_ms", "p80_ms", "reps", "first_call_ms", "max_abs_err", "atol",
              "flops", "bytes", "gbps", "tflops", "frac_copy", "frac_matmul", "speedup"}


@pytest.fixture(scope="module")
def quick_record(tmp_path_factory):
    """One quick CPU run of both registered ops (the ceilings are measured once for both)."""
    path = tmp_path_factory.mktemp("bench") / "out.json"
    rc = run.main(["merge_states", "plan_split_kv", "--quick", "--device", "cpu", "--json", str(path),
                   "--no-save"])
    return rc, json.loads(path.read_text())


def test_quick_run_record(quick_record):
    rc, rec = quick_record
    assert rc == 0, [r for r in rec["rows"] if r["status"] != "ok"]
    assert rec["device"]["type"] == "cpu" and rec["device"]["name"]
    for key in ("python", "torch", "triton", "flashkit"):
        assert rec["versions"][key], key
    assert "cuda" in rec["versions"]
    assert {"commit", "short", "dirty"} <= set(rec["git"])
    assert "-m" in rec["command"] and "--quick" in rec["command"]
    assert re.match(r"\d{4}-\d\d-\d\dT", rec["timestamp"])
    c = rec["ceilings"]
    assert c["copy_gbps"] > 0 and c["matmul_tflops"] > 0
    assert c["matmul_dtype"] and len(c["matmul_shape"]) == 3


def _rows(rec, op):
    return {r["impl"]: r for r in rec["rows"] if r["op"] == op}


def test_quick_run_merge_states(quick_record):
    _, rec = quick_record
    rows = _rows(rec, "merge_states")
    for row in rows.values():
        assert ROW_FIELDS <= set(row)
    for impl in ("flashkit-torch", "torch-reference"):
        r = rows[impl]
        assert r["status"] == "ok", r
        assert 0 < r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
        assert r["gbps"] > 0 and r["tflops"] > 0 and r["frac_copy"] > 0
        assert r["max_abs_err"] is not None and r["max_abs_err"] <= r["atol"]
    assert set(rows["flashkit-torch"]["speedup"]) == {"torch-reference"}
    # Triton is listed with the reason it is not timed on the CPU, not dropped.
    assert rows["flashkit-triton"]["status"] == "skipped" and rows["flashkit-triton"]["note"]


def test_quick_run_planner(quick_record):
    _, rec = quick_record
    cases = {r["case"] for r in rec["rows"] if r["op"] == "plan_split_kv"}
    assert len(cases) == 2
    for r in rec["rows"]:
        if r["op"] == "plan_split_kv":
            assert r["status"] == "ok", r
            assert r["median_ms"] > 0 and r["gbps"] is None and r["max_abs_err"] == 0
    assert all("flashkit-python" in r["speedup"] for r in rec["rows"]
               if r["impl"] == "flashkit-ninja")


def _broken_setup(device, quick):
    x = torch.arange(4.0)
    return Setup(impls={"flashkit-raises": lambda x: 1 / 0, "flashkit-wrong": lambda x: x + 1},
                 baselines={"ref": lambda x: x.clone()}, inputs=[(x,)],
                 reference=lambda x: x.clone(), atol=0.0, skipped={"flashkit-cuda": "no GPU"})


@pytest.fixture
def broken_case(monkeypatch):
    case = Case(name="zz_broken/x4", op="zz_broken", shape="[4]", setup=_broken_setup,
                flops=4, bytes=32, quick=("cpu",))
    monkeypatch.setitem(registry._CASES, case.name, case)
    monkeypatch.setattr(run, "measure_ceilings",
                        lambda device, quick: {"copy_gbps": 1.0, "matmul_tflops": 1.0,
                                               "matmul_dtype": "float32"})
    return case


def test_failures_are_rows(broken_case, tmp_path):
    path = tmp_path / "out.json"
    rc = run.main(["zz_broken", "--quick", "--device", "cpu", "--json", str(path), "--no-save"])
    rows = {r["impl"]: r for r in json.loads(path.read_text())["rows"]}
    assert rc == 1
    assert rows["flashkit-raises"]["status"] == "error"
    assert "ZeroDivisionError" in rows["flashkit-raises"]["error"]
    assert rows["flashkit-wrong"]["status"] == "inaccurate"
    assert rows["flashkit-wrong"]["max_abs_err"] == 1.0
    assert rows["ref"]["status"] == "ok" and rows["flashkit-cuda"]["status"] == "skipped"


def test_save_names_a_new_file(broken_case, tmp_path, monkeypatch):
    monkeypatch.setattr(record, "results_dir", lambda: tmp_path)
    for _ in range(2):
        run.main(["zz_broken/x4", "--quick", "--device", "cpu"])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2, names
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_[a-z0-9-]+_[0-9a-z]+\.json", names[0]), names
    assert names[1] == names[0].replace(".json", "_2.json")


def test_unknown_op_is_a_usage_error():
    with pytest.raises(SystemExit) as exc:
        run.main(["no_such_op", "--device", "cpu", "--no-save"])
    assert exc.value.code == 2


def test_measure_cpu():
    t = measure(lambda: sum(range(1000)), device="cpu", warmup_ms=1, rep_ms=5, min_reps=5)
    assert t.reps >= 5 and 0 < t.p20_ms <= t.median_ms <= t.p80_ms


def test_max_abs_error():
    @dataclasses.dataclass
    class Plan:
        n: int
        idx: torch.Tensor

    a = Plan(3, torch.tensor([1, 2, 3], dtype=torch.int32))
    assert run.max_abs_error(a, Plan(3, torch.tensor([1, 2, 5], dtype=torch.int32))) == 2
    inf = torch.tensor([float("-inf"), 1.0])
    assert run.max_abs_error((inf,), (inf.clone(),)) == 0
    assert math.isnan(run.max_abs_error(torch.tensor([float("nan")]), torch.tensor([0.0])))
    with pytest.raises(ValueError, match="shape"):
        run.max_abs_error(torch.zeros(2), torch.zeros(3))


def test_jit_cold_nvrtc(tmp_path, capsys):
    """Cold JIT timing: two fresh processes, the first compiles into an empty cache, the second
    hits it (warm must be far below cold: it only reads the manifest)."""
    from flashkit.bench import jit_cold

    out = tmp_path / "cold.json"
    assert jit_cold.main(["--repeats", "1", "--only", "nvrtc", "--no-save", "--json",
                          str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["kind"] == "jit_cold" and rec["git"] and rec["versions"]["torch"]
    (row,) = rec["rows"]
    assert row["backend"] == "nvrtc" and 0 < row["warm_s"] < row["cold_s"]
    assert "nvrtc" in capsys.readouterr().out
