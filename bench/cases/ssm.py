"""SSM scans: the Mamba-2 SSD chunked scan (with and without per-chunk checkpoints), the Mamba-1
selective scan and the decode step.

SSD scan (Mamba2-2.7B-like: nheads 80, headdim 64, dstate 128, ngroups 1, chunk 256, bf16): the
intra-chunk quadratic form makes it matmul work (tensor cores), with arithmetic intensity ~2Q =
512 FLOP/B of x at chunk 256, so fractions of both ceilings are worth reading. The decode step
streams the float32 state pool once in and once out: bound by memory (target: >= 80% of the copy
bandwidth at batch 256). The Mamba-1 scan is sequential in time per channel and bound by latency
along the sequence.

Baselines, measured in the same process: the torch reference (the sequential recurrence of
ops/ssm/reference.py; only where it finishes in seconds), flash-linear-attention's
``chunk_simple_gla`` (the same recurrence as SSD: q=C, k=B, v=dt*x, per-head scalar log-decay
dt*A) and mamba_ssm's ``mamba_chunk_scan_combined`` / ``selective_scan_fn`` /
``selective_state_update`` where they import.
"""
from __future__ import annotations

import functools

from ..registry import Case, Setup, input_sets, optional, register

HEADS, HEADDIM, DSTATE, NGROUPS, CHUNK = 80, 64, 128, 1, 256
SSD_BATCHES, SSD_SEQLENS = (1, 8), (2048, 8192, 32768)
M1_DIM, M1_DSTATE, M1_BATCHES, M1_SEQLENS = 5120, 16, (1, 8), (2048, 8192)
DECODE_BATCHES = (1, 64, 256)
# The sequential reference runs one Python step per token: only the shortest shapes as baselines.
REF_MAX_TOKENS = 2048
# bf16 outputs of magnitude ~10-50 (randn inputs, decaying states): one bf16 rounding is ~0.2;
# a wrong chunk or state gives errors of the output's own size.
ATOL_BF16 = 0.5


def ssd_flops(batch, seqlen, heads=HEADS, p=HEADDIM, n=DSTATE, q=CHUNK):
    """Per head and token: the chunk state x^T (w B) (2PN), the output from the chunk-start
    state C S (2NP), and the causal half of the intra-chunk form, C B^T and (W) x over Q/2 earlier
    tokens on average (Q/2 * 2N + Q/2 * 2P). State passing (2PN per chunk) is negligible."""
    return batch * seqlen * heads * (4 * p * n + q * (n + p))


