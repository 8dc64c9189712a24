"""Mamba-2 and hybrid models (Mamba2, Bamba, FalconH1, NemotronH, ...) through the kernel hub.

These models call four functions that transformers decorates for the ``kernels`` package under
mamba_ssm's and causal-conv1d's names. :data:`FUNCTIONS` serves each name with mamba_ssm's
semantics on flashkit's SSM ops; :func:`kernel_mapping` maps the names to them for
``kernels.register_kernel_mapping`` / ``kernels.kernelize``.

The positional arity of each function is the one of transformers' own fallback for that name,
because ``kernelize`` checks the replacement's signature against it; the rest of mamba_ssm's
arguments (``z``, ``seq_idx``, ``cu_seqlens``, ``initial_states``, ``return_varlen_states``,
...) come as keywords, which is how the models pass them. Keywords these functions do not know
(transformers forwards its per-call kwargs) are ignored, as transformers' own dispatch to
mamba_ssm ignores them.

``mamba_split_conv1d_scan_combined`` (the fused conv + scan + norm + out-projection) is not
served: its transformers fallback returns None and the models then run the four functions.
"""
from __future__ import annotations

import inspect
import math

import torch

from . import _state

__all__ = ["mamba_chunk_scan_combined", "selective_state_update", "causal_conv1d_fn",
           "causal_conv1d_update", "FUNCTIONS", "kernel_mapping", "FlashkitFuncRepository"]

_NO_LIMIT = (0.0, float("inf"))


def _unsupported(name: str, what: str) -> ValueError:
    return ValueError(f"flashkit's {name} does not support {what}; kernelize without flashkit's "
                      f"mapping to use mamba_ssm or transformers' torch path")


def _dense(t):
    """The ops read the last dim with stride 1; the models' split/transposed views may not."""
    return t if t is None or t.stride(-1) == 1 else t.contiguous()


def _backend() -> str:
    return "triton" if _state.backend() == "cuda" else _state.backend()


def _cu_seqlens(name: str, seq_idx, cu_seqlens, batch: int):
    """mamba_ssm's packed-sequence inputs as flashkit's cu_seqlens (batch 1 only)."""
    if cu_seqlens is not None:
        return cu_seqlens.to(torch.int32)
    if seq_idx is None:
        return None
    if batch != 1:
        raise _unsupported(name, f"seq_idx over a batch of {batch} rows (pack into one row)")
    ids = seq_idx.reshape(-1).to(torch.int64)
    if ids.numel() and (int(ids[0]) != 0 or bool((torch.diff(ids) < 0).any())):
        raise _unsupported(name, "seq_idx that does not start at 0 and increase")
    counts = torch.bincount(ids, minlength=int(ids[-1]) + 1 if ids.numel() else 0)
    out = torch.zeros(counts.numel() + 1, dtype=torch.int32, device=ids.device)
    out[1:] = counts.cumsum(0)
    return out


