"""Online alpha for Marconi's eviction: shadow caches, one per candidate alpha, a probe and a
guard on the real cache's own savings.

At the first eviction every alpha in ``grid`` gets a payload-free copy of the tree (a shadow,
its alpha fixed) and from then on serves every request the real cache serves. Each shadow's
FLOPs saved, summed since the first eviction (``window=None``) or over the last ``window``
requests, is exactly what a replay of that history from the first-eviction snapshot with that
alpha would give; keeping the shadows running makes the replay incremental, so a request costs
``len(grid)`` simulated serves however long the trace is. Every ``every`` requests the shadows
name a candidate: the alpha whose shadow saved the most (ties: the smallest), unless it beats
the LRU shadow (alpha = 0, always a candidate) by less than ``margin``.

A shadow's score is not what the real cache gets by switching: its contents came from its own
alpha since the first eviction, the real cache's from the alphas it played. Two checks on the
real cache itself, both measured on swebench where shadows mislead (2.5 GB: the first switch,
from 50 requests of evidence, lost 59% of LRU's savings in one period, -6.9% by the end):

* probe: while the real cache is not ahead of the LRU shadow (its savings since the first
  eviction, over the same requests), a switch away from LRU or the current alpha is taken only
  after a fork of the real cache playing the candidate (a payload-free clone of its tree made at
  the decision) has saved more than the real cache over the next period. The real cache is the
  fork that stays, so this measures the regret of not switching from where the real cache is.
  One extra simulated serve per request and one clone per undecided period.
* guard: when the real cache's savings fall behind the LRU shadow's by more than ``guard`` of
  LRU's, it plays LRU until the deficit is back under half that (hysteresis). Playing LRU keeps
  the deficit roughly constant while LRU's total grows, so the relative deficit shrinks and the
  tuner is let out again. The LRU shadow is the SGLang+ baseline itself (same admission, same
  state at the first eviction). While guarded the shadows' candidate is still probed
  (``release``): a probe that beat the real cache lets it out, and the guard then counts the
  deficit beyond the one it had then (the allowance shrinks back as the real cache catches up),
  so each release risks at most another ``guard`` of LRU's savings plus a period.

Why a log grid up to 1e5: with the scales fixed at the first eviction, the spread of normalized
efficiency among candidates shrinks from about 0.3 to 0.02-0.10 as the cache fills, so the alpha
at which efficiency starts to outvote recency on chat traces is in the hundreds to thousands;
the response to alpha is jagged (neighbours differ by about 5%), so a choice from one short
window is mostly noise: each decision looks at ten periods of 50 requests.
"""
from __future__ import annotations

from collections import deque

__all__ = ["GRID", "AlphaTuner"]

GRID = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e3, 3e3, 1e4, 3e4, 1e5)


