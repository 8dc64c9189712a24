"""fused_moe (torch and Triton backends) and FusedMoE against the float64 expert loop."""
import json

import pytest
import torch

import flashkit.ops.moe as moe
from flashkit.ops.moe import autotune_fused_moe, naive_fused_moe, naive_fused_topk, tuning
from tests.helpers import assert_rel_rmse, device, kernel_backends, poison

# Awkward sizes: hidden 40 and ffn 48 are not multiples of the 32-wide blocks (masked edges).
HIDDEN, FFN = 40, 48
# Small blocks keep the interpreter's grid small; BLOCK_K 32 < hidden exercises the K loop.
CONFIG = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, GROUP_M=2, num_warps=4, num_stages=2)
# fp32: products and sums in float32 (ieee dots) against float64. fp16/bf16: act(gate)*up and the
# per-slot outputs are rounded to the input dtype (as vLLM does), then the output: a relative RMSE
# bound on top of atol/rtol; observed ~3e-3 (bf16) and ~4e-4 (fp16).
TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float16: dict(atol=5e-3, rtol=1e-2),
       torch.bfloat16: dict(atol=4e-2, rtol=4e-2)}
RMSE = {torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}


def _weights(num_experts, dtype, seed, hidden=HIDDEN, ffn=FFN):
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(num_experts, 2 * ffn, hidden, generator=g) / hidden ** 0.5
    w2 = torch.randn(num_experts, hidden, ffn, generator=g) / ffn ** 0.5
    return w1.to(device(), dtype), w2.to(device(), dtype)


def _inputs(tokens, num_experts, topk, dtype, seed, empty=(1,)):
    """Random hidden states and routing; the experts in ``empty`` receive no token."""
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(tokens, HIDDEN, generator=g).to(device(), dtype)
    scores = torch.rand(tokens, num_experts, generator=g)
    scores[:, list(empty)] = -1.0
    ids = scores.topk(topk, dim=-1).indices.to(device(), torch.int32)
    weights = torch.rand(tokens, topk, generator=g).to(device())
    return x, weights, ids


def _check(out, x, w1, w2, weights, ids, activation, dtype):
    ref = naive_fused_moe(x.double(), w1.double(), w2.double(), weights.double(), ids, activation)
    assert out.dtype == dtype and out.shape == x.shape
    torch.testing.assert_close(out.double().cpu(), ref.cpu(), **TOL[dtype])
    assert_rel_rmse(out, ref, RMSE[dtype])


@pytest.mark.parametrize("backend", kernel_backends())
@pytest.mark.parametrize("num_experts", [8, 64], ids=lambda e: f"e{e}")
@pytest.mark.parametrize("topk", [1, 2, 8], ids=lambda k: f"k{k}")
@pytest.mark.parametrize("tokens", [1, 7, 45], ids=lambda t: f"t{t}")
def test_fused_moe_fp32(tokens, topk, num_experts, backend):
    dtype = torch.float32
    w1, w2 = _weights(num_experts, dtype, seed=num_experts)
    # Expert 1 gets no token, except where top-k uses every expert.
    empty = (1,) if topk < num_experts else ()
    x, weights, ids = _inputs(tokens, num_experts, topk, dtype, seed=tokens * 10 + topk, empty=empty)
    out = moe.fused_moe(x, w1, w2, weights, ids, config=CONFIG, backend=backend)
    _check(out, x, w1, w2, weights, ids, "silu", dtype)


