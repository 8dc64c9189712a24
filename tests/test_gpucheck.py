"""flashkit.gpucheck's mechanics on the CPU: the budget, caps that stop a hung section, results
written as each section ends, the plan, and the pytest log plugin."""
import json
import subprocess
import sys
import time

import pytest

from flashkit.gpucheck import cli, estimate, plan, runner
from flashkit.gpucheck.plan import Section

PY = sys.executable


def _writer(payload: dict, then: str = "") -> list[str]:
    """A command that writes ``payload`` to {result}, then runs ``then``."""
    code = (f"import json, sys, time; json.dump({payload!r}, open(sys.argv[1], 'w')); "
            f"{then}")
    return [PY, "-c", code, "{result}"]


def test_a_hung_section_is_stopped_at_its_cap_and_earlier_results_stay(tmp_path):
    sections = [
        Section("first", "finishes", 4.0, [_writer({"rows": [1, 2]})]),
        # Writes a partial result (as the bench does after each case), then hangs.
        Section("hung", "hangs", 2.0, [_writer({"rows": [3]}, "time.sleep(120)")]),
        Section("after", "still runs", 4.0, [_writer({"rows": [4]})]),
    ]
    seen_when_hung_started = []

    def echo(line):
        if line.startswith("[2/3] hung"):
            seen_when_hung_started.append((tmp_path / "01_first.json").exists())

    t0 = time.monotonic()
    summary = runner.run_plan(sections, tmp_path, budget_s=10.0, command="test", echo=echo,
                              min_start_s=0.5)
    elapsed = time.monotonic() - t0
    assert seen_when_hung_started == [True], "the first section's JSON is written as it ends"
    first = json.loads((tmp_path / "01_first.json").read_text())
    hung = json.loads((tmp_path / "02_hung.json").read_text())
    after = json.loads((tmp_path / "03_after.json").read_text())
    assert first["status"] == "ok" and first["result"] == {"rows": [1, 2]}
    assert hung["status"] == "timeout" and hung["returncodes"] == [None]
    assert hung["cap_s"] == pytest.approx(2.0) and hung["elapsed_s"] < 2.0 + 3.0 + 2.0
    assert hung["result"] == {"rows": [3]}, "a cut section keeps what it had written"
    assert after["status"] == "ok" and after["result"] == {"rows": [4]}
    assert elapsed < 10.0 + 3.0
    assert [s["status"] for s in summary["sections"]] == ["ok", "timeout", "ok"]
    on_disk = json.loads((tmp_path / runner.SUMMARY).read_text())
    assert on_disk["sections"] == summary["sections"] and on_disk["command"] == "test"
    # At most 8 files come back from a GPU slot: one per section plus the summary.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "00_gpucheck.json", "01_first.json", "02_hung.json", "03_after.json"]


def test_a_further_record_travels_in_its_sections_file(tmp_path):
    write = "import json, sys; json.dump({'ms': [0, 1]}, open(sys.argv[1], 'w'))"
    sections = [Section("misc", "two records", 10.0, [
        _writer({"rows": [1]}), [PY, "-c", write, "{extra:table}"],
        [PY, "-c", "pass", "{extra:missing}"]])]
    runner.run_plan(sections, tmp_path, budget_s=20.0, command="test", echo=lambda line: None,
                    min_start_s=0.5)
    rec = json.loads((tmp_path / "01_misc.json").read_text())
    assert rec["result"] == {"rows": [1]}
    assert rec["extra"] == {"table": {"ms": [0, 1]}, "missing": None}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00_gpucheck.json", "01_misc.json"]
    misc = plan.default_plan(str(tmp_path), plugins=set())[5]
    assert misc.name == "misc" and "{extra:prefix_cache_latency}" in misc.commands[-1]


def test_budget_scales_caps_and_skips_what_cannot_start(tmp_path):
    sections = [Section("a", "", 30, [_writer({"x": 1})]), Section("b", "", 10, [_writer({})]),
                Section("c", "", 60, [[PY, "-c", "import time; time.sleep(60)"]])]
    assert runner.scaled_caps(sections, 50) == pytest.approx([15, 5, 30])
    with pytest.raises(ValueError, match="budget_s"):
        runner.scaled_caps(sections, 0)
    # 2 s for everything: a and b fit (0.6 and 0.2 s caps are above min_start_s=0.1)...
    summary = runner.run_plan(sections[:2], tmp_path, budget_s=2.0, command="t",
                              min_start_s=0.1, echo=lambda line: None)
    assert summary["sections"][0]["cap_s"] == pytest.approx(1.5)
    # ...and with a start floor above every cap nothing starts, but every file is written.
    summary = runner.run_plan(sections, tmp_path / "tiny", budget_s=2.0, command="t",
                              min_start_s=5.0, echo=lambda line: None)
    assert [s["status"] for s in summary["sections"]] == ["skipped"] * 3
    assert "left of the budget" in json.loads((tmp_path / "tiny" / "03_c.json").read_text())[
        "note"]


