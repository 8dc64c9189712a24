"""Search the (prefill, decode) layout pair against every static layout."""
from __future__ import annotations

from .costs import layouts_for
from .profiles import Hardware, ModelProfile
from .simulator import simulate

__all__ = ["search_layouts"]


def search_layouts(reqs, model: ModelProfile, hw: Hardware, gpus: int) -> dict:
    """Every static layout, every (prefill, decode) pair under the transition-minimizing
    policy, and the other two mixed policies on the best pair.

    Returns a dict: ``static`` (results, best first), ``mixed`` (the best pair's result per
    policy), ``best_static``, ``best_mixed``, ``speedup`` (best mixed / best static
    throughput) and ``occupancy`` (the best mixed run's (t, CPU-tier bytes)).
    """
    if not isinstance(gpus, int) or gpus < 1:
        raise ValueError(f"gpus must be an int >= 1, got {gpus!r}")
    layouts = layouts_for(gpus, model, hw)
    if not layouts:
        raise ValueError(f"{model.name} does not fit {gpus} x {hw.name} in any layout")
    static = sorted((simulate(reqs, model, hw, lay, lay, "static", gpus) for lay in layouts),
                    key=lambda r: -r.throughput)
    best = None
    for p in layouts:
        for d in layouts:
            if p != d:
                r = simulate(reqs, model, hw, p, d, "transition-minimizing", gpus)
                if best is None or r.throughput > best.throughput:
                    best = r
    pair = next((p, d) for p in layouts for d in layouts
                if (str(p), str(d)) == (best.prefill, best.decode))
    mixed = [best] + [simulate(reqs, model, hw, *pair, pol, gpus)
                      for pol in ("prefill-first", "decode-first")]
    return dict(hardware=hw.name, model=model.name, gpus=gpus, requests=len(reqs),
                static=[r.as_dict() for r in static], mixed=[r.as_dict() for r in mixed],
                best_static=static[0].as_dict(), best_mixed=best.as_dict(),
                speedup=best.throughput / static[0].throughput,
                occupancy=best.occupancy)
