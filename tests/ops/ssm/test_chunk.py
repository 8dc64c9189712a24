"""chunk_ssd_scan against the sequential float64 recurrence; resume, checkpoints, varlen."""
import pytest
import torch
from torch.overrides import TorchFunctionMode

from flashkit.ops.ssm import chunk_ssd_scan, naive_ssd_scan
from flashkit.ops.ssm.chunk_triton import chunk_ssd_scan_fwd
from flashkit.ops.ssm.spans import sequence_spans
from tests.helpers import device, poison

from .common import BACKENDS, STATE_TOL, check, gen, rand, randn

HEADS, HEADDIM, DSTATE = 4, 16, 8


def make(seed, batch, seqlen, ngroups=1, dtype=torch.float32, features=True, per_dim_d=False,
         nseqs=None, heads=HEADS, headdim=HEADDIM, dstate=DSTATE):
    """Inputs of chunk_ssd_scan. ``features`` turns on D, z, dt_bias, softplus and initial
    states; without softplus dt is drawn positive."""
    g = gen(seed)
    nseqs = batch if nseqs is None else nseqs
    kw = dict(
        x=randn(g, batch, seqlen, heads, headdim, dtype=dtype),
        dt=(randn(g, batch, seqlen, heads, scale=0.5) - 1.0) if features
        else rand(g, batch, seqlen, heads, lo=0.01, hi=0.3),
        A=-rand(g, heads, lo=0.5, hi=2.0),
        B=randn(g, batch, seqlen, ngroups, dstate, dtype=dtype),
        C=randn(g, batch, seqlen, ngroups, dstate, dtype=dtype),
    )
    if features:
        kw.update(
            D=randn(g, heads, headdim) if per_dim_d else randn(g, heads),
            z=randn(g, batch, seqlen, heads, headdim, dtype=dtype),
            dt_bias=randn(g, heads, scale=0.3), dt_softplus=True,
            initial_states=randn(g, nseqs, heads, headdim, dstate))
    return kw


def reference(kw, **extra):
    """naive_ssd_scan in float64 on the same (already rounded) inputs."""
    args = {k: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
            for k, v in kw.items()}
    return naive_ssd_scan(**args, **extra)


