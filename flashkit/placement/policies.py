"""Placement policies behind one interface: a score per index cell, a key per host, a drain order.

Lower scores win. A cell's score is built from its lifetime class ``l`` (the host's predicted
time to empty, log2 buckets; the last class = empty hosts) and its free buckets ``b0 + b1``
(what is left free: best fit packs where least is left); ties go to the lowest host id.

``balance`` (0 by default) adds ``balance x |free0 - free1|`` after the placement to the space
term: a host left with much of one resource free and little of the other strands the first
(the vm domain's stranded cpu is free cpu on hosts short of memory), so among hosts that fit
about as tightly the one left balanced wins. At the cell level the imbalance is taken in free
buckets (the host's ``b0 - b1`` minus the item's ``tilt``, its cpu minus memory buckets).
"""
from __future__ import annotations

import abc

import numpy as np

__all__ = ["Policy", "FirstFit", "BestFit", "NILAS", "LAVA", "LARS", "POLICIES", "make_policy"]

# Score weights: lifetime term >> leftover term >> host id (ids < 1e5, leftover buckets <= 2q+2)
_W_LIFE, _W_FILL = 1e9, 1e5


class Policy(abc.ABC):
    """Base: subclasses set ``name`` and override :meth:`cell_score`."""

    name = "policy"
    by_id = 1.0        # weight of the cell's lowest host id in its score (the final tie-break)
    uses_lifetime = True   # False: all occupied hosts share one class (baselines ignore it)
    balance = 0.0      # weight of the leftover imbalance |free0 - free1| (module docstring)

    def __init__(self, balance: float | None = None):
        if balance is not None:
            # a multiple of 1/32 up to 4: cell scores (x 1e5) stay integers (engine._pick_scan)
            if not (isinstance(balance, (int, float)) and 0 <= balance <= 4
                    and float(balance) * 32 == int(float(balance) * 32)):
                raise ValueError(f"balance must be a multiple of 1/32 in [0, 4], got {balance!r}")
            self.balance = float(balance)

    @abc.abstractmethod
    def cell_score(self, eng, item_cls: int, tilt: int = 0) -> np.ndarray:
        """Static score per index cell (shape ``eng.index.shape``) for an item of lifetime
        class ``item_cls`` and ``tilt`` = its cpu minus memory buckets (0 unless ``balance``),
        lower is better; the engine adds ``by_id`` x the cell's lowest host id. Called once
        per (class, tilt) and engine, so it may be slow."""

    def space_score(self, eng, tilt: int) -> np.ndarray:
        """Best fit in free buckets left (cpu + mem), plus ``balance`` x the leftover
        imbalance, per cell (broadcastable to ``eng.index.shape``)."""
        if not self.balance:
            return eng.fill_grid
        return eng.fill_grid + self.balance * np.abs(eng.tilt_grid - tilt)

    def host_key(self, eng, h: int, need0: float, need1: float):
        """Order of hosts within one cell (all share class and buckets): tightest fit (and
        most balanced, with ``balance``), then id."""
        a0, a1 = eng.free0[h] - need0, eng.free1[h] - need1
        return (a0 + a1 + self.balance * abs(a0 - a1), h)

    def host_key_many(self, eng, hosts: np.ndarray, need0: float, need1: float) -> np.ndarray:
        """:meth:`host_key` for ascending host ids ``hosts`` (an int array, or
        ``slice(None)`` for all hosts) at once, without the id (the first minimum wins); a
        subclass overriding one overrides both."""
        a0, a1 = eng._f0[hosts] - need0, eng._f1[hosts] - need1
        if not self.balance:
            return a0 + a1
        return a0 + a1 + self.balance * np.abs(a0 - a1)

    def drain_order(self, eng, items: list[int], now: float, deadline: float, rng) -> list[int]:
        """Items of hosts under maintenance -> the queue :meth:`drain_next` reads. Without
        lifetimes there is no better order than any: the baselines migrate everything in a
        random order (``rng``, a numpy Generator), one per migration slot from the start."""
        items = sorted(items)
        return [items[j] for j in rng.permutation(len(items))]

    def drain_next(self, eng, queue: list[int], pending: set, now: float, deadline: float,
                   slots_left: int):
        """The item to migrate in the slot at ``now``, or None to let the slot pass.
        ``queue``: :meth:`drain_order`'s list (consumed here), ``pending``: the items still
        on the drained hosts, ``slots_left``: migration slots after this one up to the
        deadline. Baselines: the next queued item still pending, waiting for none."""
        while queue:
            item = queue.pop(0)
            if item in pending:
                return item
        return None


