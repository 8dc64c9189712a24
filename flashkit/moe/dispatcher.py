"""MoEDispatcher: expert parallelism over a torch.distributed group, with chunked overlap of the
token all-to-alls and the expert GEMMs (in the spirit of COMET / flux).

Each rank owns ``num_experts / world`` consecutive experts. A call routes this rank's tokens:
the (token, slot) rows go to the ranks that own their experts (split sizes exchanged first, then
``all_to_all_single``), each rank runs its local experts with ``fused_moe`` (the routing weight
fused into GEMM2), and the weighted rows come back and are summed per token. With C > 1 chunks
the all-to-alls of one chunk run (async work handles) while another chunk's GEMMs compute;
``cost_model`` explains how C is picked. Uses only flashkit's public ops.
"""
from __future__ import annotations

import time

import torch
import torch.distributed as dist

from flashkit.ops._timing import wall_times
from flashkit.ops.moe import fused_moe

from .cost_model import CostModel, pick_num_chunks

__all__ = ["MoEDispatcher"]


class MoEDispatcher:
    """Expert-parallel MoE experts.

    Parameters
    ----------
    w1_local : [num_experts / world, 2*ffn, hidden], this rank's experts (gate then up rows)
    w2_local : [num_experts / world, hidden, ffn]
    num_experts : E over all ranks (rank r owns experts [r*E/world, (r+1)*E/world))
    group : the process group (default: the world); gloo on CPU, NCCL on GPU
    activation : "silu" | "gelu"
    num_chunks : int, or "auto": from ``cost_model`` (``calibrate`` first, else 1)
    backend : passed to ``fused_moe``
    cost_model : a ``CostModel``, e.g. from ``calibrate`` (the same on every rank)

    ``stats`` holds the last call's chunk count and seconds spent waiting on communication and
    computing (host wall clock; with one chunk they are the layer's comm and compute apart).
    """

    def __init__(self, w1_local: torch.Tensor, w2_local: torch.Tensor, num_experts: int, *,
                 group=None, activation: str = "silu", num_chunks: int | str = "auto",
                 backend: str = "auto", cost_model: CostModel | None = None, max_chunks: int = 8):
        if not dist.is_initialized():
            raise ValueError("MoEDispatcher needs torch.distributed initialized "
                             "(dist.init_process_group)")
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        if isinstance(num_experts, bool) or not isinstance(num_experts, int) or \
                num_experts % self.world:
            raise ValueError(f"num_experts must be a multiple of the group size ({self.world}), "
                             f"got {num_experts!r}")
        self.local_experts = num_experts // self.world
        for name, w in (("w1_local", w1_local), ("w2_local", w2_local)):
            if not isinstance(w, torch.Tensor) or w.dim() != 3 or w.shape[0] != self.local_experts:
                raise ValueError(f"{name} must be [{self.local_experts}, ...] (num_experts / "
                                 f"world experts), got {getattr(w, 'shape', type(w))}")
        if num_chunks != "auto" and (isinstance(num_chunks, bool) or not isinstance(num_chunks, int)
                                     or num_chunks < 1):
            raise ValueError(f"num_chunks must be a positive int or 'auto', got {num_chunks!r}")
        self.w1, self.w2, self.num_experts = w1_local, w2_local, num_experts
        self.activation, self.num_chunks, self.backend = activation, num_chunks, backend
        self.cost_model, self.max_chunks = cost_model, max_chunks
        self.stats: dict = {}

    # ------------------------------------------------------------------ calibration
    def calibrate(self, rows: int = 4096, reps: int = 3) -> CostModel:
        """Measure all-to-all bandwidth and latency and the local GEMM rate, averaged over the
        ranks (so that every rank picks the same chunk count), and keep them as the cost model."""
        hidden, ffn = self.w2.shape[1], self.w2.shape[2]
        dev, dtype = self.w1.device, self.w1.dtype
        elt = self.w1.element_size()

        def a2a_seconds(n_rows: int) -> float:
            per = max(1, n_rows // self.world)
            x = torch.zeros(per * self.world, hidden, dtype=dtype, device=dev)
            y = torch.empty_like(x)
            return _best(lambda: dist.all_to_all_single(y, x, group=self.group), dev, reps)

        # Bandwidth from the large exchange alone (its latency included): the difference of two
        # timings was noise-dominated on loaded CPU hosts (4e15 B/s measured on 2 busy cores).
        small, large = a2a_seconds(self.world), a2a_seconds(rows)
        bw = rows * hidden * elt / large
        g = torch.Generator().manual_seed(0)
        x = torch.randn(rows, hidden, generator=g).to(dev, dtype)
        ids = torch.randint(0, self.local_experts, (rows, 1), generator=g).to(dev)
        ones = torch.ones(rows, 1, device=dev)
        run = lambda n: fused_moe(x[:n], self.w1, self.w2, ones[:n], ids[:n],  # noqa: E731
                                  self.activation, backend=self.backend)
        t_small, t_large = _best(lambda: run(8), dev, reps), _best(lambda: run(rows), dev, reps)
        flops = (rows - 8) * 6 * hidden * ffn / max(t_large - t_small, 1e-9)
        vals = torch.tensor([bw, small, flops, t_small], dtype=torch.float64,
                            device=self._comm_device())
        dist.all_reduce(vals, group=self.group)
        vals = vals.cpu() / self.world
        self.cost_model = CostModel(*(float(v) for v in vals))
        return self.cost_model

    # ------------------------------------------------------------------ the layer
    def __call__(self, hidden_states: torch.Tensor, topk_weights: torch.Tensor,
                 topk_ids: torch.Tensor) -> torch.Tensor:
        """hidden_states [tokens, hidden]; topk_weights [tokens, topk]; topk_ids [tokens, topk]
        (global expert ids). Returns [tokens, hidden] in hidden_states' dtype: this rank's
        tokens through their experts, wherever those live."""
        self._check(hidden_states, topk_weights, topk_ids)
        tokens, topk = topk_ids.shape
        dev = hidden_states.device
        chunks = self._chunks(tokens * topk, hidden_states.element_size())
        flat_ids = topk_ids.reshape(-1).long()
        dest = flat_ids // self.local_experts
        local_id = (flat_ids % self.local_experts).to(torch.int32)
        weight_bits = topk_weights.reshape(-1).float().view(torch.int32)
        bounds = [tokens * topk * c // chunks // topk * topk for c in range(chunks)] + [tokens * topk]

        # Rows of each chunk sorted by destination rank, and the counts per (rank, chunk).
        orders, send_counts = [], torch.zeros(self.world, chunks, dtype=torch.int64)
        for c in range(chunks):
            d = dest[bounds[c]:bounds[c + 1]]
            orders.append(torch.sort(d, stable=True).indices + bounds[c])
            send_counts[:, c] = torch.zeros(self.world, dtype=torch.int64).scatter_add_(
                0, d.cpu(), torch.ones(d.numel(), dtype=torch.int64))
        recv_counts = torch.empty_like(send_counts)
        # Split sizes first, all chunks in one exchange: the only host synchronization.
        self._exchange_counts(send_counts, recv_counts)
        send, recv = send_counts.tolist(), recv_counts.tolist()

        def dispatch(c):
            idx = orders[c]
            x = hidden_states[idx // topk]
            meta = torch.stack([local_id[idx], weight_bits[idx]], 1)
            s_split, r_split = [row[c] for row in send], [row[c] for row in recv]
            rx = x.new_empty(sum(r_split), x.shape[1])
            rmeta = meta.new_empty(sum(r_split), 2)
            work = [dist.all_to_all_single(rx, x, r_split, s_split, group=self.group, async_op=True),
                    dist.all_to_all_single(rmeta, meta, r_split, s_split, group=self.group,
                                           async_op=True)]
            return work, rx, rmeta

        def combine(c, y):
            s_split, r_split = [row[c] for row in send], [row[c] for row in recv]
            back = y.new_empty(sum(s_split), y.shape[1])
            return dist.all_to_all_single(back, y, s_split, r_split, group=self.group,
                                          async_op=True), back

        comm_s = compute_s = 0.0
        t_start = time.perf_counter()
        pending = dispatch(0)
        combines = []
        for c in range(chunks):
            work, rx, rmeta = pending
            t0 = time.perf_counter()
            for w in work:
                w.wait()
            comm_s += time.perf_counter() - t0
            if c + 1 < chunks:  # in flight while this chunk computes
                pending = dispatch(c + 1)
            t0 = time.perf_counter()
            y = fused_moe(rx, self.w1, self.w2, rmeta[:, 1:].contiguous().view(torch.float32),
                          rmeta[:, :1], self.activation, backend=self.backend)
            compute_s += time.perf_counter() - t0
            combines.append(combine(c, y))
        out = torch.zeros(tokens, hidden_states.shape[1], dtype=torch.float32, device=dev)
        for c, (work, back) in enumerate(combines):
            t0 = time.perf_counter()
            work.wait()
            comm_s += time.perf_counter() - t0
            out.index_add_(0, orders[c] // topk, back.float())
        self.stats = dict(num_chunks=chunks, comm_wait_s=comm_s, compute_s=compute_s,
                          total_s=time.perf_counter() - t_start)
        return out.to(hidden_states.dtype)

    # ------------------------------------------------------------------ helpers
    def _comm_device(self) -> torch.device:
        return self.w1.device if dist.get_backend(self.group) == "nccl" else torch.device("cpu")

    def _exchange_counts(self, send_counts, recv_counts):
        dev = self._comm_device()
        chunks = send_counts.shape[1]
        r = torch.empty(self.world * chunks, dtype=torch.int64, device=dev)
        dist.all_to_all_single(r, send_counts.reshape(-1).to(dev), group=self.group)
        recv_counts.copy_(r.view(self.world, chunks).cpu())

    def _chunks(self, rows: int, elt: int) -> int:
        if self.num_chunks != "auto":
            return self.num_chunks
        if self.cost_model is None:
            return 1
        # Every rank must issue the same collectives: agree on the busiest rank's row count.
        t = torch.tensor([rows], dtype=torch.int64, device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return pick_num_chunks(self.cost_model, int(t), self.w2.shape[1], self.w2.shape[2], elt,
                               self.max_chunks)

    def _check(self, hidden_states, topk_weights, topk_ids):
        if not isinstance(hidden_states, torch.Tensor) or hidden_states.dim() != 2 or \
                hidden_states.shape[1] != self.w2.shape[1]:
            raise ValueError(f"hidden_states must be [tokens, {self.w2.shape[1]}], got "
                             f"{getattr(hidden_states, 'shape', type(hidden_states))}")
        if not isinstance(topk_ids, torch.Tensor) or topk_ids.dim() != 2 or \
                topk_ids.shape[0] != hidden_states.shape[0] or \
                topk_ids.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"topk_ids must be int32/int64 [{hidden_states.shape[0]}, topk], got "
                             f"{getattr(topk_ids, 'shape', type(topk_ids))}")
        if not isinstance(topk_weights, torch.Tensor) or topk_weights.shape != topk_ids.shape:
            raise ValueError(f"topk_weights must have topk_ids' shape {tuple(topk_ids.shape)}, got "
                             f"{getattr(topk_weights, 'shape', type(topk_weights))}")
        if topk_ids.numel() and (int(topk_ids.min()) < 0 or int(topk_ids.max()) >= self.num_experts):
            raise ValueError(f"topk_ids must be in [0, {self.num_experts}), got values in "
                             f"[{int(topk_ids.min())}, {int(topk_ids.max())}]")


def _best(fn, device: torch.device, reps: int) -> float:
    fn()  # warm-up
    return min(wall_times(fn, device, reps))