def positions_for(seqlen, chunk, batch):
    """Per sequence: 0, chunk boundaries hit and missed, the end, and an unused slot."""
    base = [0, 1, chunk - 1, chunk, chunk + 1, seqlen // 2, seqlen, -1]
    rows = [[min(p, seqlen) for p in base]]
    rows += [[min(p, seqlen) for p in reversed(base)] for _ in range(batch - 1)]
    return torch.tensor(rows)


# (seqlen, chunk, ngroups, features, per_dim_d): lengths 1, 63, 257 with chunk boundaries hit
# (257 = 4 * 64 + 1) and missed; ngroups 2 of 4 heads; 1000 at the default chunk of 256.
CASES = [
    (1000, 256, 2, True, False),
    (1, 16, 1, True, False),
    (63, 16, 2, True, False),
    (63, 32, 1, False, False),
    (257, 64, 2, True, True),
    (257, 32, 1, False, False),
]


def _id(c):
    return f"L{c[0]}_cs{c[1]}_g{c[2]}_{'feat' if c[3] else 'plain'}{'_Dhp' if c[4] else ''}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_against_reference(case, backend):
    seqlen, chunk, ngroups, features, per_dim_d = case
    if backend == "torch" and seqlen > 63:
        pytest.skip("the torch backend is the reference itself: one short case covers its wrapper")
    batch = 2
    kw = make(hash(case) % 2**31, batch, seqlen, ngroups, features=features, per_dim_d=per_dim_d)
    pos = positions_for(seqlen, chunk, batch)
    y, final, ckpt = chunk_ssd_scan(**kw, chunk_size=chunk, checkpoint_positions=pos,
                                    return_final_states=True, backend=backend)
    ref_y, ref_final, ref_ckpt = reference(kw, checkpoint_positions=pos)
    assert y.dtype == torch.float32 and final.dtype == ckpt.dtype == torch.float32
    check(y, ref_y, torch.float32, what="y")
    check(final, ref_final, torch.float32, STATE_TOL, what="final_states")
    check(ckpt, ref_ckpt, torch.float32, STATE_TOL, what="checkpoint_states")
    # The unused slots (-1) are zeros.
    assert torch.all(ckpt[0, -1] == 0) and torch.all(ckpt[1:, 0] == 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_16bit_inputs(dtype):
    kw = make(5, 2, 63, 2, dtype=dtype)
    pos = positions_for(63, 16, 2)
    y, final, ckpt = chunk_ssd_scan(**kw, chunk_size=16, checkpoint_positions=pos,
                                    return_final_states=True, backend="triton")
    ref_y, ref_final, ref_ckpt = reference(kw, checkpoint_positions=pos)
    assert y.dtype == dtype and final.dtype == torch.float32
    check(y, ref_y, dtype, what="y")
    check(final, ref_final, dtype, STATE_TOL, what="final_states")
    check(ckpt[:, :-1], ref_ckpt[:, :-1], dtype, STATE_TOL, what="checkpoint_states")


def test_checkpoint_is_prefix_final_state():
    """The state at position p equals the final state of scanning tokens [0, p)."""
    seqlen, chunk = 100, 32
    kw = make(11, 2, seqlen, 2)
    points = [1, 32, 45, 100]
    _, ckpt = chunk_ssd_scan(**kw, chunk_size=chunk, checkpoint_positions=points,
                             backend="triton")
    for k, p in enumerate(points):
        prefix = {n: (v[:, :p] if n in ("x", "dt", "B", "C", "z") else v) for n, v in kw.items()}
        _, final = chunk_ssd_scan(**prefix, chunk_size=chunk, return_final_states=True,
                                  backend="triton")
        check(ckpt[:, k], final, torch.float32, STATE_TOL, what=f"checkpoint at {p}")


@pytest.mark.parametrize("split", [32, 45], ids=["at_boundary", "mid_chunk"])
def test_resume(split):
    """scan(prefix) -> state; scan(suffix, initial_states=state) == scan(whole) on the suffix."""
    seqlen, chunk = 100, 32
    kw = make(17 + split, 2, seqlen, 2)
    y, final = chunk_ssd_scan(**kw, chunk_size=chunk, return_final_states=True, backend="triton")
    seq = ("x", "dt", "B", "C", "z")
    prefix = {n: (v[:, :split] if n in seq else v) for n, v in kw.items()}
    suffix = {n: (v[:, split:] if n in seq else v) for n, v in kw.items()}
    _, state = chunk_ssd_scan(**prefix, chunk_size=chunk, return_final_states=True,
                              backend="triton")
    suffix["initial_states"] = state
    y2, final2 = chunk_ssd_scan(**suffix, chunk_size=chunk, return_final_states=True,
                                backend="triton")
    check(y2, y[:, split:], torch.float32, what="suffix y")
    check(final2, final, torch.float32, STATE_TOL, what="final_states")


def test_varlen_equals_loop():
    """Packed sequences (an empty one, one token, chunk boundaries hit and missed), each with its
    own initial state and checkpoints, equal a per-sequence loop and the reference."""
    cu = [0, 0, 1, 33, 64, 150]
    seqlen, chunk, nseqs = cu[-1], 32, len(cu) - 1
    kw = make(23, 1, seqlen, 2, nseqs=nseqs)
    cu_t = torch.tensor(cu, dtype=torch.int32, device=device())
    lens = [b - a for a, b in zip(cu, cu[1:])]
    pos = torch.tensor([[min(p, n) for p in (0, n, n // 2, 1 if n else -1)] for n in lens])
    y, final, ckpt = chunk_ssd_scan(**kw, chunk_size=chunk, cu_seqlens=cu_t,
                                    checkpoint_positions=pos, return_final_states=True,
                                    backend="triton")
    ref_y, ref_final, ref_ckpt = reference(kw, cu_seqlens=cu_t, checkpoint_positions=pos)
    check(y, ref_y, torch.float32, what="y")
    check(final, ref_final, torch.float32, STATE_TOL, what="final_states")
    check(ckpt, ref_ckpt, torch.float32, STATE_TOL, what="checkpoint_states")
    seq = ("x", "dt", "B", "C", "z")
    for i, (a, b) in enumerate(zip(cu, cu[1:])):
        if a == b:
            assert torch.equal(final[i], kw["initial_states"][i].float())
            continue
        one = {n: (v[:, a:b] if n in seq else v) for n, v in kw.items()}
        one["initial_states"] = kw["initial_states"][i:i + 1]
        y1, f1, c1 = chunk_ssd_scan(**one, chunk_size=chunk, checkpoint_positions=pos[i],
                                    return_final_states=True, backend="triton")
        torch.testing.assert_close(y[:, a:b], y1, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(final[i:i + 1], f1, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ckpt[i:i + 1], c1, atol=1e-5, rtol=1e-5)


class _HostReads(TorchFunctionMode):
    """Counts the reads of one tensor's values on the host (a device-to-host copy on a GPU)."""

    READS = {"tolist", "item", "cpu", "numpy", "__int__", "__index__", "__bool__"}

    def __init__(self, tensor):
        super().__init__()
        self.tensor, self.count = tensor, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.READS and args and args[0] is self.tensor:
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_varlen_reads_cu_seqlens_once():
    """A varlen call reads cu_seqlens on the host once (its check), not again for the spans."""
    cu_t = torch.tensor([0, 5, 21, 40], dtype=torch.int32, device=device())
    kw = make(29, 1, 40, nseqs=3)
    with _HostReads(cu_t) as reads:
        y = chunk_ssd_scan(**kw, chunk_size=16, cu_seqlens=cu_t, backend="triton")
    assert reads.count == 1
    check(y, reference(kw, cu_seqlens=cu_t)[0], torch.float32, what="y")


def test_non_contiguous_views():
    """x, z, B, C as column slices of one projection (strided rows), like Mamba-2's in_proj."""
    batch, seqlen, chunk = 2, 40, 16
    g = gen(31)
    width = 2 * HEADS * HEADDIM + 2 * 2 * DSTATE + 8
    proj = randn(g, batch, seqlen, width)
    o = 0
    z = proj[..., o:o + HEADS * HEADDIM].unflatten(-1, (HEADS, HEADDIM))
    o += HEADS * HEADDIM
    x = proj[..., o:o + HEADS * HEADDIM].unflatten(-1, (HEADS, HEADDIM))
    o += HEADS * HEADDIM
    B = proj[..., o:o + 2 * DSTATE].unflatten(-1, (2, DSTATE))
    o += 2 * DSTATE
    C = proj[..., o:o + 2 * DSTATE].unflatten(-1, (2, DSTATE))
    dt = proj[..., -HEADS:]
    assert not x.is_contiguous()
    kw = dict(x=x, dt=dt, A=-rand(g, HEADS, lo=0.5, hi=2.0), B=B, C=C, z=z, dt_softplus=True)
    y = chunk_ssd_scan(**kw, chunk_size=chunk, backend="triton")
    check(y, reference(kw)[0], torch.float32, what="y")


def test_poisoned_outputs():
    """Every element of y and of the states is written (NaN-filled buffers beforehand)."""
    kw = make(41, 2, 63, 2)
    pos = positions_for(63, 16, 2)
    spans = sequence_spans(2, 63)
    y = poison(torch.empty_like(kw["x"]))
    final = poison(torch.empty(2, HEADS, HEADDIM, DSTATE, device=device()))
    ckpt = poison(torch.empty(2, pos.shape[1], HEADS, HEADDIM, DSTATE, device=device()))
    chunk_ssd_scan_fwd(kw["x"], kw["dt"], kw["A"], kw["B"], kw["C"], 16, kw["D"], kw["z"],
                       kw["dt_bias"], True, kw["initial_states"], spans, pos, y, final, ckpt)
    ref_y, ref_final, ref_ckpt = reference(kw, checkpoint_positions=pos)
    check(y, ref_y, torch.float32, what="y")
    check(final, ref_final, torch.float32, STATE_TOL, what="final_states")
    check(ckpt, ref_ckpt, torch.float32, STATE_TOL, what="checkpoint_states")


# Argument -> a mutation of valid inputs that the error must name it for.
BAD = {
    "x": lambda kw: kw.update(x=kw["x"][0]),
    "dt": lambda kw: kw.update(dt=kw["dt"][:, :, :1]),
    "A": lambda kw: kw.update(A=kw["A"][:2]),
    "B": lambda kw: kw.update(B=kw["B"].repeat(1, 1, 3, 1)),  # 6 groups do not divide 4 heads
    "C": lambda kw: kw.update(C=kw["C"].to(torch.float16)),
    "chunk_size": lambda kw: kw.update(chunk_size=48),
    "D": lambda kw: kw.update(D=kw["D"][:3]),
    "z": lambda kw: kw.update(z=kw["z"][:, :5]),
    "dt_bias": lambda kw: kw.update(dt_bias=kw["dt_bias"][None]),
    "initial_states": lambda kw: kw.update(initial_states=kw["initial_states"][:1]),
    "cu_seqlens": lambda kw: kw.update(cu_seqlens=torch.tensor([0, 5, 3, 20])),
    "checkpoint_positions": lambda kw: kw.update(checkpoint_positions=[0, 21]),
    "backend": lambda kw: kw.update(backend="cuda"),
}


@pytest.mark.parametrize("arg", list(BAD))
def test_bad_inputs(arg):
    kw = make(3, 1 if arg == "cu_seqlens" else 2, 20, 2, nseqs=2)
    kw["chunk_size"] = 16
    BAD[arg](kw)
    with pytest.raises(ValueError, match=arg):
        chunk_ssd_scan(**kw)
