"""Online alpha for Marconi's eviction: shadow caches, one per candidate alpha.

At the first eviction every alpha in ``grid`` gets a payload-free copy of the tree (a shadow,
its alpha fixed) and from then on serves every request the real cache serves. Each shadow's
FLOPs saved, summed since the first eviction (``window=None``) or over the last ``window``
requests, is exactly what a replay of that history from the first-eviction snapshot with that
alpha would give; keeping the shadows running makes the replay incremental, so a request costs
``len(grid)`` simulated serves however long the trace is. Every ``every`` requests the real
cache takes the alpha whose shadow saved the most (ties: the smallest), unless it beats the
LRU shadow (alpha = 0, always a candidate) by less than ``margin``: a workload where FLOP
efficiency does not pay is tuned to LRU.

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
    margin : keep LRU (alpha 0) unless the best shadow beats LRU's by this fraction over the
        window: measured 0.05 vs 0 on four configurations, lmsys 10 GB +6.4% vs +5.7%,
        swebench 40 GB -0.4% vs -0.6%, 2.5 GB -6.9% vs -7.1%, lmsys 5 GB equal
    """

    def __init__(self, grid=GRID, every: int = 50, window: int | None = 500,
                 margin: float = 0.05):
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
        self.grid, self.every, self.window, self.margin = grid, every, window, margin
        self.shadows: list = []
        self.totals = [0.0] * len(grid)
        self._periods = deque()  # per-period savings of each shadow (windowed scoring)
        self._period = [0.0] * len(grid)
        self.seen = 0
        self.history: list[tuple[int, float]] = []  # (requests served, alpha chosen then)

    @property
    def started(self) -> bool:
        return bool(self.shadows)

    def start(self, cache) -> None:
        """Copy ``cache``'s tree into one shadow per alpha (call after a request ends)."""
        self.shadows = [cache.clone(alpha) for alpha in self.grid]
        self.history.append((cache.requests, cache.alpha))

    def observe(self, cache, input_tokens, output_tokens) -> float | None:
        """Serve a finished request on every shadow; the alpha to switch to, or None."""
        flops = cache.config.prefill_flops
        for i, s in enumerate(self.shadows):
            self._period[i] += flops(s.serve(input_tokens, output_tokens))
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
        alpha = self.grid[best]
        self.history.append((cache.requests, alpha))
        return alpha
