"""The Azure Packing Trace 2020 sqlite format: generator round trip, bad files name the row."""
import sqlite3

import numpy as np
import pytest

from flashkit.placement import generate_vm_trace, read_vm_trace, simulate_vm, write_vm_trace
from flashkit.placement.vm_trace import VMTrace


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
    with pytest.raises(ValueError, match="maint_waves"):
        simulate_vm(tr, "lava", maint_waves=0)
    with pytest.raises(ValueError, match="maint_offset"):
        simulate_vm(tr, "lava", maint_offset=-1)
    with pytest.raises(ValueError, match="fit_fraction"):
        simulate_vm(tr, "lava", fit_fraction=1.5)
    with pytest.raises(ValueError, match="deadline_days"):
        simulate_vm(tr, "lava", deadline_days=3)


def _hand_trace(rows):
    """A VMTrace from (start, end, cpu, mem) rows, each VM its own tenant and type."""
    st, en, c, m = (np.array(col, float) for col in zip(*rows))
    n = len(rows)
    return VMTrace(np.arange(n), np.arange(n), np.arange(n), st, en, c, m, 0)


def test_just_in_time_drain_saves_the_migration_of_a_vm_that_exits():
    # exact lifetimes; host 0 holds X (never exits) and Y (exits at day 8.0); maintenance of
    # host 0 from 7.5 to 8.5 with a slot every 0.1 day. Migrating from the start (best fit)
    # moves both by 7.7; waiting as long as the slots left allow (LARS) moves only X, after
    # Y has gone: one migration instead of two, and the host is empty at the deadline
    tr = _hand_trace([(1.0, np.inf, 0.5, 0.5), (6.0, 8.0, 0.25, 0.25), (10.0, 11.0, 0.25, 0.25)])
    kw = dict(n_hosts=2, mode="oracle", maint_frac=0.01, deadline_days=1.0, mig_per_day=10.0,
              samples=10)
    bf, lars = (simulate_vm(tr, p, **kw) for p in ("best-fit", "lars"))
    assert (bf["drain_vms"], bf["migrations"], bf["drain_exited"]) == (2, 2, 0)
    assert (lars["drain_vms"], lars["migrations"], lars["drain_exited"]) == (2, 1, 1)
    assert bf["drain_hours_mean"] == pytest.approx(0.2 * 24)
    assert lars["drain_hours_mean"] == pytest.approx(24.0, abs=0.1 * 24 + 1e-6)
    assert lars["migrations_failed"] == bf["migrations_failed"] == 0


def test_rolling_maintenance_drains_each_host_once():
    tr = generate_vm_trace(4000, days=4, seed=3)
    r = simulate_vm(tr, "lars", samples=50, maint_frac=0.05, maint_waves=3, maint_at=0.1,
                    deadline_days=0.4)
    one = simulate_vm(tr, "lars", samples=50, maint_frac=0.05, maint_at=0.1, deadline_days=0.4)
    assert r["hosts_drained"] == 3 * one["hosts_drained"]
    assert r["migrations_failed"] == 0 and r["drain_vms"] == r["migrations"] + r["drain_exited"]
    assert r["drain_hours_mean"] <= 0.4 * 24 + 1e-6
