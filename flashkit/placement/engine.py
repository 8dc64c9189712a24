"""The placement engine: hosts with two resources, an index, a policy and a predictor.

Both domains run on it: VMs (cpu, memory) on hosts, and LLM requests (batch slot, KV) on decode
instances. Capacities are fractions of one host. A host's predicted empty time is the latest
predicted exit of its items; it is updated on every placement and release on that host and,
for all hosts at once, by :meth:`PlacementEngine.refresh` (reprediction as items age).
"""
from __future__ import annotations

import math

import numpy as np

from .index import _EPS, _SCAN, HostIndex
from .lifetimes import Predictor
from .policies import Policy

__all__ = ["PlacementEngine"]

_SCAN_HOSTS = 512
_ALL = slice(None)          # Policy.host_key_many's "every host"


class PlacementEngine:
    """Online placement of items on identical hosts.

    Parameters
    ----------
    n_hosts : int
    policy : Policy
    predictor : Predictor
        Bound to the items (:meth:`Predictor.bind`); item ids index its arrays.
    need0, need1 : arrays [n_items]
        Each item's demand as a fraction of a host, in (0, 1].
    q : int
        Index buckets per resource (16: best fit is exact to 1/16 host across cells, exact
        within a cell of up to 32 hosts).
    n_classes : int
        Lifetime classes: class 0 is a remaining time below ``r0``, class k >= 1 is
        [r0 * 2^(k-1), r0 * 2^k), the last is open ended.
    r0 : float
        Remaining time of the first class boundary, in the trace's time unit.
    ordered : bool
        The index searches cells of more than 32 hosts in ascending host id (HostIndex): the
        llm domain asks for it, so that its compiled loop (llm_native.py) can choose alike. The
        vm domain keeps the set order its recorded runs were made with (over the 15 runs of
        ``targets vm --seed 0``, 3 of 452,626 such picks would choose another host).
    """

    def __init__(self, n_hosts: int, policy: Policy, predictor: Predictor, need0, need1, *,
                 q: int = 16, n_classes: int = 14, r0: float = 1.0, ordered: bool = False):
        if not isinstance(n_hosts, int) or not 1 <= n_hosts < 100_000:
            raise ValueError(f"n_hosts must be an int in [1, 100000), got {n_hosts!r}")
        if not isinstance(policy, Policy):
            raise TypeError(f"policy must be a Policy, got {type(policy).__name__}")
        if not isinstance(predictor, Predictor) or predictor._items == 0:
            raise ValueError("predictor must be a Predictor bound to the items (bind())")
        n0, n1 = np.asarray(need0, np.float64), np.asarray(need1, np.float64)
        if n0.shape != (predictor._items,) or n1.shape != n0.shape:
            raise ValueError(f"need0 and need1 must have shape ({predictor._items},)")
        if np.any(~(n0 > 0) | (n0 > 1 + _EPS)) or np.any(~(n1 >= 0) | (n1 > 1 + _EPS)):
            raise ValueError("need0 must be in (0, 1] and need1 in [0, 1] (fractions of a host)")
        if not isinstance(q, int) or q < 1 or not isinstance(n_classes, int) or n_classes < 1:
            raise ValueError("q and n_classes must be ints >= 1")
        if not r0 > 0:
            raise ValueError(f"r0 must be > 0, got {r0!r}")
        if not isinstance(ordered, bool):
            raise TypeError(f"ordered must be a bool, got {ordered!r}")
        self.n_hosts, self.policy, self.predictor = n_hosts, policy, predictor
        self.n_classes, self.r0 = n_classes, float(r0)
        self._r_top = self.r0 * 2.0 ** (n_classes - 2)  # start of the open-ended last class
        self.need0, self.need1 = n0.tolist(), n1.tolist()
        self.index = HostIndex(n_hosts, n_classes, q, ordered=ordered)
        self.free0, self.free1 = [1.0] * n_hosts, [1.0] * n_hosts
        self._f0, self._f1 = np.ones(n_hosts), np.ones(n_hosts)     # the same, as arrays
        # up to this many hosts a placement scans every host as arrays (a dozen numpy calls,
        # whatever the cells); above it the cell index visits only the best cells
        self.scan = n_hosts <= _SCAN_HOSTS
        self.items: list[set] = [set() for _ in range(n_hosts)]
        self.exit = [0.0] * n_hosts                     # predicted empty time
        self.anchor = [-1] * n_hosts                    # the item whose exit that is
        self.host_cls = [n_classes] * n_hosts
        self.item_host = np.full(n0.size, -1, np.int64)
        self.excluded: set[int] = set()
        g = np.arange(n_classes + 1, dtype=np.float64)[:, None, None]
        b = np.arange(q + 1, dtype=np.float64)
        self.cls_grid = g
        self.empty_grid = g == n_classes
        self.fill_grid = (b[:, None] + b[None, :])[None]
        self.tilt_grid = (b[:, None] - b[None, :])[None]
        self._static: dict = {}         # item class (, tilt) -> cell scores
        self._static8: dict = {}        # (item class, buckets) -> scan scores
        for h in range(n_hosts):
            self.index.put(h, self.index.cell(n_classes, 1.0, 1.0))

    def life_class(self, r: float) -> int:
        """Lifetime class of a remaining time ``r``."""
        if r < self.r0:
            return 0
        top = self.n_classes - 1
        if r >= self._r_top:
            return top
        k = 1 + int(math.log2(r / self.r0))
        return top if k > top else k                # not min(): this runs per event

    def _reindex(self, h: int, now: float) -> None:
        f0, f1 = self.free0[h], self.free1[h]
        self._f0[h], self._f1[h] = f0, f1
        if self.excluded and h in self.excluded:
            return
        if not self.items[h]:
            cls = self.n_classes
        else:
            cls = self.life_class(self.exit[h] - now) if self.policy.uses_lifetime else 0
        self.host_cls[h] = cls
        idx = self.index                            # idx.cell(cls, f0, f1), inlined: the
        q = idx.q                                   # llm loop re-indexes twice per request
        b0, b1 = int(f0 * q + _EPS), int(f1 * q + _EPS)
        w = q + 1
        idx.put(h, (cls * w + (q if b0 > q else b0)) * w + (q if b1 > q else b1))

    def place(self, item: int, now: float, *, reindex: bool = True,
              r: float | None = None) -> int:
        """Place ``item`` (arriving or migrating) at time ``now``; its host, or -1 if no
        host has room. ``reindex=False``: the caller overwrites the host's free capacity
        with :meth:`set_free` before the next placement, which re-indexes it once. ``r``:
        the item's predicted remaining time at ``now`` if the caller has it already."""
        n0, n1 = self.need0[item], self.need1[item]
        if r is None:
            r = self.predictor.remaining(item, now)
        cls = self.life_class(r)
        pol, idx = self.policy, self.index
        q = idx.q                                   # idx.bucket(n0), idx.bucket(n1), inlined
        nb0, nb1 = int(n0 * q + _EPS), int(n1 * q + _EPS)
        nb0, nb1 = q if nb0 > q else nb0, q if nb1 > q else nb1
        # the item's cpu minus memory buckets, for a policy that scores the leftover balance
        key = (cls, nb0 - nb1) if pol.balance else cls
        static = self._static.get(key)
        if static is None:
            static = pol.cell_score(self, cls, nb0 - nb1 if pol.balance else 0).reshape(-1)
            self._static[key] = static
        if self.scan:
            h = self._pick_scan(n0, n1, self._scan_scores(static, cls, nb0, nb1))
            if h is None:
                return -1
        else:
            fits, key_of = self._fits_key(n0, n1)
            for cell, sure in idx.candidates(n0, n1, static, pol.by_id):
                h = idx.pick(cell, sure, fits, key_of)
                if h is not None:
                    break
            else:
                return -1
        self.assign(item, h, now, r, reindex=reindex)
        return h

    def _scan_scores(self, static: np.ndarray, cls: int, nb0: int, nb1: int) -> np.ndarray:
        """Per cell, for the scan: (score, cell id) as one float, ``score x 8192 + cell id``
        (scores are integers below 2^40, ids below 2^13: exact below 2^53), +inf for a cell
        whose buckets cannot fit the item, and one more +inf entry for host cell -1 (out of
        the index). Cached per (item class, item buckets)."""
        key = (cls, nb0, nb1)
        s8 = self._static8.get(key)
        if s8 is None:
            w = self.index.q + 1
            cell = np.arange(static.size)
            fit = ((cell // w) % w >= nb0) & (cell % w >= nb1)
            s8 = np.append(np.where(fit, static * 8192.0 + cell, np.inf), np.inf)
            if len(self._static8) >= 1024:          # at most 1024 x 4,335 floats (36 MB)
                self._static8.clear()
            self._static8[key] = s8
        return s8

    def _fits_key(self, n0: float, n1: float):
        """(fits(h), key(h)) for the host-by-host search of one cell."""
        f0, f1, pol = self.free0, self.free1, self.policy

        def fits(h):
            return f0[h] >= n0 - _EPS and f1[h] >= n1 - _EPS

        def key(h):
            return pol.host_key(self, h, n0, n1)

        return fits, key

    def _pick_scan(self, n0: float, n1: float, s8: np.ndarray):
        """The host the cell walk (``index.candidates`` then ``index.pick``) would choose, from
        one pass over all hosts: the walk stops at the first cell, by (score, cell id), holding
        a host that fits, so that cell is the minimum over the fitting hosts' cells. ``s8``:
        :meth:`_scan_scores` (cells whose buckets cannot fit are +inf already)."""
        idx = self.index
        hc = idx.host_cell
        s = s8[hc] + idx._min[hc] * (self.policy.by_id * 8192.0)
        s[(self._f0 < n0 - _EPS) | (self._f1 < n1 - _EPS)] = np.inf
        k = int(s.argmin())
        best = s[k]
        if best == np.inf:
            return None
        cell = int(hc[k])
        size = len(idx.members[cell])
        if size == 1:                               # the cell's only host fits: it is the pick
            return k
        if size > _SCAN:                            # the walk does not search such a cell whole
            w = idx.q + 1
            b0, b1 = divmod(cell % (w * w), w)
            return idx.pick(cell, b0 > idx.bucket(n0) and b1 > idx.bucket(n1),
                            *self._fits_key(n0, n1))
        # the fitting hosts of that cell have the same (score, cell id, lowest id); keys for
        # all hosts at once cost fewer numpy calls than gathering those few (first min wins)
        key = self.policy.host_key_many(self, _ALL, n0, n1)
        return int(np.where(s == best, key, np.inf).argmin())

    def assign(self, item: int, h: int, now: float, r: float | None = None, *,
               reindex: bool = True) -> None:
        """Put ``item`` on host ``h`` without asking the policy (capacity is checked);
        ``reindex`` as for :meth:`place`."""
        n0, n1 = self.need0[item], self.need1[item]
        if self.free0[h] < n0 - _EPS or self.free1[h] < n1 - _EPS:
            raise ValueError(f"item {item} does not fit host {h}")
        if self.item_host[item] >= 0:
            raise ValueError(f"item {item} is already on host {self.item_host[item]}")
        if r is None:
            r = self.predictor.remaining(item, now)
        if not self.items[h]:
            self.exit[h] = now
        self.free0[h] -= n0
        self.free1[h] -= n1
        self.items[h].add(item)
        self.item_host[item] = h
        if now + r >= self.exit[h]:
            self.exit[h], self.anchor[h] = now + r, item
        if reindex:
            self._reindex(h, now)

    def release(self, item: int, now: float, *, reindex: bool = True) -> int:
        """Remove ``item`` from its host (it exited or is migrating); returns the host.
        ``reindex`` as for :meth:`place`."""
        h = int(self.item_host[item])
        if h < 0:
            raise ValueError(f"item {item} is not placed")
        self.items[h].discard(item)
        self.item_host[item] = -1
        if self.items[h]:
            f0, f1 = self.free0[h] + self.need0[item], self.free1[h] + self.need1[item]
            self.free0[h] = 1.0 if f0 > 1.0 else f0
            self.free1[h] = 1.0 if f1 > 1.0 else f1
        else:                                       # no float residue on an empty host
            self.free0[h] = self.free1[h] = 1.0
        if not self.items[h]:
            self.exit[h] = now
        elif self.anchor[h] == item:
            # only the item that set the host's empty time can move it; the others were below
            rem = self.predictor.remaining
            self.exit[h], self.anchor[h] = max((now + rem(i, now), i) for i in self.items[h])
        if reindex:
            self._reindex(h, now)
        return h

    def set_free(self, h: int, free0: float, free1: float, now: float) -> None:
        """Overwrite host ``h``'s free capacity (a domain whose items grow, like KV, keeps its
        own accounting and tells the engine) and re-index it."""
        self.free0[h], self.free1[h] = free0, free1
        self._reindex(h, now)

    def exclude(self, h: int) -> None:
        """Take host ``h`` out of the index (maintenance: nothing new lands there)."""
        self.excluded.add(h)
        self.index.put(h, -1)

    def drain(self, hosts: list[int], k: int, offset: int) -> tuple[list[int], set]:
        """Start a maintenance wave: ``k`` of ``hosts`` spread over the list (every
        ``len // k``-th, from ``offset``: offsets below that stride pick disjoint waves) are
        excluded; returns them and the items they hold."""
        stride = max(1, len(hosts) // k)
        wave = hosts[offset % stride:: stride][:k]
        items: set = set()
        for h in wave:
            self.exclude(h)
            items.update(self.items[h])
        return wave, items

    def refresh(self, now: float) -> None:
        """Repredict every placed item at ``now`` and re-class the hosts that changed."""
        placed = np.flatnonzero(self.item_host >= 0)
        ex = np.full(self.n_hosts, now)
        anchor = np.full(self.n_hosts, -1, np.int64)
        if placed.size:
            hosts = self.item_host[placed]
            end = now + self.predictor.remaining_many(placed, now)
            order = np.lexsort((end, hosts))             # per host, its latest exit comes last
            last = np.flatnonzero(np.diff(hosts[order], append=-1) != 0)
            ex[hosts[order[last]]] = end[order[last]]
            anchor[hosts[order[last]]] = placed[order[last]]
        self.anchor = anchor.tolist()
        rel = ex - now
        with np.errstate(divide="ignore"):
            cls = 1 + np.floor(np.log2(np.maximum(rel, 1e-300) / self.r0))
        cls = np.where(rel < self.r0, 0, np.minimum(cls, self.n_classes - 1)).astype(np.int64)
        occupied = np.fromiter((bool(s) for s in self.items), bool, count=self.n_hosts)
        if not self.policy.uses_lifetime:
            cls[:] = 0
        cls[~occupied] = self.n_classes
        self.exit = ex.tolist()
        old = np.asarray(self.host_cls)
        for h in np.flatnonzero(cls != old).tolist():
            self._reindex(h, now)

    def check(self) -> None:
        """Assert the bookkeeping invariants (tests): no host over capacity, free = 1 - sum."""
        for h in range(self.n_hosts):
            u0 = sum(self.need0[i] for i in self.items[h])
            u1 = sum(self.need1[i] for i in self.items[h])
            if u0 > 1 + 1e-6 or u1 > 1 + 1e-6:
                raise AssertionError(f"host {h} over capacity: {u0:.6f}, {u1:.6f}")
            if abs(self.free0[h] - (1 - u0)) > 1e-6 or abs(self.free1[h] - (1 - u1)) > 1e-6:
                raise AssertionError(f"host {h} free capacity out of sync")
