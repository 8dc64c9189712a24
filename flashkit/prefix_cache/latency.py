"""A prefill-latency table measured with flashkit's kernels: the ``T(n)`` the simulator's TTFT uses.

``T(n)`` = ms to prefill ``n`` tokens from scratch. One layer of each kind, at the widths of a
:class:`HybridModelConfig` with random weights, is timed on a batch of one ``n``-token sequence;
the table is ``n_attn * t_attn(n) + n_ssm * t_ssm(n) + n_mlp * t_mlp(n)``. The layers are the
ones whose FLOPs :meth:`HybridModelConfig.prefill_flops` counts, so the measured and the analytic
table describe the same work:

* attention: ``x @ W_qkv`` (D -> D + 2 kv_dim), :func:`flashkit.single_prefill_with_kv_cache`
  (causal), ``o @ W_o`` (8 L D^2 + the 4 L^2 D of the scores when kv_dim = D);
* Mamba-2: ``x @ W_in`` (D -> z, x, B, C, dt), :func:`flashkit.causal_conv1d` (silu),
  :func:`flashkit.chunk_ssd_scan` (softplus dt, D skip, z gate, the final state returned as a
  cache would store it), ``y @ W_out`` (12 L D^2 + the scan's 16 L D N);
* MLP: ``gelu(x @ W_1) @ W_2`` with a 4 D hidden layer (16 L D^2).

Norms, embeddings and the LM head are left out: under 1% of the FLOPs at the default 7B widths
(D = 4096) for any n >= 16. Nothing is batched with other requests, as in the simulator, which
serves one request at a time.
"""
from __future__ import annotations

from .costs import HybridModelConfig

__all__ = ["measure_latency_table", "latency_tokens"]

_ATTN_HEAD_DIM, _SSM_HEAD_DIM, _SSD_CHUNK = 128, 64, 256


def latency_tokens(max_tokens: int) -> list[int]:
    """0, then the powers of two from 16 up to ``max_tokens`` (the default table's points)."""
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 16:
        raise ValueError(f"max_tokens must be an int >= 16, got {max_tokens!r}")
    return [0] + [2 ** i for i in range(4, max_tokens.bit_length())]


def _layers(cfg: HybridModelConfig, device, dtype, backend, wdtype=None):
    """The three layer kinds as callables of x [L, D] (random weights, scaled to keep values
    O(1) so no kernel sees inf or NaN), the dtype x takes, and the GEMM weights. On the CPU
    the GEMMs, the conv and the scan run in float32 (``wdtype``): torch's bf16 matmul there
    has no fast path (a 16 x 4096 x 16384 product: 13.4 s in bf16, 0.27 s in float32 on this
    project's 2-core CI machine)."""
    import torch
    import torch.nn.functional as F

    from flashkit.ops import causal_conv1d, chunk_ssd_scan, single_prefill_with_kv_cache

    D, di, N, G = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.n_groups
    kv = cfg.kv_dim or D
    h, hkv, nh = D // _ATTN_HEAD_DIM, kv // _ATTN_HEAD_DIM, di // _SSM_HEAD_DIM
    conv_dim = di + 2 * G * N
    g = torch.Generator(device="cpu").manual_seed(0)
    if wdtype is None:
        wdtype = dtype if device.startswith("cuda") else torch.float32

    def w(*shape, scale=None):
        t = torch.randn(*shape, generator=g) * (scale if scale is not None else shape[0] ** -0.5)
        return t.to(device=device, dtype=wdtype)

    w_qkv, w_o = w(D, D + 2 * kv), w(D, D)
    w_in, w_out = w(D, di + conv_dim + nh), w(di, D)
    conv_w, conv_b = w(conv_dim, cfg.d_conv, scale=0.5), w(conv_dim, scale=0.1)
    A = -torch.rand(nh, generator=g).add(0.5).to(device)  # float32, as Mamba-2 keeps it
    Dskip, dt_bias = torch.ones(nh, device=device), torch.full((nh,), -2.0, device=device)
    w_1, w_2 = w(D, 4 * D), w(4 * D, D)

    def attention(x):
        L = x.shape[0]
        q, k, v = (x @ w_qkv).to(dtype).split([D, kv, kv], -1)  # the kernels take fp16/bf16
        o = single_prefill_with_kv_cache(q.view(L, h, _ATTN_HEAD_DIM), k.view(L, hkv, -1),
                                         v.view(L, hkv, -1), causal=True, backend=backend)
        return o.reshape(L, D).to(wdtype) @ w_o

    def ssm(x):
        L = x.shape[0]
        z, xbc, dt = (x @ w_in).split([di, conv_dim, nh], -1)
        xbc = causal_conv1d(xbc.t()[None], conv_w, conv_b, "silu", backend=backend)[0].t().contiguous()
        xs, B, C = xbc.split([di, G * N, G * N], -1)
        y, _ = chunk_ssd_scan(xs.reshape(1, L, nh, _SSM_HEAD_DIM), dt[None], A,
                              B.reshape(1, L, G, N), C.reshape(1, L, G, N), _SSD_CHUNK,
                              D=Dskip, z=z.reshape(1, L, nh, _SSM_HEAD_DIM), dt_bias=dt_bias,
                              dt_softplus=True, return_final_states=True, backend=backend)
        return y.reshape(L, di) @ w_out

    def mlp(x):
        return F.gelu(x @ w_1) @ w_2

    weights = {"w_qkv": w_qkv, "w_o": w_o, "w_in": w_in, "w_out": w_out, "w_1": w_1, "w_2": w_2}
    return {"attention": attention, "ssm": ssm, "mlp": mlp}, wdtype, weights