@pytest.mark.parametrize("backend", kernel_backends())
@pytest.mark.parametrize("activation", ["silu", "gelu"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_fused_moe_half(dtype, activation, backend):
    w1, w2 = _weights(8, dtype, seed=3)
    x, weights, ids = _inputs(13, 8, 2, dtype, seed=5)
    out = moe.fused_moe(x, w1, w2, weights, ids, activation, config=CONFIG, backend=backend)
    _check(out, x, w1, w2, weights, ids, activation, dtype)


@pytest.mark.parametrize("backend", [b for b in kernel_backends() if b != "torch"])
def test_fused_moe_1000_tokens(backend):
    """The issue's awkward large count, with the default (untuned) config: 64-row blocks."""
    w1, w2 = _weights(8, torch.float32, seed=9)
    x, weights, ids = _inputs(1000, 8, 2, torch.float32, seed=9, empty=(6,))
    out = moe.fused_moe(x, w1, w2, weights, ids, backend=backend)
    _check(out, x, w1, w2, weights, ids, "silu", torch.float32)


def test_reference_is_the_dense_formula():
    """The loop over experts equals the dense per-token formula (E=128, top-8, 1000 tokens)."""
    num_experts, topk, tokens = 128, 8, 1000
    w1, w2 = (w.cpu().double() for w in _weights(num_experts, torch.float64, seed=4, hidden=16,
                                                  ffn=8))
    g = torch.Generator().manual_seed(4)
    x = torch.randn(tokens, 16, generator=g, dtype=torch.float64)
    w, ids = naive_fused_topk(torch.randn(tokens, num_experts, generator=g, dtype=torch.float64),
                              topk)
    h = torch.einsum("th,efh->tef", x, w1)
    y = torch.einsum("tef,ehf->teh", torch.nn.functional.silu(h[..., :8]) * h[..., 8:], w2)
    dense = torch.zeros(tokens, num_experts, dtype=torch.float64).scatter(1, ids.long(), w)
    torch.testing.assert_close(naive_fused_moe(x, w1, w2, w, ids),
                               torch.einsum("te,teh->th", dense, y))


@pytest.mark.parametrize("backend", kernel_backends())
@pytest.mark.parametrize("topk", [1, 2])
def test_fused_moe_inplace(topk, backend):
    w1, w2 = _weights(8, torch.float32, seed=2)
    x, weights, ids = _inputs(9, 8, topk, torch.float32, seed=2)
    want = moe.fused_moe(x, w1, w2, weights, ids, config=CONFIG, backend=backend)
    buf = x.clone()
    out = moe.fused_moe(buf, w1, w2, weights, ids, inplace=True, config=CONFIG, backend=backend)
    assert out is buf
    torch.testing.assert_close(buf, want)


@pytest.mark.parametrize("backend", [b for b in kernel_backends() if b != "torch"])
def test_strided_weights_and_int64_ids(backend):
    """Weights stored transposed (w1 as [E, hidden, 2*ffn].mT), routing weights a column slice."""
    w1, w2 = _weights(8, torch.float32, seed=6)
    w1 = w1.transpose(1, 2).contiguous().transpose(1, 2)
    x, weights, ids = _inputs(7, 8, 2, torch.float32, seed=6)
    weights = torch.cat([weights, weights], 1)[:, ::2]
    assert not w1.is_contiguous() and not weights.is_contiguous()
    out = moe.fused_moe(x, w1, w2, weights, ids.long(), config=CONFIG, backend=backend)
    _check(out, x, w1, w2, weights, ids, "silu", torch.float32)


@pytest.mark.parametrize("backend", [b for b in kernel_backends() if b != "torch"])
def test_every_output_written(backend, monkeypatch):
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **k: poison(real_empty(*a, **k)))
    for topk in (1, 2):
        w1, w2 = _weights(8, torch.float32, seed=1)
        x, weights, ids = _inputs(11, 8, topk, torch.float32, seed=topk)
        out = moe.fused_moe(x, w1, w2, weights, ids, config=CONFIG, backend=backend)
        assert not out.isnan().any()


def test_zero_tokens():
    w1, w2 = _weights(8, torch.float32, seed=1)
    x, weights, ids = _inputs(0, 8, 2, torch.float32, seed=1)
    for backend in kernel_backends():
        assert moe.fused_moe(x, w1, w2, weights, ids, backend=backend).shape == (0, HIDDEN)


def test_fused_moe_bad_inputs():
    w1, w2 = _weights(8, torch.float32, seed=1)
    x, weights, ids = _inputs(3, 8, 2, torch.float32, seed=1)
    bad = [
        (dict(w2=w2[:4]), r"w2 must have shape \(8, 40, 48\)"),          # expert counts differ
        (dict(w1=w1[:, :-1]), r"w1 must be \[num_experts, 2\*ffn"),
        (dict(w1=w1[..., :-1]), r"w1 must be \[num_experts, 2\*ffn, hidden=40\]"),
        (dict(topk_ids=ids + 8), r"topk_ids must be in \[0, 8\)"),
        (dict(topk_ids=ids - 5), r"topk_ids must be in \[0, 8\)"),
        (dict(topk_ids=ids.float()), "topk_ids must be int32/int64"),
        (dict(topk_ids=ids[:2]), "topk_ids must have 3 rows"),
        (dict(hidden_states=x.int()), "hidden_states must be float16/bfloat16/float32"),
        (dict(hidden_states=x.T.contiguous().T), "hidden_states must have a contiguous last"),
        (dict(w1=w1.half()), "w1 must have hidden_states' dtype"),
        (dict(w2=w2.bfloat16()), "w2 must have hidden_states' dtype"),
        (dict(topk_weights=weights[:, :1]), "topk_weights must have shape"),
        (dict(topk_weights=weights.long()), "topk_weights must be float16/bfloat16/float32"),
        (dict(w1=w1[0]), "w1 must be 3-D"),
        (dict(activation="relu"), "activation must be one of"),
        (dict(inplace=1), "inplace must be a bool"),
        (dict(config=dict(CONFIG, BLOCK_M=24)), r"config\['BLOCK_M'\] must be a power of two"),
        (dict(config={"BLOCK_M": 16}), "config must be a dict with keys"),
        (dict(backend="cuda"), "backend='cuda' needs CUDA tensors") if device() == "cpu"
        else (dict(backend="fast"), "backend must be one of"),
    ]
    base = dict(hidden_states=x, w1=w1, w2=w2, topk_weights=weights, topk_ids=ids)
    for change, msg in bad:
        with pytest.raises(ValueError, match=msg):
            moe.fused_moe(**{**base, **change})


def test_torch_compile_and_opcheck():
    w1, w2 = _weights(8, torch.float32, seed=1)
    x, _, _ = _inputs(5, 8, 2, torch.float32, seed=1)
    logits = torch.randn(5, 8)

    def layer(x, logits):
        w, ids = moe.fused_topk(logits, 2)
        y = moe.fused_moe(x, w1, w2, w, ids)
        return moe.fused_moe(y.clone(), w1, w2, w, ids, inplace=True)

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, logits), layer(x, logits))
    w, ids = moe.fused_topk(logits, 2)
    cfg = [CONFIG[k] for k in tuning.CONFIG_KEYS]
    torch.library.opcheck(torch.ops.flashkit.fused_moe.default,
                          (x, w1, w2, w, ids, "silu", cfg, "torch"))
    torch.library.opcheck(torch.ops.flashkit.fused_moe_inplace.default,
                          (x.clone(), w1, w2, w, ids, "gelu", cfg, "torch"))


