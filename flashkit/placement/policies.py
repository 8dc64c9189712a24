"""Placement policies behind one interface: a score per index cell, a key per host, a drain order.

Lower scores win. A cell's score is built from its lifetime class ``l`` (the host's predicted
time to empty, log2 buckets; the last class = empty hosts) and its free buckets ``b0 + b1``
(what is left free: best fit packs where least is left); ties go to the lowest host id.
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

    @abc.abstractmethod
    def cell_score(self, eng, item_cls: int) -> np.ndarray:
        """Static score per index cell (shape ``eng.index.shape``) for an item of lifetime
        class ``item_cls``, lower is better; the engine adds ``by_id`` x the cell's lowest host
        id. Called once per item class and engine, so it may be slow."""

    def host_key(self, eng, h: int, need0: float, need1: float):
        """Order of hosts within one cell (all share class and buckets): tightest fit, then id."""
        return (eng.free0[h] - need0 + eng.free1[h] - need1, h)

    def host_key_many(self, eng, hosts: np.ndarray, need0: float, need1: float) -> np.ndarray:
        """:meth:`host_key` for ascending host ids ``hosts`` at once, without the id (the
        first minimum wins); a subclass overriding one overrides both."""
        return eng._f0[hosts] - need0 + eng._f1[hosts] - need1

    def drain_order(self, eng, items: list[int], now: float, deadline: float, rng):
        """Items of hosts under maintenance -> (migrate in this order, wait for these to exit
        until the deadline). Without lifetimes there is no better order than any: the baselines
        migrate everything in a random order (``rng``, a numpy Generator) and wait for none."""
        items = sorted(items)
        return [items[j] for j in rng.permutation(len(items))], []


class FirstFit(Policy):
    name = "first-fit"
    uses_lifetime = False

    def cell_score(self, eng, item_cls):
        return np.zeros(eng.index.shape)

    def host_key(self, eng, h, need0, need1):
        return h

    def host_key_many(self, eng, hosts, need0, need1):
        return hosts


class BestFit(Policy):
    name = "best-fit"
    uses_lifetime = False

    def cell_score(self, eng, item_cls):
        return np.broadcast_to(eng.fill_grid * _W_FILL, eng.index.shape)


class NILAS(Policy):
    """Lifetime term first: hosts whose predicted exit class matches the item's (items with
    similar exit times together); empty hosts last; then best fit."""

    name = "nilas"

    def cell_score(self, eng, item_cls):
        mismatch = np.abs(eng.cls_grid - item_cls)
        mismatch = np.where(eng.empty_grid, eng.n_classes + 1, mismatch)
        return mismatch * _W_LIFE + eng.fill_grid * _W_FILL


class LAVA(Policy):
    """Score = how far the placement pushes out the host's predicted empty time, in classes:
    0 on a host predicted to outlive the item (a short item on a long-anchored host), ``item
    class - host class`` otherwise, ``item class + 1`` for opening an empty host; then best fit.
    Host classes are repredicted as items age, which corrects a host whose items outlived
    their prediction (its class rises instead of staying "about to empty")."""

    name = "lava"

    def cell_score(self, eng, item_cls):
        ext = np.maximum(item_cls - eng.cls_grid, 0)
        ext = np.where(eng.empty_grid, item_cls + 1, ext)
        return ext * _W_LIFE + eng.fill_grid * _W_FILL


class LARS(LAVA):
    """LAVA's placement; for maintenance, wait for the items predicted to exit before the
    deadline and migrate the rest, longest predicted remaining lifetime first (an item that
    would have exited soon is then the last one moved, and often never)."""

    name = "lars"

    def drain_order(self, eng, items, now, deadline, rng):
        rem = [(eng.predictor.remaining(i, now), i) for i in items]
        wait = sorted((i for r, i in rem if now + r <= deadline))
        move = [i for r, i in sorted(rem, key=lambda p: (-p[0], p[1])) if now + r > deadline]
        return move, wait


POLICIES = {p.name: p for p in (FirstFit, BestFit, NILAS, LAVA, LARS)}


def make_policy(name: str) -> Policy:
    """A policy by name: one of ``POLICIES`` (first-fit, best-fit, nilas, lava, lars)."""
    if name not in POLICIES:
        raise ValueError(f"policy must be one of {sorted(POLICIES)}, got {name!r}")
    return POLICIES[name]()
