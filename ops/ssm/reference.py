"""Sequential SSM recurrences: the oracles for every ssm kernel and the CPU path.

Written step by step from the math, one token at a time, with no chunking: they are slow and
plainly correct. Arithmetic runs in float64 when any input is float64, else in float32.

Positions. A checkpoint position ``p`` counts tokens from the start of its sequence: the state at
``p`` is the state after tokens ``[0, p)``, so ``p = 0`` is the initial state and ``p = seqlen``
the final one. Positions are given as ``[K]`` (the same for every sequence) or ``[num_seqs, K]``;
``-1`` marks an unused slot, whose state is zeros.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .spans import sequence_spans

__all__ = [
    "naive_ssd_scan", "naive_selective_scan", "naive_selective_state_update",
    "naive_causal_conv1d", "naive_causal_conv1d_update",
]


def _compute_dtype(*tensors) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64
                                for t in tensors) else torch.float32


def _cast(t, dtype):
    return None if t is None else t.to(dtype)


def _dt_transform(dt, bias, softplus: bool):
    if bias is not None:
        dt = dt + bias
    return F.softplus(dt) if softplus else dt


def checkpoint_table(positions, num_seqs: int) -> torch.Tensor:
    """``[K]`` or ``[num_seqs, K]`` positions (tensor or list) as an int64 ``[num_seqs, K]``."""
    pos = torch.as_tensor(positions, dtype=torch.int64, device="cpu")
    if pos.dim() == 1:
        pos = pos[None, :].expand(num_seqs, -1)
    return pos.contiguous()


def naive_ssd_scan(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                   initial_states=None, cu_seqlens=None, checkpoint_positions=None):
    """Mamba-2 (SSD) scan, token by token.

    Per head ``h`` (group ``g = h // (nheads // ngroups)``), with ``dt <- softplus(dt + dt_bias)``:
    ``S_t = exp(dt_t * A_h) * S_{t-1} + dt_t * outer(x_t, B_t)``  (S: [headdim, dstate]),
    ``y_t = S_t @ C_t + D_h * x_t``, then ``y_t *= silu(z_t)``.

    x [batch, seqlen, nheads, headdim], dt [batch, seqlen, nheads], A [nheads],
    B/C [batch, seqlen, ngroups, dstate], D [nheads] or [nheads, headdim], z like x,
    dt_bias [nheads], initial_states [num_seqs, nheads, headdim, dstate],
    cu_seqlens [num_seqs + 1] (batch must be 1), checkpoint_positions (see the module docstring).

    Returns ``(y, final_states, checkpoint_states)``: y like x, final_states
    [num_seqs, nheads, headdim, dstate], checkpoint_states [num_seqs, K, nheads, headdim, dstate]
    or None; all in the compute dtype.
    """
    cd = _compute_dtype(x, dt, A, B, C, D, z, dt_bias, initial_states)
    batch, seqlen, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    rep = nheads // ngroups
    x, dt, A, B, C = (_cast(t, cd) for t in (x, dt, A, B, C))
    D, z, dt_bias, initial_states = (_cast(t, cd) for t in (D, z, dt_bias, initial_states))
    dt = _dt_transform(dt, dt_bias, dt_softplus)
    if D is not None and D.dim() == 1:
        D = D[:, None]
    spans = sequence_spans(batch, seqlen, cu_seqlens)
    pos = None if checkpoint_positions is None else checkpoint_table(checkpoint_positions, len(spans))
    y = torch.zeros(x.shape, dtype=cd, device=x.device)
    finals = torch.zeros(len(spans), nheads, headdim, dstate, dtype=cd, device=x.device)
    ckpts = None if pos is None else torch.zeros(len(spans), pos.shape[1], nheads, headdim, dstate,
                                                 dtype=cd, device=x.device)
    for i, (b, start, end) in enumerate(spans):
        state = (initial_states[i].clone() if initial_states is not None
                 else torch.zeros(nheads, headdim, dstate, dtype=cd, device=x.device))
        for t in range(start, end + 1):
            if pos is not None:
                for k in (pos[i] == t - start).nonzero().flatten().tolist():
                    ckpts[i, k] = state
            if t == end:
                break
            Bt = B[b, t].repeat_interleave(rep, dim=0)  # [nheads, dstate]
            Ct = C[b, t].repeat_interleave(rep, dim=0)
            decay = torch.exp(dt[b, t] * A)  # [nheads]
            state = (decay[:, None, None] * state
                     + (dt[b, t][:, None] * x[b, t])[:, :, None] * Bt[:, None, :])
            yt = (state * Ct[:, None, :]).sum(-1)
            if D is not None:
                yt = yt + D * x[b, t]
            if z is not None:
                yt = yt * F.silu(z[b, t])
            y[b, t] = yt
        finals[i] = state
    return y, finals, ckpts


def naive_selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                         delta_softplus=False, initial_state=None, checkpoint_positions=None):
    """Mamba-1 selective scan, token by token.

    Per channel ``d`` (group ``g = d // (dim // ngroups)``), ``delta <- softplus(delta + bias)``:
    ``h_t = exp(delta_t * A_d) * h_{t-1} + delta_t * u_t * B_t``  (h: [dstate]),
    ``y_t = h_t . C_t + D_d * u_t``, then ``y_t *= silu(z_t)``.

    u/delta [batch, dim, seqlen], A [dim, dstate], B/C [batch, ngroups, dstate, seqlen],
    D [dim], z like u, delta_bias [dim], initial_state [batch, dim, dstate].

    Returns ``(y, last_state, checkpoint_states)``: y [batch, dim, seqlen], last_state
    [batch, dim, dstate], checkpoint_states [batch, K, dim, dstate] or None; compute dtype.
    """
    cd = _compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    batch, dim, seqlen = u.shape
    ngroups, dstate = B.shape[1], B.shape[2]
    rep = dim // ngroups
    u, delta, A, B, C = (_cast(t, cd) for t in (u, delta, A, B, C))
    D, z, delta_bias, initial_state = (_cast(t, cd) for t in (D, z, delta_bias, initial_state))
    delta = _dt_transform(delta, None if delta_bias is None else delta_bias[:, None], delta_softplus)
    pos = None if checkpoint_positions is None else checkpoint_table(checkpoint_positions, batch)
    y = torch.zeros(u.shape, dtype=cd, device=u.device)
    state = (initial_state.clone() if initial_state is not None
             else torch.zeros(batch, dim, dstate, dtype=cd, device=u.device))
    ckpts = None if pos is None else torch.zeros(batch, pos.shape[1], dim, dstate, dtype=cd,
                                                 device=u.device)
    for t in range(seqlen + 1):
        if pos is not None:
            for b, k in (pos == t).nonzero().tolist():
                ckpts[b, k] = state[b]
        if t == seqlen:
            break
        Bt = B[:, :, :, t].repeat_interleave(rep, dim=1)  # [batch, dim, dstate]
        Ct = C[:, :, :, t].repeat_interleave(rep, dim=1)
        dtt = delta[:, :, t, None]
        state = torch.exp(dtt * A) * state + dtt * u[:, :, t, None] * Bt
        yt = (state * Ct).sum(-1)
        if D is not None:
            yt = yt + D * u[:, :, t]
        if z is not None:
            yt = yt * F.silu(z[:, :, t])
        y[:, :, t] = yt
    return y, state, ckpts


def naive_selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                                 dt_softplus=False, state_batch_indices=None):
    """One decode step of either layout, without touching ``state``.

    Mamba-2: state [nslots, nheads, headdim, dstate], x/z [batch, nheads, headdim],
    dt [batch, nheads], A [nheads], B/C [batch, ngroups, dstate], D [nheads] or
    [nheads, headdim], dt_bias [nheads].
    Mamba-1: state [nslots, dim, dstate], x/z/dt [batch, dim], A [dim, dstate], B/C
    [batch, dstate], D/dt_bias [dim].
    state_batch_indices [batch]: the slot of each row (default: row i uses slot i); -1 skips
    the row (its output is zeros, no slot changes).

    Returns ``(y, new_state)``: y like x and the whole updated pool, in the compute dtype.
    """
    cd = _compute_dtype(state, x, dt, A, B, C, D, z, dt_bias)
    state, x, dt, A, B, C = (_cast(t, cd) for t in (state, x, dt, A, B, C))
    D, z, dt_bias = (_cast(t, cd) for t in (D, z, dt_bias))
    batch = x.shape[0]
    mamba1 = state.dim() == 3
    if mamba1:  # one head of headdim=dim, one group: the Mamba-2 step with A per (dim, dstate)
        state, x, z = state[:, None], x[:, None], None if z is None else z[:, None]
        dt = dt[:, None]
        B, C = B[:, None], C[:, None]
        A, D = A[None], None if D is None else D[None]
        dt_bias = None if dt_bias is None else dt_bias[None]
    nheads, headdim, dstate = state.shape[1:]
    rep = nheads // B.shape[1]
    dt = _dt_transform(dt, dt_bias, dt_softplus)  # [batch, nheads] or [batch, 1, dim]
    dt = dt[:, :, None] if dt.dim() == 2 else dt  # [batch, nheads, headdim or 1]
    A = A[:, None, None] if A.dim() == 1 else A  # [nheads, headdim or 1, dstate or 1]
    if D is not None and D.dim() == 1:
        D = D[:, None]
    idx = (torch.arange(batch, device=x.device) if state_batch_indices is None
           else state_batch_indices.to(torch.int64))
    new = state.clone()
    y = torch.zeros(x.shape, dtype=cd, device=x.device)
    for i in range(batch):
        slot = int(idx[i])
        if slot < 0:
            continue
        Bi, Ci = B[i].repeat_interleave(rep, 0), C[i].repeat_interleave(rep, 0)  # [nheads, dstate]
        s = (torch.exp(dt[i, :, :, None] * A) * state[slot]
             + (dt[i] * x[i])[:, :, None] * Bi[:, None, :])
        new[slot] = s
        yi = (s * Ci[:, None, :]).sum(-1)
        if D is not None:
            yi = yi + D * x[i]
        if z is not None:
            yi = yi * F.silu(z[i])
        y[i] = yi
    if mamba1:
        return y[:, 0], new[:, 0]
    return y, new


def _activate(out, activation):
    return F.silu(out) if activation == "silu" else out


def naive_causal_conv1d(x, weight, bias=None, activation=None, initial_states=None,
                        cu_seqlens=None):
    """Depthwise causal convolution, output by output.

    ``out[d, t] = bias[d] + sum_k weight[d, k] * xp[d, t + k]`` where ``xp`` is the sequence
    prefixed by its ``width - 1`` initial inputs (zeros by default); then the activation.

    x [batch, dim, seqlen] (batch 1 with cu_seqlens [num_seqs + 1]), weight [dim, width],
    bias [dim], initial_states [num_seqs, dim, width - 1].
    Returns ``(out, final_states)``: out like x, final_states [num_seqs, dim, width - 1] (the
    last ``width - 1`` inputs of each prefixed sequence); compute dtype.
    """
    cd = _compute_dtype(x, weight, bias, initial_states)
    x, weight, bias, initial_states = (_cast(t, cd) for t in (x, weight, bias, initial_states))
    batch, dim, seqlen = x.shape
    width = weight.shape[1]
    spans = sequence_spans(batch, seqlen, cu_seqlens)
    out = torch.zeros(x.shape, dtype=cd, device=x.device)
    finals = torch.zeros(len(spans), dim, width - 1, dtype=cd, device=x.device)
    for i, (b, start, end) in enumerate(spans):
        init = (initial_states[i] if initial_states is not None
                else torch.zeros(dim, width - 1, dtype=cd, device=x.device))
        xp = torch.cat([init, x[b, :, start:end]], dim=1)
        for t in range(end - start):
            o = (weight * xp[:, t:t + width]).sum(-1)
            if bias is not None:
                o = o + bias
            out[b, :, start + t] = _activate(o, activation)
        finals[i] = xp[:, xp.shape[1] - (width - 1):]
    return out, finals


def naive_causal_conv1d_update(x, conv_state, weight, bias=None, activation=None,
                               conv_state_indices=None):
    """Decode steps of the causal convolution, without touching ``conv_state``.

    x [batch, dim] or [batch, dim, seqlen] (seqlen new tokens), conv_state
    [nslots, dim, state_len >= width - 1] (the last state_len inputs, oldest first),
    weight [dim, width], bias [dim], conv_state_indices [batch] (default: row i uses slot i;
    -1 skips the row: zeros out, no slot changes).
    Returns ``(out, new_conv_state)``: out like x, the whole updated pool; compute dtype.
    """
    cd = _compute_dtype(x, conv_state, weight, bias)
    x, conv_state, weight, bias = (_cast(t, cd) for t in (x, conv_state, weight, bias))
    squeeze = x.dim() == 2
    if squeeze:
        x = x[:, :, None]
    batch, dim, seqlen = x.shape
    state_len, width = conv_state.shape[2], weight.shape[1]
    idx = (torch.arange(batch) if conv_state_indices is None
           else conv_state_indices.to(torch.int64).cpu())
    new = conv_state.clone()
    out = torch.zeros(x.shape, dtype=cd, device=x.device)
    for i in range(batch):
        slot = int(idx[i])
        if slot < 0:
            continue
        xp = torch.cat([conv_state[slot], x[i]], dim=1)  # [dim, state_len + seqlen]
        for t in range(seqlen):
            w0 = state_len - (width - 1) + t
            o = (weight * xp[:, w0:w0 + width]).sum(-1)
            if bias is not None:
                o = o + bias
            out[i, :, t] = _activate(o, activation)
        new[slot] = xp[:, seqlen:]
    return (out[:, :, 0] if squeeze else out), new