@pytest.mark.parametrize("backend", kernel_backends())
def test_fused_moe_module(backend):
    torch.manual_seed(0)
    layer = moe.FusedMoE(16, 4, HIDDEN, FFN, num_expert_groups=4, topk_group=2, scoring="sigmoid",
                         correction_bias=True, backend=backend, device=device())
    with torch.no_grad():
        layer.e_score_correction_bias.normal_(0, 0.1)
    x = torch.randn(2, 5, HIDDEN, device=device())
    with torch.no_grad():
        out = layer(x)
    x2 = x.reshape(-1, HIDDEN).double()
    w, ids = naive_fused_topk(x2 @ layer.gate.weight.double().T, 4, True, "sigmoid",
                              layer.e_score_correction_bias.double(), 4, 2)
    ref = naive_fused_moe(x2, layer.w1.double(), layer.w2.double(), w, ids)
    assert out.shape == x.shape
    torch.testing.assert_close(out.reshape(-1, HIDDEN).double(), ref, atol=2e-5, rtol=2e-5)
    assert {"gate.weight", "w1", "w2", "e_score_correction_bias"} == set(layer.state_dict())
    with pytest.raises(ValueError, match="x must end in hidden_size=40"):
        layer(torch.randn(3, 8))
    with pytest.raises(ValueError, match="activation must be one of"):
        moe.FusedMoE(4, 2, 8, 8, activation="relu")


def test_config_lookup_and_autotune_smoke(tmp_path, monkeypatch):
    """The autotuner writes the fastest of two configs; get_config then reads it back."""
    monkeypatch.setenv("FLASHKIT_MOE_CONFIG_DIR", str(tmp_path))
    assert tuning.get_config(4, 8, FFN, HIDDEN, 2, torch.device(device())) == \
        tuning.default_config(4, 8, 2)
    if device() == "cpu":
        pytest.importorskip("triton")
    cands = [CONFIG, dict(CONFIG, BLOCK_N=16, GROUP_M=1)]
    path = autotune_fused_moe(8, FFN, HIDDEN, 2, token_counts=(3,), dtype=torch.float32,
                                     device=device(), candidates=cands, reps=1, folder=tmp_path)
    table = json.loads(path.read_text())
    assert list(table) == ["3"] and table["3"] in cands
    assert path.name == f"E=8,N={FFN},K={HIDDEN},device={tuning.device_name(torch.device(device()))}.json"
    assert tuning.get_config(100, 8, FFN, HIDDEN, 2, torch.device(device())) == table["3"]