def test_failed_command_and_following_commands(tmp_path):
    section = Section("two", "", 20, [[PY, "-c", "raise SystemExit(3)"], _writer({"ok": 1})])
    summary = runner.run_plan([section], tmp_path, 20, command="t", min_start_s=0.1,
                              echo=lambda line: None)
    rec = json.loads((tmp_path / "01_two.json").read_text())
    assert summary["sections"][0]["status"] == "failed" and rec["returncodes"] == [3, 0]
    assert rec["result"] == {"ok": 1}


def test_environment_context_and_own_ceilings(tmp_path):
    """Later sections repeat the environment's device/versions/commit; without its ceilings a
    bench command measures its own (the --ceilings option is dropped)."""
    env = {"device": {"name": "Fake"}, "versions": {"torch": "x"}, "git": {"commit": "abc"},
           "host": {}}
    show = [PY, "-c", "import json, sys; json.dump(sys.argv[2:], open(sys.argv[1], 'w'))",
            "{result}", "--ceilings", "somewhere.json", "--quick"]
    sections = [Section("environment", "", 5, [_writer(env)]), Section("bench", "", 5, [show])]
    runner.run_plan(sections, tmp_path, 10, command="t", min_start_s=0.1, echo=lambda line: None)
    rec = json.loads((tmp_path / "02_bench.json").read_text())
    assert rec["device"] == {"name": "Fake"} and rec["git"] == {"commit": "abc"}
    assert json.loads((tmp_path / runner.SUMMARY).read_text())["device"] == {"name": "Fake"}
    assert rec["result"] == ["--quick"]


def test_jsonl_results_survive_a_torn_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"test": "a", "outcome": "passed", "seconds": 1}\n'
                    '{"test": "b", "outcome": "failed", "seconds": 2}\n{"test": "c", "out')
    items = runner._read_result(path, "jsonl")
    assert [i["test"] for i in items] == ["a", "b"]
    assert runner._test_summary(items)["counts"] == {"passed": 1, "failed": 1}


def test_pytest_log_plugin(tmp_path):
    (tmp_path / "test_x.py").write_text(
        "import pytest\n"
        "def test_ok():\n    pass\n"
        "def test_bad():\n    assert 1 == 2\n"
        "@pytest.mark.skip(reason='nope')\ndef test_skip():\n    pass\n")
    log = tmp_path / "log.jsonl"
    # Under xdist, as in the GPU run: the controller writes each line once.
    subprocess.run([PY, "-m", "pytest", "-q", "-n", "2", "-p", "flashkit.gpucheck.pytest_log",
                    "-p", "no:cacheprovider", str(tmp_path / "test_x.py")], cwd=tmp_path,
                   env={**__import__("os").environ, "FLASHKIT_GPUCHECK_TESTLOG": str(log)},
                   capture_output=True, timeout=120)
    lines = runner._read_result(log, "jsonl")
    items = {i["test"].split("::")[1]: i for i in lines}
    assert len(lines) == 3, lines
    assert items["test_ok"]["outcome"] == "passed"
    assert items["test_bad"]["outcome"] == "failed" and "assert 1 == 2" in items["test_bad"][
        "message"]
    assert items["test_skip"]["outcome"] == "skipped"


def test_default_plan(tmp_path):
    sections = plan.default_plan(str(tmp_path), workers=16, plugins={"xdist", "timeout"},
                                 n_tests=1000)
    assert [s.name for s in sections] == ["environment", "tests", "attention", "ssm", "moe",
                                          "misc", "jit_cold"]
    assert len(sections) + 1 <= 8, "a GPU slot returns at most 8 files"
    # 475 s of sections + the installs of make gpu-check (seconds): inside the 540 s call
    assert sum(s.cap_s for s in sections) == plan.DEFAULT_BUDGET_S <= 480
    pytest_cmd = sections[1].commands[0]
    assert "--timeout" in pytest_cmd and "-n" in pytest_cmd and "gpu" in pytest_cmd
    assert "--timeout" not in plan.default_plan(str(tmp_path), plugins=set())[1].commands[0]
    bench = sections[2].commands[0]
    assert bench[-2:] == ["--ceilings", str(tmp_path / "01_environment.json")]
    assert bench[3] == "BatchDecodeWithPagedKVCacheWrapper/b32_kv4096_uniform"
    for s in sections:
        assert s.estimate_s > 0 and s.detail


