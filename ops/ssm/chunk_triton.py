"""Triton launcher of the Mamba-2 chunked SSD scan (templates/ssm/chunk_ssd.py.j2)."""
from __future__ import annotations

import torch

from flashkit import jit
from .._common.triton import dot_f32, dot_precision, dtype_tag, pow2, tl_dtype
from .._common.specs import memoized_spec


# tl.dot needs every block dim >= 16.
def _block_n(dstate: int) -> int:
    return max(16, pow2(dstate))


def _block_p(headdim: int, dtype: torch.dtype) -> int:
    # 64 x dstate-128 float32 accumulators per program (64 registers a thread at 4 warps): the
    # Mamba2-2.7B head (64) in one block. float32 inputs take 32: their operand tiles are twice
    # as large, and at 64 the sm_80/sm_90 builds spilled 0.6-12 KB a thread (cuobjdump STACK).
    cap = 32 if dtype == torch.float32 else 64
    return max(16, min(cap, pow2(headdim)))


@memoized_spec
def chunk_ssd_triton_spec(headdim: int, dstate: int, chunk_size: int,
                          dtype: torch.dtype) -> jit.KernelSpec:
    dname = dtype_tag(dtype)
    return jit.KernelSpec.create(
        f"chunk_ssd_scan_triton_{dname}_hd{headdim}_ds{dstate}_cs{chunk_size}", "triton",
        "ssm/chunk_ssd.py.j2",
        {"head_dim": headdim, "dstate": dstate, "chunk_size": chunk_size,
         "block_p": _block_p(headdim, dtype), "block_n": _block_n(dstate),
         "dot_precision": dot_precision(dtype), "dot_dtype": tl_dtype(dtype)})


def shipped_triton_specs() -> list[jit.KernelSpec]:
    """Mamba2-130M..2.7B, Zamba2, Nemotron-H: headdim 64, dstate 128 (and 64), chunk 256."""
    return [chunk_ssd_triton_spec(64, n, 256, dt)
            for n in (64, 128) for dt in (torch.bfloat16, torch.float16)]


