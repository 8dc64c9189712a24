"""VM traces in the Azure Packing Trace 2020 format (sqlite), read, checked and generated.

Tables: ``vm(vmId, tenantId, vmTypeId, priority, starttime, endtime)`` with times in fractional
days and a NULL endtime for a VM still alive at the end; ``vmType(id, vmTypeId, machineId, core,
memory, hdd, ssd, nic)`` with each resource as a fraction of one machine of ``machineId``.

The generator (:func:`generate_vm_trace`) draws, all seeded:

- arrivals: a Poisson process over ``days`` whose rate follows a day cycle (1 +- 0.5 cosine);
- 200 tenants with Zipf(1.1) popularity; each tenant has a lifetime profile: a lognormal body
  with median exp(N(ln 2 h, 1.5)) and sigma 1.2, and a long-lived share p_long ~ Beta(1, 12)
  (mean 7.7 %) drawn from a Pareto(alpha 1.3, x_m 1 day) tail. Most VMs live minutes to hours,
  a few live for weeks: the heavy tail that ties hosts up;
- 15 VM types: cores 1, 2, 4, 8, 16 of a 64-core machine with 0.5, 1 or 2 x that fraction of
  its memory; popularity 1/cores, and bigger types live longer (lifetime x cores^0.25).
"""
from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass

import numpy as np

__all__ = ["VMTrace", "read_vm_trace", "write_vm_trace", "generate_vm_trace"]

_VM_COLS = ("vmId", "tenantId", "vmTypeId", "priority", "starttime", "endtime")
_TYPE_COLS = ("id", "vmTypeId", "machineId", "core", "memory", "hdd", "ssd", "nic")


@dataclass
class VMTrace:
    """Parallel arrays, one entry per VM, sorted by start (days). ``end`` is np.inf where the
    trace's endtime is NULL. ``cpu``/``mem`` are fractions of the chosen machine."""

    vm_id: np.ndarray
    tenant: np.ndarray
    vm_type: np.ndarray
    start: np.ndarray
    end: np.ndarray
    cpu: np.ndarray
    mem: np.ndarray
    machine_id: int

    def __len__(self) -> int:
        return int(self.start.size)


def _columns(con, table, expected, path):
    rows = con.execute(f"PRAGMA table_info({table})").fetchall()
    if not rows:
        raise ValueError(f"{path}: no table {table!r} (an Azure Packing Trace sqlite file has "
                         f"tables vm and vmType)")
    have = {r[1] for r in rows}
    missing = [c for c in expected if c not in have]
    if missing:
        raise ValueError(f"{path}: table {table} lacks column(s) {', '.join(missing)}")


def read_vm_trace(path, machine_id: int | None = None) -> VMTrace:
    """Read and check an Azure Packing Trace 2020 sqlite file.

    Parameters
    ----------
    path : str
    machine_id : int, optional
        Which machine type the hosts are; default the one that sizes the most VM types.

    Raises ValueError naming the row (the table's rowid) on a NULL field, a negative lifetime or
    a VM larger than the machine, and the file on a missing table or column.
    """
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        con.execute("SELECT 1 FROM sqlite_master").fetchall()
    except sqlite3.DatabaseError as e:
        raise ValueError(f"{path}: not an sqlite database ({e})") from None
    with con:
        _columns(con, "vm", _VM_COLS, path)
        _columns(con, "vmType", _TYPE_COLS, path)
        types = con.execute("SELECT rowid, vmTypeId, machineId, core, memory "
                            "FROM vmType").fetchall()
        for rowid, *vals in types:
            if any(v is None for v in vals):
                raise ValueError(f"{path}: vmType row {rowid}: NULL vmTypeId, machineId, core or "
                                 f"memory")
        if not types:
            raise ValueError(f"{path}: table vmType is empty")
        if machine_id is None:
            counts: dict = {}
            for _, _, m, _, _ in types:
                counts[m] = counts.get(m, 0) + 1
            machine_id = min(counts, key=lambda m: (-counts[m], m))
        size = {t: (c, m) for _, t, mach, c, m in types if mach == machine_id}
        if not size:
            raise ValueError(f"{path}: no vmType rows for machineId {machine_id}")
        rows = con.execute("SELECT rowid, vmId, tenantId, vmTypeId, starttime, endtime FROM vm "
                           "ORDER BY starttime, rowid").fetchall()
    if not rows:
        raise ValueError(f"{path}: table vm is empty")
    n = len(rows)
    vm_id, tenant, vtype = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64)
    start, end = np.empty(n), np.empty(n)
    cpu, mem = np.empty(n), np.empty(n)
    for k, (rowid, vid, ten, t, s, e) in enumerate(rows):
        if vid is None or ten is None or t is None or s is None:
            raise ValueError(f"{path}: vm row {rowid}: NULL vmId, tenantId, vmTypeId or starttime")
        if e is not None and e < s:
            raise ValueError(f"{path}: vm row {rowid}: negative lifetime (endtime {e} < "
                             f"starttime {s})")
        if t not in size:
            raise ValueError(f"{path}: vm row {rowid}: vmTypeId {t} has no size on machineId "
                             f"{machine_id}")
        c, m = size[t]
        if not (0 < c <= 1 and 0 <= m <= 1):
            raise ValueError(f"{path}: vm row {rowid}: vmTypeId {t} needs core {c}, memory {m} "
                             f"of a machine: larger than any host (or not positive)")
        vm_id[k], tenant[k], vtype[k], start[k] = vid, ten, t, s
        end[k] = np.inf if e is None else e
        cpu[k], mem[k] = c, m
    return VMTrace(vm_id, tenant, vtype, start, end, cpu, mem, int(machine_id))