def mamba_chunk_scan_combined(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor,
                              B: torch.Tensor, C: torch.Tensor, chunk_size: int,
                              D: torch.Tensor | None = None, dt_bias: torch.Tensor | None = None,
                              initial_states: torch.Tensor | None = None,
                              dt_softplus: bool = False, dt_limit=_NO_LIMIT,
                              return_final_states: bool = False, **kwargs):
    """mamba_ssm's ``mamba_chunk_scan_combined`` on flashkit.chunk_ssd_scan.

    x [batch, seqlen, nheads, headdim], dt [batch, seqlen, nheads], A [nheads], B/C [batch,
    seqlen, ngroups, dstate], D [nheads] or [nheads, headdim], dt_bias [nheads], initial_states
    [batch, nheads, headdim, dstate]; keywords z (like x), seq_idx [batch, seqlen] or cu_seqlens
    (packed, batch 1), return_varlen_states. ``dt <- clamp(softplus(dt + dt_bias), *dt_limit)``.
    Returns y like x, then the final states [batch, nheads, headdim, dstate] (float32; with
    seq_idx, the last sequence's) and the varlen states [num_seqs, ...] when asked.
    """
    import flashkit

    name = "mamba_chunk_scan_combined"
    z, seq_idx = kwargs.get("z"), kwargs.get("seq_idx")
    cu = _cu_seqlens(name, seq_idx, kwargs.get("cu_seqlens"), x.shape[0])
    varlen = bool(kwargs.get("return_varlen_states", False))
    if varlen and cu is None:
        raise _unsupported(name, "return_varlen_states without cu_seqlens or seq_idx")
    if cu is not None and initial_states is not None and initial_states.shape[0] != cu.numel() - 1:
        raise _unsupported(name, "packed sequences with initial_states that are not one per "
                                 "sequence")
    lo, hi = (float(v) for v in dt_limit)
    if (lo, hi) != _NO_LIMIT:  # clamp after softplus: done here, the scan then takes dt as is
        dt = dt.float() + (dt_bias.float() if dt_bias is not None else 0.0)
        dt = torch.nn.functional.softplus(dt) if dt_softplus else dt
        dt = dt.clamp(min=lo, max=hi if math.isfinite(hi) else None).to(x.dtype)
        dt_bias, dt_softplus = None, False
    want_final = bool(return_final_states) or varlen
    res = flashkit.chunk_ssd_scan(
        x=_dense(x), dt=_dense(dt), A=A, B=_dense(B), C=_dense(C), chunk_size=int(chunk_size),
        D=D, z=_dense(z), dt_bias=dt_bias,
        dt_softplus=bool(dt_softplus), initial_states=initial_states, cu_seqlens=cu,
        return_final_states=want_final, backend=_backend())
    if not want_final:
        return res
    y, final = res[0], res[1]
    out = [y]
    if return_final_states:
        out.append(final[-1:] if cu is not None else final)
    if varlen:
        out.append(final)
    return tuple(out)


def _per_head(name: str, arg: str, t: torch.Tensor | None, dims: int):
    """mamba_ssm's headdim-expanded decode inputs ([..., nheads, headdim(, dstate)]) as the
    per-head values flashkit takes; they must not vary over the expanded dims."""
    if t is None:
        return None
    lead = t.dim() - dims
    first = t[(slice(None),) * lead + (0,) * dims]
    expanded = all(t.stride(d) == 0 for d in range(lead, t.dim()))
    if not expanded and not torch.equal(t, first.reshape(first.shape + (1,) * dims).expand_as(t)):
        raise _unsupported(name, f"{arg} that varies over headdim (flashkit's Mamba-2 step takes "
                                 f"one value per head)")
    return first


def selective_state_update(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor,
                           A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                           D: torch.Tensor | None = None, dt_bias: torch.Tensor | None = None,
                           dt_softplus: bool = False, z: torch.Tensor | None = None, **kwargs):
    """mamba_ssm's ``selective_state_update`` on flashkit.selective_state_update (state in place).

    Mamba-2: state [batch, nheads, headdim, dstate], x/z [batch, nheads, headdim], dt [batch,
    nheads(, headdim)], A [nheads(, headdim, dstate)], B/C [batch, ngroups, dstate], D/dt_bias
    [nheads(, headdim)]; the headdim-expanded forms must be constant over the expanded dims.
    Mamba-1: a 3-D state, as flashkit's. Keyword state_batch_indices as flashkit's.
    """
    import flashkit

    name = "selective_state_update"
    if state.dim() == 4:
        if dt.dim() == 3:
            dt = _per_head(name, "dt", dt, 1)
        if A.dim() == 3:
            A = _per_head(name, "A", A, 2)
        if dt_bias is not None and dt_bias.dim() == 2:
            dt_bias = _per_head(name, "dt_bias", dt_bias, 1)
    return flashkit.selective_state_update(
        state=state, x=_dense(x), dt=_dense(dt), A=A, B=_dense(B), C=_dense(C), D=D, z=_dense(z),
        dt_bias=dt_bias,
        dt_softplus=bool(dt_softplus), state_batch_indices=kwargs.get("state_batch_indices"),
        backend=_backend())


