"""How many chunks to split an expert-parallel MoE layer into, from measured link and GEMM rates.

Each chunk goes through two resources: the link (its dispatch and combine all-to-alls) and the
compute unit (its grouped GEMMs). With C chunks, per chunk

    a(C) = comm / C + 2 * latency          (two collectives, each paying a fixed start-up cost)
    g(C) = compute / C + gemm_overhead     (launches and a GEMM tile grid that fills less well)

and a two-stage pipeline takes   T(C) = a(C) + g(C) + (C - 1) * max(a(C), g(C)):
the first chunk's dispatch and the last chunk's GEMM cannot hide behind anything, every other
chunk costs only the slower of the two. C = 1 is the serial layer, comm + compute. Splitting pays
while the hidden part, min(comm, compute) * (1 - 1/C), outweighs the per-chunk overheads C * (2 *
latency + gemm_overhead); the model takes the C in [1, max_chunks] with the lowest T.

comm = bytes moved per rank / link bandwidth, bytes = 2 * rows * hidden * elt (rows out and back);
compute = rows * 6 * hidden * ffn / GEMM FLOP/s (2*hidden*2ffn for GEMM1, 2*ffn*hidden for GEMM2).
"""
from __future__ import annotations

import dataclasses

__all__ = ["CostModel", "pipeline_time", "pick_num_chunks"]


@dataclasses.dataclass(frozen=True)
class CostModel:
    """Measured rates (``MoEDispatcher.calibrate``), identical on every rank."""

    link_bytes_per_s: float
    link_latency_s: float
    gemm_flops_per_s: float
    gemm_overhead_s: float

    def comm_seconds(self, rows: int, hidden: int, elt: int) -> float:
        return 2 * rows * hidden * elt / self.link_bytes_per_s

    def compute_seconds(self, rows: int, hidden: int, ffn: int) -> float:
        return rows * 6 * hidden * ffn / self.gemm_flops_per_s


def pipeline_time(model: CostModel, chunks: int, rows: int, hidden: int, ffn: int,
                  elt: int) -> float:
    a = model.comm_seconds(rows, hidden, elt) / chunks + 2 * model.link_latency_s
    g = model.compute_seconds(rows, hidden, ffn) / chunks + model.gemm_overhead_s
    return a + g + (chunks - 1) * max(a, g)


def pick_num_chunks(model: CostModel, rows: int, hidden: int, ffn: int, elt: int,
                    max_chunks: int = 8) -> int:
    """The chunk count with the lowest modelled time; ties go to fewer chunks."""
    times = [(pipeline_time(model, c, rows, hidden, ffn, elt), c) for c in range(1, max_chunks + 1)]
    return min(times)[1]
