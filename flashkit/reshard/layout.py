"""Layouts (tp x pp x dp) and placement rules: which slice of which tensor each rank holds.

A rank holds a tensor when the tensor's stage is the rank's stage. Along the rule's split dim
it holds a list of global intervals (one for a plain column/row/vocab/expert split, several for
a packed tensor such as Mamba-2's in_proj, whose z/x/B/C/dt segments split or replicate
separately); its local tensor is their concatenation. Everything here is pure Python: no torch.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["Layout", "Rule", "Placement", "resolve", "layer_index"]

KINDS = ("column", "row", "vocab", "replicated", "expert")
_DEFAULT_DIM = {"column": 0, "row": 1, "vocab": 0, "expert": 0, "replicated": 0}
_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def layer_index(name: str) -> int | None:
    """The N of ``...layers.N....`` in a parameter name, or None."""
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class Layout:
    """``tp`` x ``pp`` x ``dp`` ranks. Position (d * pp + s) * tp + t (TP innermost, so a TP
    group is a block of neighbouring ranks, as NVLink islands and NCCL rings want) is rank
    ``order[position]``: the identity by default; ``best_order`` picks one that leaves more
    of a source layout's slices in place."""

    tp: int
    pp: int
    dp: int = 1
    order: tuple[int, ...] | None = None

    def __post_init__(self):
        for name in ("tp", "pp", "dp"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"Layout.{name} must be an int >= 1, got {v!r}")
        if self.order is not None:
            order = tuple(self.order)
            if sorted(order) != list(range(self.world_size)):
                raise ValueError(f"Layout.order must be a permutation of range({self.world_size})"
                                 f", got {self.order!r}")
            object.__setattr__(self, "order", None if order == tuple(sorted(order)) else order)
        inv = None
        if self.order is not None:
            inv = [0] * self.world_size
            for pos, r in enumerate(self.order):
                inv[r] = pos
        object.__setattr__(self, "_pos", inv)

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.dp

    def coords(self, rank: int) -> tuple[int, int, int]:
        """(dp index, stage, tp index) of ``rank``."""
        if not isinstance(rank, int) or not 0 <= rank < self.world_size:
            raise ValueError(f"rank must be an int in [0, {self.world_size}) for {self}, "
                             f"got {rank!r}")
        pos = rank if self._pos is None else self._pos[rank]
        return pos // (self.pp * self.tp), pos // self.tp % self.pp, pos % self.tp

    def rank(self, d: int, s: int, t: int) -> int:
        pos = (d * self.pp + s) * self.tp + t
        return pos if self.order is None else self.order[pos]

    def stage_of_layer(self, layer: int, n_layers: int) -> int:
        """Contiguous, balanced stages: the first n_layers % pp stages get one extra layer."""
        base, extra = divmod(n_layers, self.pp)
        cut = extra * (base + 1)
        return layer // (base + 1) if layer < cut else extra + (layer - cut) // base

    def __str__(self) -> str:
        name = f"TP{self.tp}PP{self.pp}" + (f"DP{self.dp}" if self.dp > 1 else "")
        return name if self.order is None else name + "[" + ",".join(map(str, self.order)) + "]"


@dataclass(frozen=True)
class Rule:
    """Placement of every parameter whose name matches ``pattern`` (``re.fullmatch``).

    kind : "column" (split dim 0: output features), "row" (split dim 1: input features),
        "vocab" (split dim 0 of an embedding / LM head), "replicated", "expert" (split dim 0
        of stacked experts [E, ...])
    dim : the split dim when the storage differs from HF's [out, in] (e.g. x @ W weights)
    granule : the split unit (head_dim for attention projections): tp must divide
        size / granule, so that no head is cut
    what : what the units are, for error messages ("heads", "kv heads", "ffn", "vocab", ...)
    segments : for packed tensors, ((size, granule), ...) along ``dim``: a segment with
        granule >= 1 is cut across TP ranks separately in units of granule, one with granule 0
        is held whole by every TP rank
    stage : "layer" (from the name's layers.N), "first", "last" or "all"
    """

    pattern: str
    kind: str
    dim: int | None = None
    granule: int = 1
    what: str = ""
    segments: tuple[tuple[int, int], ...] | None = None
    stage: str = "layer"
    _re: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Rule.kind must be one of {KINDS}, got {self.kind!r}")
        if self.stage not in ("layer", "first", "last", "all"):
            raise ValueError(f"Rule.stage must be 'layer', 'first', 'last' or 'all', got "
                             f"{self.stage!r}")
        if not isinstance(self.granule, int) or self.granule < 1:
            raise ValueError(f"Rule.granule must be an int >= 1, got {self.granule!r}")
        object.__setattr__(self, "_re", re.compile(self.pattern))

    @property
    def split_dim(self) -> int:
        return _DEFAULT_DIM[self.kind] if self.dim is None else self.dim

    def matches(self, name: str) -> bool:
        return self._re.fullmatch(name) is not None


