"""flashkit placement-sim / placement-trace end to end; bad arguments and files exit 2."""
import json

import pytest

from flashkit.cli import main


def test_vm_and_llm_end_to_end(tmp_path, capsys):
    vm, llm = str(tmp_path / "v.sqlite"), str(tmp_path / "l.csv")
    assert main(["placement-trace", "--domain", "vm", "--n", "2000", "--days", "3",
                 "--out", vm]) == 0
    assert main(["placement-sim", "--trace", vm, "--domain", "vm", "--policy", "best-fit",
                 "--policy", "lars", "--json", str(tmp_path / "v.json")]) == 0
    rows = json.loads((tmp_path / "v.json").read_text())
    assert [r["policy"] for r in rows] == ["best-fit", "lars"]
    for r in rows:
        assert {"policy", "empty_hosts_mean", "stranded_cpu_frac", "stranded_mem_frac",
                "migrations", "seconds", "drain_hours_mean"} <= set(r)
    assert main(["placement-trace", "--domain", "llm", "--n", "1500", "--rate", "30",
                 "--out", llm]) == 0
    rows = []
    for backend in ("python", "auto"):
        assert main(["placement-sim", "--trace", llm, "--domain", "llm", "--hosts", "4",
                     "--policy", "lava", "--kv-block-requests", "200", "--backend", backend,
                     "--json", str(tmp_path / "l.json")]) == 0
        (r,) = json.loads((tmp_path / "l.json").read_text())
        rows.append(r)
    assert {"preemptions", "kv_fragmentation", "kv_empty_blocks_mean", "empty_hosts_mean"} <= set(r)
    assert rows[0]["backend"] == "python"
    assert rows[0]["preemptions"] == rows[1]["preemptions"]
    assert rows[0]["empty_hosts_mean"] == rows[1]["empty_hosts_mean"]
    assert "lava (repredict" in capsys.readouterr().out


def test_drain_frac_drains_in_both_domains(tmp_path, capsys):
    vm, llm = str(tmp_path / "v.sqlite"), str(tmp_path / "l.csv")
    assert main(["placement-trace", "--domain", "vm", "--n", "2000", "--days", "3",
                 "--out", vm]) == 0
    assert main(["placement-trace", "--domain", "llm", "--n", "3000", "--rate", "10",
                 "--out", llm]) == 0
    for domain, trace, hosts, key in (("vm", vm, [], "drain_hours_mean"),
                                      ("llm", llm, ["--hosts", "4"], "drain_s_mean")):
        out = tmp_path / f"{domain}.json"
        assert main(["placement-sim", "--trace", trace, "--domain", domain, *hosts,
                     "--policy", "best-fit", "--policy", "lars", "--drain-frac", "0.5",
                     "--kv-block-requests", "0", "--json", str(out)]) == 0
        rows = json.loads(out.read_text())
        assert all(r[key] is not None and r["migrations"] + r["drain_exited"] > 0 for r in rows)
        assert "migrations" in capsys.readouterr().out


@pytest.mark.parametrize("argv, msg", [
    (["--trace", "/nonexistent.sqlite", "--domain", "vm"], "no such file"),
    (["--trace", "{csv}", "--domain", "vm"], "not an sqlite"),
    (["--trace", "{csv}", "--domain", "llm", "--hosts", "0"], "n_instances"),
    (["--trace", "{csv}", "--domain", "llm", "--hosts", "600", "--backend", "ninja"],
     "up to 512 instances"),
    (["--trace", "{csv}", "--domain", "llm", "--drain-frac", "1.5"], "drain_frac"),
])
def test_bad_files_and_values_exit_2(tmp_path, capsys, argv, msg):
    csv = tmp_path / "t.csv"
    csv.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "0,10,5\n" * 40)
    argv = [a.replace("{csv}", str(csv)) for a in argv]
    assert main(["placement-sim", *argv]) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_bad_choice_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["placement-sim", "--trace", "x", "--domain", "vm", "--policy", "worst-fit"])
    assert e.value.code == 2
