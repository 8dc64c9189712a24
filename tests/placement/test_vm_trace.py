"""The Azure Packing Trace 2020 sqlite format: generator round trip, bad files name the row."""
import sqlite3

import numpy as np
import pytest

from flashkit.placement import generate_vm_trace, read_vm_trace, simulate_vm, write_vm_trace


def _db(path, vms, types=((0, 0, 0, 0.25, 0.25),)):
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE vm (vmId, tenantId, vmTypeId, priority, starttime, endtime)")
    con.execute("CREATE TABLE vmType (id, vmTypeId, machineId, core, memory, hdd, ssd, nic)")
    con.executemany("INSERT INTO vmType VALUES (?, ?, ?, ?, ?, 0, 0, 0)", types)
    con.executemany("INSERT INTO vm VALUES (?, ?, ?, 1, ?, ?)", vms)
    con.commit()
    con.close()
    return str(path)


def test_round_trip(tmp_path):
    tr = generate_vm_trace(3000, days=3, seed=7)
    write_vm_trace(tr, tmp_path / "t.sqlite")
    back = read_vm_trace(str(tmp_path / "t.sqlite"))
    for f in ("vm_id", "tenant", "vm_type", "start", "end", "cpu", "mem"):
        np.testing.assert_array_equal(getattr(back, f), getattr(tr, f), err_msg=f)
    assert np.all(np.diff(back.start) >= 0)
    life = np.minimum(tr.end, 3) - tr.start
    assert np.median(life) < 0.5 < np.quantile(life, 0.99)     # most short, a few very long
    assert np.isinf(tr.end).any()                               # some still alive: NULL end


def test_rows_are_read_in_start_order(tmp_path):
    p = _db(tmp_path / "u.sqlite", [(1, 0, 0, 0.5, 0.7), (2, 0, 0, 0.1, None)])
    t = read_vm_trace(p)
    assert t.vm_id.tolist() == [2, 1] and np.isinf(t.end[0])


@pytest.mark.parametrize("vms, types, match", [
    ([(1, 0, 0, 0.1, 0.2), (2, 0, 0, 0.5, 0.3)], None, "vm row 2: negative lifetime"),
    ([(1, 0, 0, 0.1, 0.2), (2, 0, 1, 0.5, 0.9)], [(0, 0, 0, 0.25, 0.25), (1, 1, 0, 1.5, 0.5)],
     "vm row 2: vmTypeId 1 needs core 1.5.*larger than any host"),
    ([(1, 0, 0, None, 0.2)], None, "vm row 1: NULL"),
    ([(1, 0, 3, 0.1, 0.2)], None, "vm row 1: vmTypeId 3 has no size"),
    ([(1, 0, 0, 0.1, 0.2)], [(0, 0, 0, None, 0.25)], "vmType row 1: NULL"),
])
def test_bad_rows(tmp_path, vms, types, match):
    p = _db(tmp_path / "b.sqlite", vms, *(() if types is None else (types,)))
    with pytest.raises(ValueError, match=match):
        read_vm_trace(p)


def test_bad_files(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        read_vm_trace(str(tmp_path / "missing.sqlite"))
    (tmp_path / "x.sqlite").write_text("not a database at all " * 20)
    with pytest.raises(ValueError, match="not an sqlite"):
        read_vm_trace(str(tmp_path / "x.sqlite"))
    con = sqlite3.connect(tmp_path / "c.sqlite")
    con.execute("CREATE TABLE vm (vmId, tenantId, vmTypeId, starttime)")
    con.commit()
    con.close()
    with pytest.raises(ValueError, match="lacks column.*priority, endtime"):
        read_vm_trace(str(tmp_path / "c.sqlite"))


def test_generator_bad_inputs():
    with pytest.raises(ValueError, match="n_vms"):
        generate_vm_trace(0)
    with pytest.raises(ValueError, match="days"):
        generate_vm_trace(10, days=0)


def test_simulation_keeps_every_vm_and_drains():
    tr = generate_vm_trace(4000, days=4, seed=3)
    for policy in ("best-fit", "lars"):
        r = simulate_vm(tr, policy, samples=50, deadline_days=0.5)
        assert r["rejected"] == 0 and r["hosts_drained"] >= 1
        assert 0 <= r["empty_hosts_mean"] <= 1 and 0 <= r["stranded_cpu_frac"] <= 1
        assert r["migrations"] + r["migrations_failed"] >= 0
        assert r["drain_hours_mean"] <= 12 + 1e-6     # all drained by the half-day deadline
    with pytest.raises(ValueError, match="fit_fraction"):
        simulate_vm(tr, "lava", fit_fraction=1.5)
    with pytest.raises(ValueError, match="deadline_days"):
        simulate_vm(tr, "lava", deadline_days=3)
