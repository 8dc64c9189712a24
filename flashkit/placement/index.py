"""Host index: hosts bucketed by (lifetime class, free resource 0, free resource 1).

A placement looks at cells, not hosts: with 16 buckets per resource and 15 lifetime classes
there are 15 x 17 x 17 = 4,335 cells however many hosts there are, and the feasible ones are a
slice of a count array. A host's free amount ``f`` goes to bucket ``floor(f * q)``; an item
needing ``x`` fits every host of a bucket above ``floor(x * q)`` for sure and must be checked
host by host only in the boundary bucket itself.
"""
from __future__ import annotations

import numpy as np

__all__ = ["HostIndex"]

_EPS = 1e-9          # capacities are fractions of a machine; sums of 1/64ths stay exact to 1e-12
_SCAN = 32           # cells up to this size are searched host by host for the exact best


class HostIndex:
    """Cells of hosts keyed by (class, bucket0, bucket1), with per-cell counts and lowest ids.

    Parameters
    ----------
    n_hosts : int
    n_classes : int
        Lifetime classes; one more (the last) holds empty hosts.
    q : int
        Buckets per unit of a resource (capacities are fractions of one host, in [0, 1]).
    ordered : bool
        :meth:`pick` searches a cell of more than 32 hosts in ascending host id (True) or in
        the order of its set (False: slot order, ascending only while the ids are below the
        set's table size, 64 slots or more for such a cell).
    """

    def __init__(self, n_hosts: int, n_classes: int, q: int, *, ordered: bool = False):
        self.q, self.n_classes, self.ordered = q, n_classes, ordered
        self.shape = (n_classes + 1, q + 1, q + 1)
        self.count = np.zeros(self.shape, np.int64)
        self.cell_min = np.full(self.shape, np.inf)   # lowest host id per cell (first-fit order)
        self._count = self.count.reshape(-1)
        self._min = self.cell_min.reshape(-1)
        self.members: list[set] = [set() for _ in range(self._count.size)]
        self.cell_of = [-1] * n_hosts
        # per host, as an array for a scan of all hosts at once (-1: out of the index)
        self.host_cell = np.full(n_hosts, -1, np.int64)

    def bucket(self, free: float) -> int:
        b = int(free * self.q + _EPS)
        return self.q if b > self.q else b

    def cell(self, cls: int, free0: float, free1: float) -> int:
        return (cls * (self.q + 1) + self.bucket(free0)) * (self.q + 1) + self.bucket(free1)

    def put(self, h: int, cell: int) -> None:
        """Move host ``h`` to ``cell`` (-1: out of the index, e.g. being drained)."""
        old = self.cell_of[h]
        if old == cell:
            return
        if old >= 0:
            m = self.members[old]
            m.discard(h)
            self._count[old] -= 1
            if self._min[old] == h:
                self._min[old] = min(m) if m else np.inf
        if cell >= 0:
            self.members[cell].add(h)
            self._count[cell] += 1
            if h < self._min[cell]:
                self._min[cell] = h
        self.cell_of[h] = cell
        self.host_cell[h] = cell

    def candidates(self, need0: float, need1: float, static: np.ndarray, by_id: float):
        """Yield cells that may fit (need0, need1), best first by ``static`` (flat float array,
        one score per cell, lower is better) + ``by_id`` x the cell's lowest host id, each with
        a flag: True when every host in it fits."""
        b0, b1 = self.bucket(need0), self.bucket(need1)
        w = self.q + 1
        f = np.flatnonzero(self.count[:, b0:, b1:])
        if f.size == 0:
            return
        w0, w1 = w - b0, w - b1
        c, r = np.divmod(f, w0 * w1)
        i0, i1 = np.divmod(r, w1)
        full = (c * w + i0 + b0) * w + i1 + b1
        s = static[full] + by_id * self._min[full]
        sure = (i0 > 0) & (i1 > 0)
        best = int(np.argmin(s))
        yield int(full[best]), bool(sure[best])
        if f.size > 1:
            for k in np.argsort(s, kind="stable")[1:].tolist():
                yield int(full[k]), bool(sure[k])

    def pick(self, cell: int, sure: bool, fits, key):
        """The best host of ``cell`` by ``key(h)`` among those where ``fits(h)``; None if none.
        Cells larger than 32 hosts are not searched whole: their lowest id is taken when every
        host fits, else the first 32 fitting hosts are compared."""
        m = self.members[cell]
        if len(m) <= _SCAN:
            ok = [h for h in m if fits(h)]
            return min(ok, key=key) if ok else None
        if sure:
            return int(self._min[cell])
        ok = []
        for h in (sorted(m) if self.ordered else m):
            if fits(h):
                ok.append(h)
                if len(ok) == _SCAN:
                    break
        return min(ok, key=key) if ok else None