class AlphaTuner:
    """Chooses a PrefixCache's alpha from shadow caches (see the module docstring).

    Parameters
    ----------
    grid : candidate alphas, ascending (ties go to the earlier one)
    every : requests between decisions
    window : score shadows over the last this many requests (a multiple of ``every``);
        None sums everything since the first eviction. 500 measured best (docs/cache.md):
        on the agent trace at 5 GB high alphas win the first ~1000 requests (+60% over LRU)
        and lose later (-28% by the end), and a cumulative sum follows them for ~1500
        requests too long (-9.7% vs LRU; window 500: +1.7%)
    margin : the best shadow must beat LRU's by this fraction over the window to be a
        candidate: measured 0.05 vs 0 on four configurations, lmsys 10 GB +6.4% vs +5.7%,
        swebench 40 GB -0.4% vs -0.6%, 2.5 GB -6.9% vs -7.1%, lmsys 5 GB equal
    guard : fall back to LRU while the real cache trails the LRU shadow by more than this
        fraction of LRU's savings (None: no guard); needs alpha 0 in the grid
    probe : prove a switch on a fork of the real cache first, while it is not ahead of LRU
    release : while guarded, keep probing the shadows' candidate; a probe that beat the real
        cache (playing LRU) over a period lets it out, and the guard then counts the deficit
        from there. Measured: a guard tripped by one bad early switch otherwise holds LRU for
        the rest of the trace (swebench seed 0, 2.5 GB: -0.41% -> +149.8% vs SGLang+; mean
        over the 13 contended configurations of docs/cache.md +25.40% -> +46.19% at seed 0,
        +29.61% -> +40.64% at seed 1)
    """

    def __init__(self, grid=GRID, every: int = 50, window: int | None = 500,
                 margin: float = 0.05, guard: float | None = 0.0025, probe: bool = True,
                 release: bool = True):
        grid = tuple(float(a) for a in grid)
        if not grid or any(a < 0 or a != a for a in grid) or list(grid) != sorted(set(grid)):
            raise ValueError(f"grid must be distinct non-negative alphas in ascending order, "
                             f"got {grid}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}")
        if window is not None and (not isinstance(window, int) or window < every
                                   or window % every):
            raise ValueError(f"window must be None or a multiple of every = {every}, got "
                             f"{window!r}")
        if not 0 <= margin < 1:
            raise ValueError(f"margin must be in [0, 1), got {margin!r}")
        if guard is not None and (isinstance(guard, bool) or not 0 <= guard < 1):
            raise ValueError(f"guard must be None or in [0, 1), got {guard!r}")
        if guard is not None and grid[0] != 0.0:
            raise ValueError("guard needs alpha 0 (LRU) in the grid")
        if not isinstance(probe, bool):
            raise TypeError(f"probe must be a bool, got {type(probe).__name__}")
        if not isinstance(release, bool):
            raise TypeError(f"release must be a bool, got {type(release).__name__}")
        self.grid, self.every, self.window, self.margin = grid, every, window, margin
        self.guard, self.use_probe, self.release = guard, probe, release
        self.shadows: list = []
        self.totals = [0.0] * len(grid)
        self._periods = deque()  # per-period savings of each shadow (windowed scoring)
        self._period = [0.0] * len(grid)
        self.seen = 0
        self.history: list[tuple[int, float]] = []  # (requests served, alpha chosen then)
        # since the first eviction: the real cache's savings and the LRU shadow's
        self.real_total = self.lru_total = 0.0
        self.guarded = False
        self.debt = 0.0  # the deficit when a probe last let the real cache out of the guard
        self.fallbacks = 0  # times the guard took over
        self.probe = None  # a fork of the real cache playing a candidate alpha
        self._probe_sum = self._real_period = 0.0

    @property
    def started(self) -> bool:
        return bool(self.shadows)

    def start(self, cache) -> None:
        """Copy ``cache``'s tree into one shadow per alpha (call after a request ends)."""
        self.shadows = [cache.clone(alpha) for alpha in self.grid]
        self.history.append((cache.requests, cache.alpha))

    def observe(self, cache, input_tokens, output_tokens, hit: int) -> float | None:
        """Serve a finished request on every shadow (and the probe); ``hit`` is the real
        cache's hit length for it. Returns the alpha to play from now on, or None between
        decisions."""
        if isinstance(hit, bool) or not isinstance(hit, int) or hit < 0:
            raise ValueError(f"hit must be an int >= 0 (the request's hit length), got {hit!r}")
        flops = cache.config.prefill_flops
        for i, s in enumerate(self.shadows):
            f = flops(s.serve(input_tokens, output_tokens))
            self._period[i] += f
            if i == 0:
                self.lru_total += f  # grid[0]: LRU wherever the guard or probe is used
        real = flops(hit)
        self.real_total += real
        self._real_period += real
        if self.probe is not None:
            self._probe_sum += flops(self.probe.serve(input_tokens, output_tokens))
        self.seen += 1
        if self.seen % self.every:
            return None
        self.totals = [t + p for t, p in zip(self.totals, self._period)]
        if self.window is not None:
            self._periods.append(self._period)
            if len(self._periods) > self.window // self.every:
                old = self._periods.popleft()
                self.totals = [t - o for t, o in zip(self.totals, old)]
        self._period = [0.0] * len(self.grid)
        best = max(range(len(self.grid)), key=lambda i: (self.totals[i], -i))
        if self.grid[0] == 0.0 and self.totals[best] <= (1 + self.margin) * self.totals[0]:
            best = 0  # LRU unless an alpha beats it by the margin
        if self.guard is not None:
            owed = max(0.0, self.lru_total - self.real_total)
            self.debt = min(self.debt, owed)
            deficit = owed - self.debt
            if deficit > self.guard * self.lru_total:
                self.fallbacks += not self.guarded
                self.guarded = True
            elif deficit <= 0.5 * self.guard * self.lru_total:
                self.guarded = False
        if self.guarded and self.release and self.use_probe:
            alpha = self._proven(cache, self.grid[best], stay=0.0)
            if alpha != 0.0:  # a probe beat the guarded cache: out, counting from here
                self.guarded, self.debt = False, max(0.0, self.lru_total - self.real_total)
        elif self.guarded:
            alpha = self._proven(cache, 0.0)
        else:
            alpha = self._proven(cache, self.grid[best])
        self.history.append((cache.requests, alpha))
        return alpha

    def _proven(self, cache, alpha: float, stay: float | None = None) -> float:
        """The alpha to play given the shadows' candidate: LRU and staying need no proof, and
        neither does anything once the real cache is ahead of the LRU shadow; otherwise a
        switch waits for a probe (a fork of the real cache) that beat the real cache over the
        last period, and a new candidate starts a probe. A probe that won is taken even if
        the shadows' candidate moved on (the neighbours of a good alpha swing by ~5%).
        ``stay``: the alpha played unless a probe proves ``alpha`` (the guard's LRU); given,
        every switch needs proof."""
        probe, won = self.probe, self._probe_sum > self._real_period
        self.probe, self._probe_sum, self._real_period = None, 0.0, 0.0
        if stay is None and (not self.use_probe or alpha == 0.0 or alpha == cache.alpha
                             or self.real_total > self.lru_total):
            return alpha
        stay = cache.alpha if stay is None else stay
        if alpha == stay:
            return alpha
        if probe is not None and won:
            return probe.alpha
        self.probe = cache.clone(alpha)
        return stay