def _activation(name: str, activation):
    if activation in (None, "silu", "swish"):
        return None if activation is None else "silu"
    raise _unsupported(name, f"activation={activation!r} (None or 'silu')")


def causal_conv1d_fn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     activation: str | None = None, **kwargs):
    """causal-conv1d's ``causal_conv1d_fn`` on flashkit.causal_conv1d.

    x [batch, dim, seqlen], weight [dim, width], bias [dim]; keywords seq_idx [batch, seqlen]
    (packed, batch 1), initial_states [batch, dim, width - 1], return_final_states,
    final_states_out. Returns out like x, or (out, final_states [batch, dim, width - 1]).
    """
    import flashkit

    name = "causal_conv1d_fn"
    act = _activation(name, activation)
    cu = _cu_seqlens(name, kwargs.get("seq_idx"), None, x.shape[0])
    final_out = kwargs.get("final_states_out")
    want = bool(kwargs.get("return_final_states", False))
    if cu is not None and (want or kwargs.get("initial_states") is not None):
        raise _unsupported(name, "seq_idx together with initial or final states")
    res = flashkit.causal_conv1d(x=x, weight=weight, bias=bias, activation=act,
                                 initial_states=kwargs.get("initial_states"),
                                 return_final_states=want, cu_seqlens=cu, backend=_backend())
    if not want:
        return res
    out, final = res
    if final_out is not None:
        final = final_out.copy_(final)
    return out, final


def causal_conv1d_update(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None = None, activation: str | None = None):
    """causal-conv1d's ``causal_conv1d_update`` on flashkit.causal_conv1d_update: x [batch,
    dim] or [batch, dim, seqlen], conv_state [batch, dim, state_len] shifted in place."""
    import flashkit

    act = _activation("causal_conv1d_update", activation)
    return flashkit.causal_conv1d_update(x=x, conv_state=conv_state, weight=weight, bias=bias,
                                         activation=act, backend=_backend())


FUNCTIONS = {
    "mamba_chunk_scan_combined": mamba_chunk_scan_combined,
    "selective_state_update": selective_state_update,
    "causal_conv1d_fn": causal_conv1d_fn,
    "causal_conv1d_update": causal_conv1d_update,
}


class FlashkitFuncRepository:
    """A ``kernels`` repository (its RepositoryProtocol: ``load()`` -> a stateless layer class)
    serving one of :data:`FUNCTIONS` from this package: nothing is downloaded or built."""

    def __init__(self, func_name: str):
        if func_name not in FUNCTIONS:
            raise ValueError(f"func_name must be one of {sorted(FUNCTIONS)}, got {func_name!r}")
        self.func_name = func_name

    def load(self):
        return _layer(FUNCTIONS[self.func_name])

    def __eq__(self, other):
        return isinstance(other, FlashkitFuncRepository) and other.func_name == self.func_name

    def __hash__(self):
        return hash(("flashkit", self.func_name))

    def __str__(self) -> str:
        return f"flashkit (function `{self.func_name}`)"


_LAYERS: dict = {}


def _layer(func):
    """The layer class ``kernelize`` swaps in: forward(self, <func's parameters>). Forward only
    (has_backward = False: kernelize keeps the original in training mode)."""
    if func not in _LAYERS:
        class Layer(torch.nn.Module):
            has_backward = False
            can_torch_compile = False

            def forward(self, *args, **kwargs):
                return func(*args, **kwargs)

        sig = inspect.signature(func)
        self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        Layer.forward.__signature__ = sig.replace(parameters=[self_param, *sig.parameters.values()])
        Layer.__name__ = Layer.__qualname__ = f"Flashkit_{func.__name__}"
        _LAYERS[func] = Layer
    return _LAYERS[func]


def kernel_mapping(devices=("cpu", "cuda")) -> dict:
    """{name: {device: FlashkitFuncRepository}} for ``kernels.register_kernel_mapping``."""
    return {name: {dev: FlashkitFuncRepository(name) for dev in devices} for name in FUNCTIONS}
