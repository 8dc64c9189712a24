"""Hardware and model profiles for the re-sharding simulator.

Hardware numbers are per GPU, from the vendors' spec sheets (dense bf16/fp16 tensor FLOP/s,
i.e. without 2:4 sparsity). Link numbers are per direction. The efficiency factors are
assumptions, the same for every layout, so they move absolute throughput more than the ranking.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Hardware", "ModelProfile", "HARDWARE", "MODELS"]


@dataclass(frozen=True)
class Hardware:
    name: str
    flops: float        # dense bf16 FLOP/s
    hbm: float          # bytes/s
    mem: float          # bytes of device memory
    link: float         # bytes/s per direction between GPUs (NVLink, else PCIe)
    pcie: float         # bytes/s per direction host <-> GPU (the KV tier's swaps)
    host_mem: float     # bytes of host memory per 8-GPU server
    nvlink: bool
    link_eff: float = 0.5   # ring all-reduce bus bandwidth / link: PCIe shares root complexes
    # PCIe servers hang 4 GPUs off each of 2 CPU sockets; a ring over more crosses the socket
    # link through host memory (assumed 10 GB/s bus bandwidth, NCCL's SHM path), not a spec.
    socket_gpus: int = 4
    cross_socket: float = 10e9
    mfu: float = 0.6        # achieved / peak FLOP/s in large GEMMs
    mbu: float = 0.8        # achieved / peak HBM bandwidth in weight-streaming decode


GB = 1e9
HARDWARE = {
    # NVIDIA A10 datasheet: 125 TF fp16/bf16 tensor (250 sparse), 24 GB GDDR6 at 600 GB/s,
    # PCIe Gen4 x16 64 GB/s (32 per direction), no NVLink.
    "A10": Hardware("A10", 125e12, 600 * GB, 24 * GB, 32 * GB, 32 * GB, 512 * GB, False),
    # NVIDIA L4 datasheet: 121 TF fp16/bf16 tensor (242 sparse), 24 GB GDDR6 at 300 GB/s,
    # PCIe Gen4 x16 64 GB/s, no NVLink.
    "L4": Hardware("L4", 121e12, 300 * GB, 24 * GB, 32 * GB, 32 * GB, 512 * GB, False),
    # NVIDIA A100 datasheet, 80 GB PCIe: 312 TF bf16, 1,935 GB/s HBM2e, PCIe Gen4 64 GB/s.
    "A100-PCIe": Hardware("A100-PCIe", 312e12, 1935 * GB, 80 * GB, 32 * GB, 32 * GB,
                          1024 * GB, False),
    # A100 80 GB SXM: 312 TF bf16, 2,039 GB/s, NVLink 600 GB/s (300 per direction).
    "A100-NVLink": Hardware("A100-NVLink", 312e12, 2039 * GB, 80 * GB, 300 * GB, 32 * GB,
                            1024 * GB, True, link_eff=0.8),
    # H100 SXM datasheet: 989 TF bf16 dense, 3.35 TB/s HBM3, NVLink 900 GB/s, PCIe Gen5 128.
    "H100": Hardware("H100", 989e12, 3350 * GB, 80 * GB, 450 * GB, 64 * GB, 2048 * GB, True,
                     link_eff=0.8),
    # H200 SXM datasheet: 989 TF bf16 dense, 141 GB HBM3e at 4.8 TB/s, NVLink 900 GB/s.
    "H200": Hardware("H200", 989e12, 4800 * GB, 141 * GB, 450 * GB, 64 * GB, 2048 * GB, True,
                     link_eff=0.8),
}


@dataclass(frozen=True)
class ModelProfile:
    """A LLaMA-style decoder (bf16 weights and KV)."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    dtype_bytes: int = 2

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def layer_params(self) -> int:
        kv = self.kv_heads * self.head_dim
        return 2 * self.hidden * self.hidden + 2 * self.hidden * kv + 3 * self.hidden * self.ffn

    @property
    def params(self) -> int:
        return self.layers * self.layer_params + 2 * self.vocab * self.hidden

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    def shapes(self, layers: int | None = None) -> dict:
        """HF LLaMA names -> full shapes (what plan_reshard reads); ``layers`` overrides the
        depth (the simulator plans a shallower copy and scales, see costs.reshard_time)."""
        d, kv = self.hidden, self.kv_heads * self.head_dim
        s = {"model.embed_tokens.weight": (self.vocab, d)}
        for i in range(self.layers if layers is None else layers):
            p = f"model.layers.{i}."
            s |= {p + "self_attn.q_proj.weight": (d, d), p + "self_attn.k_proj.weight": (kv, d),
                  p + "self_attn.v_proj.weight": (kv, d), p + "self_attn.o_proj.weight": (d, d),
                  p + "mlp.gate_proj.weight": (self.ffn, d),
                  p + "mlp.up_proj.weight": (self.ffn, d),
                  p + "mlp.down_proj.weight": (d, self.ffn), p + "input_layernorm.weight": (d,),
                  p + "post_attention_layernorm.weight": (d,)}
        s |= {"model.norm.weight": (d,), "lm_head.weight": (self.vocab, d)}
        return s


MODELS = {
    # StarCoder2-15B-shaped (its config: 40 layers, 6144 hidden, 48 heads, 4 KV heads, 24576
    # ffn, 49152 vocab); its two-matrix 24576 MLP as a gated 16384 one (same parameters).
    "15B": ModelProfile("15B", 40, 6144, 48, 4, 16384, 49152),
    # CodeLlama-34B (config.json: 48 layers, 8192 hidden, 64 heads, 8 KV, 22016 ffn, 32000).
    "34B": ModelProfile("34B", 48, 8192, 64, 8, 22016, 32000),
    # Llama-2-70B (config.json: 80 layers, 8192 hidden, 64 heads, 8 KV, 28672 ffn, 32000).
    "70B": ModelProfile("70B", 80, 8192, 64, 8, 28672, 32000),
}