class FirstFit(Policy):
    name = "first-fit"
    uses_lifetime = False

    def cell_score(self, eng, item_cls, tilt=0):
        return np.zeros(eng.index.shape)

    def host_key(self, eng, h, need0, need1):
        return h

    def host_key_many(self, eng, hosts, need0, need1):
        return np.arange(eng.n_hosts)[hosts]


class BestFit(Policy):
    name = "best-fit"
    uses_lifetime = False

    def cell_score(self, eng, item_cls, tilt=0):
        return np.broadcast_to(self.space_score(eng, tilt) * _W_FILL, eng.index.shape)


class NILAS(Policy):
    """Lifetime term first: hosts whose predicted exit class matches the item's (items with
    similar exit times together); empty hosts last; then best fit."""

    name = "nilas"

    def cell_score(self, eng, item_cls, tilt=0):
        mismatch = np.abs(eng.cls_grid - item_cls)
        mismatch = np.where(eng.empty_grid, eng.n_classes + 1, mismatch)
        return mismatch * _W_LIFE + self.space_score(eng, tilt) * _W_FILL


class LAVA(Policy):
    """Score = how far the placement pushes out the host's predicted empty time, in classes:
    0 on a host predicted to outlive the item (a short item on a long-anchored host), ``item
    class - host class`` otherwise, ``item class + 1`` for opening an empty host; then best fit
    with the leftover-balance term (``balance`` 1: on the generated 100,000-VM traces it cuts
    stranded cpu and memory by 5-10 % at no measurable cost in empty hosts; docs/placement.md).
    Host classes are repredicted as items age, which corrects a host whose items outlived
    their prediction (its class rises instead of staying "about to empty")."""

    name = "lava"
    balance = 1.0

    def cell_score(self, eng, item_cls, tilt=0):
        ext = np.maximum(item_cls - eng.cls_grid, 0)
        ext = np.where(eng.empty_grid, item_cls + 1, ext)
        return ext * _W_LIFE + self.space_score(eng, tilt) * _W_FILL


class LARS(LAVA):
    """LAVA's placement; for maintenance, wait for items to exit and migrate just in time: a
    slot passes unused while the slots left until the deadline can still move every VM on the
    drained hosts; when one must be used, it moves the VM most likely to still be there at
    the deadline (``Predictor.alive_at``, repredicted at its age in every slot; ties: longest
    predicted remaining time, then id). A VM that exits while it waits is a migration saved."""

    name = "lars"

    def drain_order(self, eng, items, now, deadline, rng):
        return sorted(items)               # no fixed order: drain_next chooses per slot

    def drain_next(self, eng, queue, pending, now, deadline, slots_left):
        if len(pending) <= slots_left:
            return None
        items = np.fromiter(sorted(pending), np.int64, count=len(pending))
        p = eng.predictor.alive_at(items, now, deadline)
        r = eng.predictor.remaining_many(items, now)
        return int(items[np.lexsort((items, -r, -p))[0]])


POLICIES = {p.name: p for p in (FirstFit, BestFit, NILAS, LAVA, LARS)}


def make_policy(name: str, **options) -> Policy:
    """A policy by name: one of ``POLICIES`` (first-fit, best-fit, nilas, lava, lars);
    ``options`` go to its constructor (``balance``)."""
    if name not in POLICIES:
        raise ValueError(f"policy must be one of {sorted(POLICIES)}, got {name!r}")
    return POLICIES[name](**options)
