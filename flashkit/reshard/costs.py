"""The throughput model (Seesaw's, section 3): time of a prefill batch and of a decode step
under a layout, the layout's memory, and the cost of switching layouts.

Per layer, time = max(compute, HBM traffic) + TP all-reduces (2 per layer, ring: 2 (tp-1)/tp of
the activations over the all-reduce bandwidth, not overlapped, as in Megatron-style TP).
Pipelines split a batch into micro-batches; a decode round (every sequence one token) takes
max(m, pp) stage times for m micro-batches, so PP does not cut the weight reads per token,
TP does. Everything is per DP replica; replicas run in parallel on 1/dp of the batch.
"""
from __future__ import annotations

import functools

from .layout import Layout, layer_index
from .plan import best_order, plan_reshard
from .profiles import Hardware, ModelProfile
from .rules import llama_rules

__all__ = ["LayoutCost", "layouts_for"]

ALLREDUCE_LATENCY = 10e-6  # s per ring hop (NCCL small-message latency order)
P2P_LATENCY = 10e-6


def layouts_for(gpus: int, model: ModelProfile, hw: Hardware) -> list[Layout]:
    """Every tp x pp x dp = gpus layout (powers of two) whose weights fit and whose tp divides
    the heads, kv heads, ffn and vocab, and pp the layers."""
    out = []
    for tp in (1, 2, 4, 8, 16):
        for pp in (1, 2, 4, 8, 16):
            if gpus % (tp * pp):
                continue
            lay = Layout(tp, pp, gpus // (tp * pp))
            c = LayoutCost(model, hw, lay)
            if c.valid and c.kv_capacity_tokens > 0:
                out.append(lay)
    return out


class LayoutCost:
    """Costs of ``model`` on ``hw`` GPUs in ``layout``."""

    def __init__(self, model: ModelProfile, hw: Hardware, layout: Layout, *,
                 mem_reserve: float = 0.1):
        self.m, self.hw, self.lay = model, hw, layout
        tp, pp = layout.tp, layout.pp
        self.valid = (model.heads % tp == 0 and model.kv_heads % tp == 0 and
                      model.ffn % tp == 0 and model.vocab % tp == 0 and pp <= model.layers)
        self.weight_bytes_per_gpu = model.params * model.dtype_bytes / (tp * pp)
        free = (hw.mem * (1 - mem_reserve) - self.weight_bytes_per_gpu) * tp * pp
        # KV capacity in tokens, all replicas together.
        self.kv_capacity_tokens = max(0, int(free / model.kv_bytes_per_token)) * layout.dp
        self.ar_bw = hw.link * hw.link_eff
        if not hw.nvlink and tp > hw.socket_gpus:
            self.ar_bw = min(self.ar_bw, hw.cross_socket)

    def _allreduce(self, nbytes: float) -> float:
        tp = self.lay.tp
        if tp == 1:
            return 0.0
        return 2 * (tp - 1) / tp * nbytes / self.ar_bw + 2 * (tp - 1) * ALLREDUCE_LATENCY

    def _layer(self, tokens: float, attn_flops: float, kv_bytes: float) -> float:
        m, hw, tp = self.m, self.hw, self.lay.tp
        flops = (2 * m.layer_params * tokens + attn_flops) / tp
        traffic = (m.layer_params * m.dtype_bytes + kv_bytes) / tp
        return (max(flops / (hw.flops * hw.mfu), traffic / (hw.hbm * hw.mbu)) +
                2 * self._allreduce(tokens * m.hidden * m.dtype_bytes))

    def _head(self, tokens: float) -> float:
        m, hw = self.m, self.hw
        flops = 2 * m.vocab * m.hidden * tokens / self.lay.tp
        return max(flops / (hw.flops * hw.mfu),
                   m.vocab * m.hidden * m.dtype_bytes / self.lay.tp / (hw.hbm * hw.mbu))

    def prefill_time(self, lengths, fill: bool = True) -> float:
        """Seconds to prefill prompts of ``lengths`` tokens (split evenly over replicas, one
        prompt per micro-batch). ``fill=False``: the pipeline is already full (a batch right
        behind another one in the same prefill phase), so no fill/drain bubble."""
        n = len(lengths)
        if n == 0:
            return 0.0
        dp, pp, m = self.lay.dp, self.lay.pp, self.m
        tokens = sum(lengths) / dp
        sq = sum(x * x for x in lengths) / dp
        micro = max(1, -(-n // dp))
        # Causal attention: QK^T and PV over half the square, 2 FLOP per MAC.
        t_all = m.layers * self._layer(tokens, 2 * sq * m.hidden, 0.0) + self._head(micro)
        p2p = (pp - 1) * (tokens / micro * m.hidden * m.dtype_bytes / self.hw.link + P2P_LATENCY)
        if not fill:
            return t_all / pp
        return t_all / pp * (micro + pp - 1) / micro + p2p

    def decode_step_time(self, batch: int, context: float) -> float:
        """Seconds for every one of ``batch`` sequences (``context`` KV tokens in all, over
        every replica) to produce one token."""
        if batch <= 0:
            return 0.0
        dp, pp, m = self.lay.dp, self.lay.pp, self.m
        b = batch / dp
        micro = max(1.0, min(pp, b))
        kv = context / dp / micro * m.kv_bytes_per_token / m.layers
        attn = 4 * context / dp / micro * m.hidden
        t_layer = self._layer(b / micro, attn, kv)
        stage = m.layers / pp * t_layer + P2P_LATENCY
        return max(micro, pp) * stage + micro * self._head(b / micro)

    def swap_time(self, nbytes: float) -> float:
        """Host <-> GPU copy of ``nbytes`` spread over every GPU's PCIe link."""
        return nbytes / (self.hw.pcie * self.lay.world_size)


def _depth(model: ModelProfile, src: Layout, dst: Layout) -> int | None:
    depth = max(src.pp, dst.pp)
    return depth if model.layers % depth == 0 else None


@functools.lru_cache(maxsize=256)
def decode_order(model: ModelProfile, prefill: Layout, decode: Layout) -> Layout:
    """``decode`` in the rank order that leaves the most of ``prefill``'s weights in place."""
    return best_order(model.shapes(_depth(model, prefill, decode)), llama_rules(model.head_dim),
                      prefill, decode, itemsize=model.dtype_bytes)


@functools.lru_cache(maxsize=256)
def reshard_traffic(model: ModelProfile, src: Layout, dst: Layout) -> tuple[float, float]:
    """(busiest rank's receive bytes, steps) of flashkit's plan from ``src`` to ``dst``.

    Plans a copy with as many layers as the deepest pipeline (every stage one layer) and
    scales the layer traffic: exact when pp divides the layers, and 80-layer plans get 10x
    cheaper."""
    depth = _depth(model, src, dst)
    scale = model.layers / depth if depth else 1.0
    plan = plan_reshard(model.shapes(depth),
                        llama_rules(model.head_dim), src, dst, itemsize=model.dtype_bytes)
    recv = [0.0] * src.world_size
    for t in plan.transfers:
        recv[t.dst] += t.nbytes * (scale if layer_index(t.name) is not None else 1.0)
    return max(recv), len(plan.steps) * scale


def reshard_time(model: ModelProfile, hw: Hardware, src: Layout, dst: Layout) -> float:
    """Seconds to move the weights from ``src`` to ``dst`` with flashkit's plan: the busiest
    rank's receive bytes over one link (transfers to different ranks run in parallel)."""
    if src == dst:
        return 0.0
    nbytes, steps = reshard_traffic(model, src, dst)
    return nbytes / hw.link + steps * P2P_LATENCY