def write_vm_trace(trace: VMTrace, path) -> None:
    """Write ``trace`` as an Azure Packing Trace 2020 sqlite file (replacing ``path``)."""
    if not isinstance(trace, VMTrace):
        raise TypeError(f"trace must be a VMTrace, got {type(trace).__name__}")
    if os.path.exists(path):
        os.remove(path)
    con = sqlite3.connect(path)
    with con:
        con.execute("CREATE TABLE vm (vmId INTEGER, tenantId INTEGER, vmTypeId INTEGER, "
                    "priority INTEGER, starttime REAL, endtime REAL)")
        con.execute("CREATE TABLE vmType (id INTEGER, vmTypeId INTEGER, machineId INTEGER, "
                    "core REAL, memory REAL, hdd REAL, ssd REAL, nic REAL)")
        sizes = {}
        for t, c, m in zip(trace.vm_type.tolist(), trace.cpu.tolist(), trace.mem.tolist()):
            sizes[t] = (c, m)
        con.executemany("INSERT INTO vmType VALUES (?, ?, ?, ?, ?, 0, 0, ?)",
                        [(k, t, trace.machine_id, c, m, c) for k, (t, (c, m))
                         in enumerate(sorted(sizes.items()))])
        con.executemany("INSERT INTO vm VALUES (?, ?, ?, 1, ?, ?)",
                        [(v, te, ty, s, None if not np.isfinite(e) else e) for v, te, ty, s, e
                         in zip(trace.vm_id.tolist(), trace.tenant.tolist(),
                                trace.vm_type.tolist(), trace.start.tolist(), trace.end.tolist())])
    con.close()


def generate_vm_trace(n_vms: int, *, days: float = 14.0, n_tenants: int = 200,
                      seed: int = 0) -> VMTrace:
    """A seeded synthetic trace with the distributions in this module's docstring.

    Parameters
    ----------
    n_vms : int >= 1
    days : float > 0
        Arrival window; VMs alive at its end get endtime NULL (np.inf).
    n_tenants : int >= 1
    seed : int
    """
    if not isinstance(n_vms, int) or n_vms < 1:
        raise ValueError(f"n_vms must be an int >= 1, got {n_vms!r}")
    if not days > 0:
        raise ValueError(f"days must be > 0, got {days!r}")
    if not isinstance(n_tenants, int) or n_tenants < 1:
        raise ValueError(f"n_tenants must be an int >= 1, got {n_tenants!r}")
    rng = np.random.default_rng(seed)
    # day cycle by thinning: rate 1 + 0.5 cos(2 pi t) on [0, days)
    t = rng.uniform(0, days, 2 * n_vms)
    t = t[rng.uniform(0, 1.5, t.size) < 1 + 0.5 * np.cos(2 * np.pi * t)]
    while t.size < n_vms:
        extra = rng.uniform(0, days, n_vms)
        keep = rng.uniform(0, 1.5, n_vms) < 1 + 0.5 * np.cos(2 * np.pi * extra)
        t = np.concatenate([t, extra[keep]])
    start = np.sort(t[:n_vms])
    pop = 1.0 / np.arange(1, n_tenants + 1) ** 1.1
    tenant = rng.choice(n_tenants, n_vms, p=pop / pop.sum())
    t_median = np.exp(rng.normal(np.log(2 / 24), 1.5, n_tenants))
    t_plong = rng.beta(1, 12, n_tenants)
    cores = np.array([1, 2, 4, 8, 16])
    ratios = np.array([0.5, 1.0, 2.0])
    type_cpu = np.repeat(cores / 64, 3)
    type_mem = np.minimum(1.0, type_cpu * np.tile(ratios, 5))
    type_pop = np.repeat(1.0 / cores, 3)
    vtype = rng.choice(15, n_vms, p=type_pop / type_pop.sum())
    body = t_median[tenant] * np.exp(1.2 * rng.standard_normal(n_vms))
    tail = 1.0 * (1 + rng.pareto(1.3, n_vms))
    life = np.where(rng.uniform(size=n_vms) < t_plong[tenant], tail, body)
    life *= np.repeat(cores, 3)[vtype] ** 0.25
    end = start + life
    end[end > days] = np.inf
    return VMTrace(np.arange(n_vms), tenant.astype(np.int64), vtype.astype(np.int64), start, end,
                   type_cpu[vtype], type_mem[vtype], 0)