def test_estimate_floor_and_cases():
    assert estimate.floor_s(0, 4.3e12) == pytest.approx(1.0)
    assert estimate.floor_s(780e12, 0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown bench cases"):
        estimate.bench(["no_such_op/x"])


def test_dry_run_prints_the_plan_and_starts_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(estimate, "count_tests", lambda *a: 1000)
    out = tmp_path / "out"
    assert cli.main(["--dry-run", "--out", str(out), "--budget-s", "300"]) == 0
    text = capsys.readouterr().out
    for name in ("environment", "tests", "attention", "ssm", "moe", "misc", "jit_cold"):
        assert f" {name} " in text
    assert "budget 300 s" in text and "1000 tests" in text and not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["--budget-s", "0", "--dry-run"], "--budget-s"),
    (["--only", "nope", "--dry-run"], "no section nope"),
    (["--workers", "0", "--dry-run"], "--workers"),
])
def test_bad_arguments(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv, "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_performance_doc_floors_match_the_cases():
    """docs/performance.md's floor tables are the cases' own counts (regenerate them with
    flashkit.gpucheck.estimate.floor_table when a case changes)."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "performance.md").read_text()
    names = [n for section in plan.BENCH_CASES.values() for n in section
             if not n.startswith("APOLLO")]
    for row in estimate.floor_table(names):
        assert row in doc, row
    assert doc.lower().count("not yet measured") == 1


def _row(case, impl, ms, status="ok", **kw):
    return {"case": case, "impl": impl, "median_ms": ms, "status": status, **kw}


def test_report_goals(tmp_path):
    from flashkit.gpucheck import report

    dec, pre = "BatchDecodeWithPagedKVCacheWrapper", "single_prefill_with_kv_cache"
    rows = [_row(f"{dec}/b32_kv4096_uniform", "flashkit-triton", 1.0, frac_copy=0.93),
            _row(f"{dec}/b32_kv1024_uniform", "flashkit-triton", 1.0, frac_copy=0.5),
            _row(f"{dec}/b64_kv4096_zipf", "flashkit-triton", 2.0),
            _row(f"{dec}/b64_kv4096_zipf", "torch-flex_attention", 2.1),
            _row(f"{pre}/causal_seq8192", "flashkit-triton", 1.0, frac_matmul=0.8),
            _row(f"{pre}/causal_seq8192", "torch-sdpa-flash", 0.95),
            _row(f"{pre}/causal_seq8192", "torch-sdpa-cudnn", 0.85),
            _row(f"{pre}/causal_seq8192", "torch-sdpa-efficient", None, "skipped"),
            _row("chunk_ssd_scan/b1_L8192", "flashkit-triton", 1.0),
            _row("chunk_ssd_scan/b1_L8192", "fla-chunk_simple_gla", 1.5),
            _row("chunk_ssd_scan/ckpt_b1_L8192", "flashkit-triton", 1.04),
            _row("fused_moe/mixtral_t64", "flashkit-triton", 1.0, "inaccurate", note="err"),
            _row("fused_moe/mixtral_t64", "torch-grouped_mm", 1.0)]
    for i, (name, result) in enumerate([("attention", {"rows": rows}),
                                        ("jit_cold", {"rows": [{"backend": "decode",
                                                                "cold_s": 1.5}]})]):
        (tmp_path / f"0{i + 3}_{name}.json").write_text(json.dumps(
            {"kind": "gpucheck-section", "section": name, "status": "ok", "result": result}))
    met = {(what, goal): ok for what, _, goal, ok in report.goals(report._load(tmp_path))}
    assert met[(f"{dec}/b32_kv4096_uniform", ">= 90% of copy")] is True
    assert (f"{dec}/b32_kv1024_uniform", ">= 90% of copy") not in met  # the goal is kv >= 4k
    assert met[(f"{dec}/b64_kv4096_zipf", ">= 1.1x flex_attention")] is False  # 1.05x
    assert met[(f"{pre}/causal_seq8192", ">= 0.9x best SDPA")] is False  # cuDNN 0.85 ms: 0.85x
    assert met[(f"{pre}/causal_seq8192", ">= 75% of matmul")] is True
    assert met[("chunk_ssd_scan/b1_L8192", ">= 1.2x fla-core")] is True
    assert met[("chunk_ssd_scan/ckpt_b1_L8192", "<= 5% extra")] is True
    assert met[("chunk_ssd_scan/ckpt_b1_L8192", ">= 1.2x fla-core")] is None  # no fla row
    assert met[("fused_moe/mixtral_t64", ">= 1.2x torch._grouped_mm")] is None  # inaccurate
    assert met[("cold JIT, decode end to end", "< 2 s")] is True
    text = report.markdown(tmp_path)
    assert "INACCURATE fused_moe/mixtral_t64 flashkit-triton: err" in text