def ssd_bytes(batch, seqlen, heads=HEADS, p=HEADDIM, n=DSTATE, g=NGROUPS, elt=2, ckpt=False,
              q=CHUNK):
    """Inputs read once and y written once: x, z, y (3 H P), B and C (2 G N), dt (H) in bf16,
    the final state (H P N float32) once per sequence; with checkpoints every chunk, one float32
    state per chunk more."""
    per_tok = (3 * heads * p + 2 * g * n + heads) * elt
    states = batch * heads * p * n * 4 * (1 + (seqlen // q if ckpt else 0))
    return batch * seqlen * per_tok + states


def decode_bytes(batch, heads=HEADS, p=HEADDIM, n=DSTATE, g=NGROUPS, elt=2):
    """The state read and written (2 H P N float32) plus x, z, y (3 H P), B, C (2 G N), dt (H)."""
    return batch * (2 * heads * p * n * 4 + (3 * heads * p + 2 * g * n + heads) * elt)


def decode_flops(batch, heads=HEADS, p=HEADDIM, n=DSTATE):
    """Per state element: exp(dt A) * S + dt x B (4) and the C dot (2)."""
    return batch * heads * p * n * 6


def m1_flops(batch, seqlen, dim=M1_DIM, n=M1_DSTATE):
    """Per (token, channel, state): exp argument, decay, input term, update, C dot (~7)."""
    return batch * seqlen * dim * n * 7


def m1_bytes(batch, seqlen, dim=M1_DIM, n=M1_DSTATE, elt=2):
    """u, delta, z, y (4 D) and B, C (2 N) per token in bf16; the last state in float32."""
    return batch * seqlen * (4 * dim + 2 * n) * elt + batch * dim * n * 4


def _reference_baseline(reference, tokens: int) -> tuple[dict, dict]:
    """(baselines, skipped) holding the sequential torch reference, timed only up to
    REF_MAX_TOKENS tokens (it loops over every token on the host)."""
    if tokens <= REF_MAX_TOKENS:
        return {"torch-reference": reference}, {}
    return {}, {"torch-reference": f"sequential: {tokens} tokens > {REF_MAX_TOKENS}"}


def fla_ssd(gla, x, dt, A, B, C, D, z, bias):
    """chunk_ssd_scan through a simple-GLA kernel ``gla`` (fla's ``chunk_simple_gla`` or its
    naive recurrence): q = C, k = B (each group broadcast to its heads), v = softplus(dt + bias)
    * x, log-decay g = softplus(dt + bias) * A, scale 1; D and the z gate are applied around it.
    Returns y (x's dtype) and the final state [batch, heads, P, N] float32."""
    import torch

    heads, groups = x.shape[2], B.shape[2]
    dts = torch.nn.functional.softplus(dt.float() + bias)
    if groups == 1:
        q, k = C.expand(-1, -1, heads, -1), B.expand(-1, -1, heads, -1)
    else:
        q, k = (t.repeat_interleave(heads // groups, dim=2) for t in (C, B))
    v = (x.float() * dts[..., None]).to(x.dtype)
    o, final = gla(q, k, v, g=dts * A, scale=1.0, output_final_state=True)
    y = (o.float() + D[:, None] * x.float()) * torch.nn.functional.silu(z.float())
    return y.to(x.dtype), final.float().transpose(-1, -2)  # [.., K=N, V=P] -> [.., P, N]


def _cuda(device):
    return str(device).startswith("cuda")


def _ssd_inputs(batch, seqlen, heads, p, n, g, device, gen):
    import torch

    bf = dict(dtype=torch.bfloat16, device=device)
    x = torch.randn(batch, seqlen, heads, p, generator=gen, **bf)
    z = torch.randn(batch, seqlen, heads, p, generator=gen, **bf)
    dt = torch.randn(batch, seqlen, heads, generator=gen, **bf) * 0.5 - 2
    A = -torch.rand(heads, generator=gen, device=device) * 2 - 0.5
    B = torch.randn(batch, seqlen, g, n, generator=gen, **bf)
    C = torch.randn(batch, seqlen, g, n, generator=gen, **bf)
    D = torch.randn(heads, device=device, generator=gen)
    bias = torch.randn(heads, device=device, generator=gen) * 0.3
    return x, dt, A, B, C, D, z, bias


def _ssd_setup(batch, seqlen, heads, p, n, g, ckpt, device, quick) -> Setup:
    import torch

    from flashkit.ops.ssm import chunk_ssd_scan, naive_ssd_scan

    chunk = CHUNK if seqlen >= CHUNK else 16
    gen = torch.Generator(device=device).manual_seed(seqlen + batch)
    positions = list(range(chunk, seqlen + 1, chunk)) if ckpt else None
    n_sets = input_sets(ssd_bytes(batch, seqlen, heads, p, n, g), device)
    inputs = [_ssd_inputs(batch, seqlen, heads, p, n, g, device, gen) for _ in range(n_sets)]

    def flashkit(backend, x, dt, A, B, C, D, z, bias):
        out = chunk_ssd_scan(x, dt, A, B, C, chunk, D, z, bias, True, checkpoint_positions=positions,
                             return_final_states=True, backend=backend)
        return out[:2]  # y and the final state; checkpoints are timed, not compared

    def reference(x, dt, A, B, C, D, z, bias):
        y, final, _ = naive_ssd_scan(x, dt, A, B, C, D, z, bias, True)
        return y.to(x.dtype), final

    impls, (baselines, skipped) = {}, _reference_baseline(reference, batch * seqlen)
    if _cuda(device):
        impls["flashkit-triton"] = functools.partial(flashkit, "triton")
        def fla():
            from fla.ops.simple_gla import chunk_simple_gla

            return functools.partial(fla_ssd, chunk_simple_gla)

        optional(baselines, skipped, "fla-chunk_simple_gla", fla)
        def mamba_ssm():
            from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

            def mamba(x, dt, A, B, C, D, z, bias):
                y, final = mamba_chunk_scan_combined(x, dt, A, B, C, chunk, D=D, z=z,
                                                     dt_bias=bias, dt_softplus=True,
                                                     return_final_states=True)
                return y, final.float()

            return mamba

        optional(baselines, skipped, "mamba_ssm", mamba_ssm)
    else:
        impls["flashkit-torch"] = functools.partial(flashkit, "torch")
        skipped["flashkit-triton"] = "Triton would run in its interpreter on the CPU: not timed"
        skipped["fla-chunk_simple_gla"] = "needs a CUDA device"
        skipped["mamba_ssm"] = "needs a CUDA device"
    return Setup(impls=impls, baselines=baselines, inputs=inputs, reference=reference,
                 atol=ATOL_BF16, skipped=skipped)


class _FirstCallOnCopy:
    """A decode step that updates the state pool in place. Its first call (the one checked
    against the reference) works on a copy of the pool as it was at setup, so every
    implementation is checked from the same state, whatever the timed calls of the ones before
    it did to the pool; the timed calls update the pool in place, as in serving."""

    def __init__(self, fn, pristine):
        self.fn, self.pristine = fn, pristine

    def __call__(self, state, *rest):
        if self.pristine is not None:
            state, self.pristine = self.pristine.clone(), None
        return self.fn(state, *rest)


def _decode_setup(batch, heads, p, n, g, device, quick) -> Setup:
    import torch

    from flashkit.ops.ssm import naive_selective_state_update, selective_state_update

    gen = torch.Generator(device=device).manual_seed(batch)
    bf = dict(dtype=torch.bfloat16, device=device)

    def make():
        state = torch.randn(batch, heads, p, n, generator=gen, device=device)
        x = torch.randn(batch, heads, p, generator=gen, **bf)
        z = torch.randn(batch, heads, p, generator=gen, **bf)
        dt = torch.randn(batch, heads, generator=gen, **bf) * 0.5 - 2
        A = -torch.rand(heads, generator=gen, device=device) * 2 - 0.5
        B = torch.randn(batch, g, n, generator=gen, **bf)
        C = torch.randn(batch, g, n, generator=gen, **bf)
        D = torch.randn(heads, device=device, generator=gen)
        bias = torch.randn(heads, device=device, generator=gen) * 0.3
        slots = torch.randperm(batch, generator=torch.Generator().manual_seed(batch)).to(device)
        return state, x, dt, A, B, C, D, z, bias, slots

    def flashkit(backend, state, x, dt, A, B, C, D, z, bias, slots):
        return selective_state_update(state, x, dt, A, B, C, D, z, bias, True, slots,
                                      backend=backend)

    def reference(state, x, dt, A, B, C, D, z, bias, slots):
        return naive_selective_state_update(state, x, dt, A, B, C, D, z, bias, True,
                                            slots)[0].to(x.dtype)

    inputs = [make() for _ in range(input_sets(decode_bytes(batch, heads, p, n, g), device))]
    pristine = inputs[0][0].clone()
    impls, skipped = {}, {}
    baselines = {"torch-reference": _FirstCallOnCopy(reference, pristine)}
    if _cuda(device):
        impls["flashkit-triton"] = _FirstCallOnCopy(functools.partial(flashkit, "triton"),
                                                   pristine)
        def mamba_ssm():
            from mamba_ssm.ops.triton.selective_state_update import selective_state_update as ms

            def mamba(state, x, dt, A, B, C, D, z, bias, slots):
                # mamba_ssm's Mamba-2 layout: dt, A, D, dt_bias broadcast to headdim (stride 0).
                return ms(state, x, dt[..., None].expand(-1, -1, p),
                          A[:, None, None].expand(-1, p, n), B, C,
                          D=D[:, None].expand(-1, p), z=z, dt_bias=bias[:, None].expand(-1, p),
                          dt_softplus=True, state_batch_indices=slots)

            return _FirstCallOnCopy(mamba, pristine)

        optional(baselines, skipped, "mamba_ssm", mamba_ssm)
    else:
        impls["flashkit-torch"] = _FirstCallOnCopy(functools.partial(flashkit, "torch"), pristine)
        skipped["flashkit-triton"] = "Triton would run in its interpreter on the CPU: not timed"
    return Setup(impls=impls, baselines=baselines, inputs=inputs, reference=reference,
                 atol=ATOL_BF16, skipped=skipped)


def _m1_setup(batch, seqlen, dim, n, device, quick) -> Setup:
    import torch

    from flashkit.ops.ssm import naive_selective_scan, selective_scan

    gen = torch.Generator(device=device).manual_seed(seqlen + batch)
    bf = dict(dtype=torch.bfloat16, device=device)

    def make():
        u = torch.randn(batch, dim, seqlen, generator=gen, **bf)
        z = torch.randn(batch, dim, seqlen, generator=gen, **bf)
        delta = torch.randn(batch, dim, seqlen, generator=gen, **bf) * 0.5 - 2
        A = -torch.rand(dim, n, generator=gen, device=device) * 2 - 0.5
        B = torch.randn(batch, 1, n, seqlen, generator=gen, **bf)
        C = torch.randn(batch, 1, n, seqlen, generator=gen, **bf)
        D = torch.randn(dim, device=device, generator=gen)
        bias = torch.randn(dim, device=device, generator=gen) * 0.3
        return u, delta, A, B, C, D, z, bias

    def flashkit(backend, u, delta, A, B, C, D, z, bias):
        return selective_scan(u, delta, A, B, C, D, z, bias, True, return_last_state=True,
                              backend=backend)

    def reference(u, delta, A, B, C, D, z, bias):
        y, last, _ = naive_selective_scan(u, delta, A, B, C, D, z, bias, True)
        return y.to(u.dtype), last

    impls, (baselines, skipped) = {}, _reference_baseline(reference, batch * seqlen)
    if _cuda(device):
        impls["flashkit-triton"] = functools.partial(flashkit, "triton")
        def mamba_ssm():
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

            def mamba(u, delta, A, B, C, D, z, bias):
                y, last = selective_scan_fn(u, delta, A, B, C, D, z, bias, True,
                                            return_last_state=True)
                return y, last.float()

            return mamba

        optional(baselines, skipped, "mamba_ssm", mamba_ssm)
    else:
        impls["flashkit-torch"] = functools.partial(flashkit, "torch")
        skipped["flashkit-triton"] = "Triton would run in its interpreter on the CPU: not timed"
    n_sets = input_sets(m1_bytes(batch, seqlen, dim, n), device)
    return Setup(impls=impls, baselines=baselines, inputs=[make() for _ in range(n_sets)],
                 reference=reference, atol=ATOL_BF16, skipped=skipped)


def _ssd_case(batch, seqlen, ckpt=False, heads=HEADS, p=HEADDIM, n=DSTATE, g=NGROUPS, **kw):
    return register(Case(
        name=f"chunk_ssd_scan/{'ckpt_' if ckpt else ''}b{batch}_L{seqlen}_h{heads}_p{p}_n{n}_g{g}",
        op="chunk_ssd_scan",
        shape=f"batch={batch} seqlen={seqlen} nheads={heads} headdim={p} dstate={n} "
              f"ngroups={g} bf16{' ckpt/chunk' if ckpt else ''}",
        setup=functools.partial(_ssd_setup, batch, seqlen, heads, p, n, g, ckpt),
        flops=ssd_flops(batch, seqlen, heads, p, n), bytes=ssd_bytes(batch, seqlen, heads, p, n,
                                                                     g, ckpt=ckpt), **kw))


def _decode_case(batch, heads=HEADS, p=HEADDIM, n=DSTATE, g=NGROUPS, **kw):
    return register(Case(
        name=f"selective_state_update/b{batch}_h{heads}_p{p}_n{n}", op="selective_state_update",
        shape=f"batch={batch} nheads={heads} headdim={p} dstate={n} state f32, io bf16",
        setup=functools.partial(_decode_setup, batch, heads, p, n, g),
        flops=decode_flops(batch, heads, p, n), bytes=decode_bytes(batch, heads, p, n, g), **kw))


def _m1_case(batch, seqlen, dim=M1_DIM, n=M1_DSTATE, **kw):
    return register(Case(
        name=f"selective_scan/b{batch}_L{seqlen}_d{dim}_n{n}", op="selective_scan",
        shape=f"batch={batch} seqlen={seqlen} dim={dim} dstate={n} bf16",
        setup=functools.partial(_m1_setup, batch, seqlen, dim, n),
        flops=m1_flops(batch, seqlen, dim, n), bytes=m1_bytes(batch, seqlen, dim, n), **kw))


for _b in SSD_BATCHES:
    for _L in SSD_SEQLENS:
        _ssd_case(_b, _L, devices=("cuda",), quick=("cuda",) if (_b, _L) == (1, 8192) else ())
        _ssd_case(_b, _L, ckpt=True, devices=("cuda",))
for _b in M1_BATCHES:
    for _L in M1_SEQLENS:
        _m1_case(_b, _L, devices=("cuda",))
for _b in DECODE_BATCHES:
    _decode_case(_b, devices=("cuda",), quick=("cuda",) if _b == 256 else ())
# The CPU's --quick cases: small enough that the sequential reference takes well under a second.
_ssd_case(1, 64, heads=4, p=16, n=16, devices=("cpu",), quick=("cpu",))
_decode_case(4, heads=4, p=16, n=16, devices=("cpu",), quick=("cpu",))
_m1_case(1, 64, dim=32, n=16, devices=("cpu",), quick=("cpu",))
