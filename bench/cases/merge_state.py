"""merge_states: combine ``num_states`` partial attention states per (token, head).

v [seq, num_states, heads, dim] bf16 and s [seq, num_states, heads] float32 (base-2 LSE) ->
v_out [seq, heads, dim], s_out [seq, heads]. About 1 FLOP per byte moved, far under any GPU's
ratio of matmul rate to bandwidth (~200 FLOP/B on H100): the op is bound by memory, and the
number to read is the fraction of the copy bandwidth.

Baselines, measured in the same process: the torch reference (eager), ``torch.compile`` of it
(CUDA only; its compile time is the row's first-call time), FlashInfer's ``merge_states`` where
installed (same layouts, same base-2 LSE).
"""
from __future__ import annotations

import functools

from ..registry import Case, Setup, input_sets, needs_cuda, optional, register

# GPU shapes: decode/prefill token counts x split-KV fan-outs, 32 heads of 128 (Llama-3-8B/70B
# per-GPU heads at TP 1/2).
GPU_SEQS = (512, 4096, 16384)
GPU_STATES = (2, 8, 32)
HEADS, DIM = 32, 128
# CPU (a smoke test of the runner, not numbers to compare): the GPU shapes that the float32
# reference handles in about a second on 2 cores.
CPU_SEQS = (512, 4096)
CPU_STATES = (2, 8)
# Output is rounded to bf16 (2^-9 relative at most) and |v_out| stays under ~5 for randn values.
ATOL = 2e-2


def merge_flops(seq: int, n: int, heads: int, dim: int) -> int:
    """Per (token, head): max over n LSEs (n), subtract and exp2 (2n), sum the weights (n),
    weighted sum of n vectors (n*dim multiply-adds = 2*n*dim), normalize (dim), log2 and add for
    s_out (2)."""
    return seq * heads * (2 * n * dim + dim + 4 * n + 2)


def merge_bytes(seq: int, n: int, heads: int, dim: int, elt: int) -> int:
    """Each input read once, each output written once: v (n*dim*elt) and s (n*4 B, float32) in,
    v_out (dim*elt) and s_out (4 B) out, per (token, head)."""
    return seq * heads * (n * dim * elt + 4 * n + dim * elt + 4)


def _setup(seq: int, n: int, heads: int, dim: int, device: str, quick: bool) -> Setup:
    import torch

    from flashkit.ops import merge_states
    from flashkit.ops.attention.reference import naive_merge_states

    cuda = device.startswith("cuda")
    dtype = torch.bfloat16
    gen = torch.Generator(device=device).manual_seed(seq * 1000 + n)

    def make():
        v = torch.randn(seq, n, heads, dim, dtype=dtype, device=device, generator=gen)
        # LSEs spread over +-12 (base 2) so that the max subtraction matters.
        s = 8 + 4 * torch.randn(seq, n, heads, dtype=torch.float32, device=device, generator=gen)
        return v, s

    n_sets = input_sets(merge_bytes(seq, n, heads, dim, 2), device)
    impls = {"flashkit-torch": functools.partial(merge_states, backend="torch")}
    baselines = {"torch-reference": naive_merge_states}
    skipped = {}
    if cuda:
        impls["flashkit-triton"] = functools.partial(merge_states, backend="triton")
        impls["flashkit-cuda"] = functools.partial(merge_states, backend="cuda")
        # A fresh compile per shape: dynamo's recompile limit (8 per function) would otherwise
        # send the ninth shape to eager without a word.
        torch._dynamo.reset()
        baselines["torch-compile"] = torch.compile(naive_merge_states, dynamic=False)
    else:
        skipped["flashkit-triton"] = "Triton runs in its interpreter on CPU: not timed"
        skipped["flashkit-cuda"] = "needs a CUDA device"
        skipped["torch-compile"] = "CUDA only"

    def flashinfer():
        import flashinfer as fi

        needs_cuda(device)
        return fi.merge_states

    optional(baselines, skipped, "flashinfer", flashinfer)
    return Setup(impls=impls, baselines=baselines, inputs=[make() for _ in range(n_sets)],
                 reference=naive_merge_states, atol=ATOL, skipped=skipped)


def _case(seq: int, n: int, heads: int, dim: int, **kw) -> Case:
    name = f"merge_states/seq{seq}_n{n}_h{heads}_d{dim}"
    return register(Case(
        name=name, op="merge_states",
        shape=f"seq={seq} states={n} heads={heads} dim={dim} bf16",
        setup=functools.partial(_setup, seq, n, heads, dim),
        flops=merge_flops(seq, n, heads, dim), bytes=merge_bytes(seq, n, heads, dim, 2), **kw))


for _seq in GPU_SEQS:
    for _n in GPU_STATES:
        _cpu = _seq in CPU_SEQS and _n in CPU_STATES
        # seq=4096, states=8 is also the GPU's --quick case (make demo on a GPU).
        _case(_seq, _n, HEADS, DIM, devices=("cpu", "cuda") if _cpu else ("cuda",),
              quick=("cuda",) if (_seq, _n) == (4096, 8) else ())
# The CPU's --quick case: small enough that the whole runner test takes seconds.
_case(128, 4, 8, 64, devices=("cpu",), full=False, quick=("cpu",))