def measure_latency_table(config: HybridModelConfig | None = None, tokens=None, *,
                          device: str | None = None, dtype=None, backend: str = "auto",
                          rep_ms: float = 50.0) -> dict:
    """Time one layer of each kind at every token count and sum them into ``T(n)``.

    Parameters
    ----------
    config : the model (default: Marconi's 7B hybrid); D a multiple of 128 (attention heads
        of 128), kv_dim too, d_inner a multiple of 64 (Mamba-2 heads of 64)
    tokens : strictly increasing ints >= 0, the first 0 (default: 0, 16, ..., 32768 on CUDA,
        up to 256 on the CPU, where the 7B layers take tenths of a second per call)
    device : "cuda" when available, else "cpu"
    dtype : torch.bfloat16 by default (the attention kernels take fp16/bf16 only); on the CPU
        only attention runs in it, the rest in float32 (see ``_layers``)
    backend : the kernels' backend ("auto", "torch", "triton", ...), as the ops take it
    rep_ms : milliseconds of repetitions per measurement (at least 3 calls)

    Returns
    -------
    ``{"tokens", "ms", "source", "per_layer_ms": {kind: [...]}, "device", "backend",
    "dtype", "config"}``, loadable by ``flashkit cache-sim --latency-table``.
    """
    import dataclasses

    import torch

    from flashkit.bench.timing import measure

    cfg = config if config is not None else HybridModelConfig()
    if not isinstance(cfg, HybridModelConfig):
        raise TypeError(f"config must be a HybridModelConfig, got {type(cfg).__name__}")
    kv = cfg.kv_dim or cfg.d_model
    if cfg.d_model % _ATTN_HEAD_DIM or kv % _ATTN_HEAD_DIM or cfg.d_inner % _SSM_HEAD_DIM:
        raise ValueError(f"config: d_model ({cfg.d_model}) and kv_dim ({kv}) must be multiples "
                         f"of {_ATTN_HEAD_DIM}, d_inner ({cfg.d_inner}) of {_SSM_HEAD_DIM}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, str) or device.split(":")[0] not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:i]', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: no CUDA device is available")
    dtype = dtype if dtype is not None else torch.bfloat16
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be torch.float16 or torch.bfloat16, got {dtype}")
    if tokens is None:
        tokens = latency_tokens(32768 if device.startswith("cuda") else 256)
    tokens = list(tokens)
    if (len(tokens) < 2 or tokens[0] != 0
            or any(isinstance(n, bool) or not isinstance(n, int) for n in tokens)
            or any(b <= a for a, b in zip(tokens, tokens[1:]))):
        raise ValueError(f"tokens must be >= 2 strictly increasing ints starting at 0, "
                         f"got {tokens!r}")
    if not (isinstance(rep_ms, (int, float)) and rep_ms > 0):
        raise ValueError(f"rep_ms must be a positive number, got {rep_ms!r}")

    layers, xdtype, _ = _layers(cfg, device, dtype, backend)
    counts = {"attention": cfg.n_attn, "ssm": cfg.n_ssm, "mlp": cfg.n_mlp}
    per_layer = {k: [0.0] for k in layers}
    g = torch.Generator(device="cpu").manual_seed(1)
    with torch.inference_mode():
        for n in tokens[1:]:
            x = torch.randn(n, cfg.d_model, generator=g).to(device=device, dtype=xdtype)
            for kind, fn in layers.items():
                if not counts[kind]:
                    per_layer[kind].append(0.0)
                    continue
                fn(x)  # compiles and loads the kernels of this shape first
                t = measure(lambda: fn(x), device=device, warmup_ms=rep_ms / 5, rep_ms=rep_ms,
                            min_reps=3)
                per_layer[kind].append(t.median_ms)
    ms = [sum(counts[k] * per_layer[k][i] for k in layers) for i in range(len(tokens))]
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
    return {"tokens": tokens, "ms": ms, "per_layer_ms": per_layer,
            "source": f"measured: flashkit kernels, backend {backend}, {str(dtype)[6:]}, "
                      f"on {name}",
            "device": name, "backend": backend, "dtype": str(dtype)[6:],
            "torch": torch.__version__, "config": dataclasses.asdict(cfg)}