def _tables(spans, chunk_size, positions, device):
    """Chunk rows (batch, first token, length, sequence), sequence rows (first chunk, count) and
    checkpoint items (chunk, tokens into it, output row) plus the output rows left unused (-1)."""
    chunks, seqs = [], []
    for s, (b, start, end) in enumerate(spans):
        # An empty sequence still gets one empty chunk: its states then pass through unchanged.
        n = max(1, -(-(end - start) // chunk_size))
        seqs.append((len(chunks), n))
        chunks += [(b, start + k * chunk_size, min(chunk_size, end - start - k * chunk_size), s)
                   for k in range(n)]
    chunk_t = torch.tensor(chunks, dtype=torch.int32).reshape(-1, 4)
    seq_t = torch.tensor(seqs, dtype=torch.int32).reshape(-1, 2)
    items = unused = None
    if positions is not None:
        num_k = positions.shape[1]
        flat = positions.reshape(-1)
        first = seq_t[:, 0].to(torch.int64).repeat_interleave(num_k)
        valid = flat >= 0
        # The chunk holding token pos - 1 (the first chunk for pos = 0) and j = tokens into it.
        k_chunk = (flat - 1).clamp_min(0) // chunk_size
        j = flat - k_chunk * chunk_size
        rows = torch.arange(flat.numel())
        items = torch.stack([first + k_chunk, j, rows], 1)[valid].to(torch.int32).contiguous()
        items, unused = items.to(device), rows[~valid].to(device)
    return chunk_t.to(device), seq_t.to(device), items, unused


def chunk_ssd_scan_fwd(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, initial_states,
                       spans, positions, y, final_states=None, checkpoint_states=None) -> None:
    """Writes y (like x), final_states [num_seqs, nheads, headdim, dstate] float32 and
    checkpoint_states [num_seqs, K, nheads, headdim, dstate] float32 (each optional).

    spans: (batch index, start, end) per sequence; positions: int64 [num_seqs, K] on the CPU or
    None. Inputs are validated by the caller.
    """
    _, _, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    dev = x.device
    num_seqs = len(spans)
    mod = jit.load(chunk_ssd_triton_spec(headdim, dstate, chunk_size, x.dtype))
    chunks, seqs, items, unused = _tables(spans, chunk_size, positions, dev)
    nchunks = chunks.shape[0]
    f32 = dict(dtype=torch.float32, device=dev)
    A32 = A.to(**f32).contiguous()
    bias32 = dt_bias.to(**f32).contiguous() if dt_bias is not None else A32
    dt_p = torch.empty(nchunks, nheads, chunk_size, **f32)
    dA_p = torch.empty(nchunks, nheads, chunk_size, **f32)
    block_h = min(pow2(nheads), max(1, 4096 // chunk_size))
    mod._ssd_chunk_cumsum_kernel[(nchunks, -(-nheads // block_h))](
        dt, A32, bias32, chunks, dt_p, dA_p, nheads, dt.stride(0), dt.stride(1),
        HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=bool(dt_softplus), BLOCK_H=block_h)

    block_p = _block_p(headdim, x.dtype)
    n_pblocks = -(-headdim // block_p)
    block_l = min(64, chunk_size)
    f32_dots = dot_f32(x.dtype)
    states = torch.empty(nchunks, nheads, headdim, dstate, **f32)
    own_items = torch.stack([torch.arange(nchunks, device=dev, dtype=torch.int32),
                             chunks[:, 2], torch.arange(nchunks, device=dev, dtype=torch.int32)],
                            1).contiguous()
    heads_per_group = nheads // ngroups
    mod._ssd_partial_state_kernel[(nchunks, nheads, n_pblocks)](
        x, B, dt_p, dA_p, chunks, own_items, states, states, nheads, heads_per_group,
        x.stride(0), x.stride(1), x.stride(2), B.stride(0), B.stride(1), B.stride(2),
        ADD_START=False, BLOCK_L=block_l, DOT_F32=f32_dots)

    init = (initial_states.to(**f32).contiguous() if initial_states is not None else states)
    final = final_states if final_states is not None else states
    mod._ssd_state_passing_kernel[(num_seqs, nheads, n_pblocks)](
        states, dA_p, seqs, init, final, nheads,
        HAS_INITIAL=initial_states is not None, STORE_FINAL=final_states is not None)

    if checkpoint_states is not None:
        out = checkpoint_states.view(-1, nheads, headdim, dstate)
        if unused.numel():
            out[unused] = 0
        if items.shape[0]:
            mod._ssd_partial_state_kernel[(items.shape[0], nheads, n_pblocks)](
                x, B, dt_p, dA_p, chunks, items, states, out, nheads, heads_per_group,
                x.stride(0), x.stride(1), x.stride(2), B.stride(0), B.stride(1), B.stride(2),
                ADD_START=True, BLOCK_L=block_l, DOT_F32=f32_dots)

    D32 = (D.to(**f32).expand(headdim, nheads).t().contiguous() if D is not None and D.dim() == 1
           else D.to(**f32).contiguous() if D is not None else A32)
    z_arg = z if z is not None else x
    mod._ssd_chunk_scan_kernel[(nchunks * (chunk_size // block_l), nheads, n_pblocks)](
        x, z_arg, D32, B, C, dt_p, dA_p, states, chunks, y, nheads, heads_per_group,
        x.stride(0), x.stride(1), x.stride(2), z_arg.stride(0), z_arg.stride(1), z_arg.stride(2),
        B.stride(0), B.stride(1), B.stride(2), C.stride(0), C.stride(1), C.stride(2),
        y.stride(0), y.stride(1), y.stride(2),
        HAS_D=D is not None, HAS_Z=z is not None, BLOCK_L=block_l, DOT_F32=f32_dots)