@dataclass(frozen=True)
class Placement:
    """Where one tensor lives under one layout."""

    name: str
    shape: tuple[int, ...]
    dim: int
    stage: int | None  # None: every stage
    tp_intervals: tuple[tuple[tuple[int, int], ...], ...]  # [tp index] -> global intervals

    def intervals(self, layout: Layout, rank: int) -> tuple[tuple[int, int], ...]:
        """The global intervals along ``dim`` that ``rank`` holds (empty: not held)."""
        _, s, t = layout.coords(rank)
        if self.stage is not None and s != self.stage:
            return ()
        return self.tp_intervals[t]

    def local_shape(self, layout: Layout, rank: int) -> tuple[int, ...] | None:
        iv = self.intervals(layout, rank)
        if not iv:
            return None
        shape = list(self.shape)
        shape[self.dim] = sum(b - a for a, b in iv)
        return tuple(shape)


def _tp_intervals(name, shape, rule: Rule, tp: int):
    dim = rule.split_dim
    if not shape:
        raise ValueError(f"{name}: 0-d tensors are not placed; store it with shape (1,)")
    if rule.kind == "replicated":
        return 0, (((0, shape[0]),),) * tp
    if dim >= len(shape):
        raise ValueError(f"{name}: a {rule.kind}-parallel rule splits dim {dim}, but the tensor "
                         f"has shape {tuple(shape)}")
    size = shape[dim]
    segments = rule.segments or ((size, rule.granule),)
    if sum(s for s, _ in segments) != size:
        raise ValueError(f"{name}: rule segments {rule.segments} sum to "
                         f"{sum(s for s, _ in segments)}, but dim {dim} has size {size}")
    out = [[] for _ in range(tp)]
    start = 0
    for seg, granule in segments:
        if granule == 0:
            for t in range(tp):
                out[t].append((start, start + seg))
        else:
            units = seg // granule
            if seg % granule or units % tp:
                what = rule.what or f"dim {dim}"
                raise ValueError(
                    f"{name}: tp={tp} must divide the {what}: {seg} along dim {dim} of shape "
                    f"{tuple(shape)} is {seg / granule:g} units of {granule}")
            step = seg // tp
            for t in range(tp):
                out[t].append((start + t * step, start + (t + 1) * step))
        start += seg
    merged = []
    for ivs in out:
        m = []
        for a, b in ivs:
            if m and m[-1][1] == a:
                m[-1] = (m[-1][0], b)
            else:
                m.append((a, b))
        merged.append(tuple(m))
    return dim, tuple(merged)


def resolve(shapes: dict, rules, layout: Layout) -> dict[str, Placement]:
    """Placement of every tensor named in ``shapes`` (name -> shape tuple) under ``layout``.

    Raises ValueError naming the tensor when no rule covers it, when tp does not divide what
    its rule splits, or when pp exceeds the number of layers.
    """
    if not isinstance(layout, Layout):
        raise TypeError(f"layout must be a flashkit.reshard.Layout, got {type(layout).__name__}")
    rules = list(rules)
    if not rules or not all(isinstance(r, Rule) for r in rules):
        raise TypeError("rules must be a non-empty sequence of flashkit.reshard.Rule")
    layers = [i for i in map(layer_index, shapes) if i is not None]
    n_layers = max(layers) + 1 if layers else 0
    if layers and layout.pp > n_layers:
        raise ValueError(f"layout {layout}: pp={layout.pp} does not fit the model's {n_layers} "
                         f"layers (pp must be <= {n_layers})")
    out = {}
    for name, shape in shapes.items():
        shape = tuple(int(s) for s in shape)
        rule = next((r for r in rules if r.matches(name)), None)
        if rule is None:
            raise ValueError(f"{name}: no placement rule covers this parameter (shape {shape}); "
                             f"add a Rule whose pattern matches it")
        if rule.stage == "layer":
            li = layer_index(name)
            if li is None:
                raise ValueError(f"{name}: rule {rule.pattern!r} places by layer, but the name "
                                 f"has no 'layers.N.' part")
            stage = layout.stage_of_layer(li, n_layers)
        else:
            stage = {"first": 0, "last": layout.pp - 1, "all": None}[rule.stage]
        dim, ivs = _tp_intervals(name, shape, rule, layout.tp)
        out[name] = Placement(name, shape, dim, stage, ivs)
    return out
