"""The measured prefill-latency table: its sum over layers, its layers' arithmetic, its checks,
the simulator's use of it beyond the last point, the loader and `flashkit cache-latency`."""
import json

import pytest
import torch
import torch.nn.functional as F

from flashkit.prefix_cache import HybridModelConfig
from flashkit.prefix_cache.latency import _layers, latency_tokens, measure_latency_table
from flashkit.prefix_cache.simulator import load_latency_table, simulate

from .test_sim import parser

TINY = HybridModelConfig(n_ssm=2, n_attn=1, n_mlp=3, d_model=256, d_state=16)


def test_table_is_the_layer_counts_times_the_measured_layers(tmp_path):
    t = measure_latency_table(TINY, [0, 16, 48], device="cpu", backend="torch", rep_ms=1)
    assert t["tokens"] == [0, 16, 48] and t["ms"][0] == 0.0
    counts = {"attention": 1, "ssm": 2, "mlp": 3}
    for i in (1, 2):
        assert all(t["per_layer_ms"][k][i] > 0 for k in counts)
        assert t["ms"][i] == pytest.approx(sum(c * t["per_layer_ms"][k][i]
                                               for k, c in counts.items()))
    assert t["source"].startswith("measured: flashkit kernels") and t["config"]["d_model"] == 256
    path = tmp_path / "t.json"
    path.write_text(json.dumps(t))
    assert load_latency_table(path)["ms"] == t["ms"]


@pytest.mark.parametrize("wdtype", [torch.float32, torch.bfloat16])
def test_layers_compute_what_the_flop_count_counts(wdtype):
    """Attention and MLP against plain torch on the same weights; the SSM layer finite and
    causal (its scan is tested against its oracle in tests/ops/ssm)."""
    layers, xdtype, w = _layers(TINY, "cpu", torch.bfloat16, "torch", wdtype)
    assert xdtype == wdtype
    x = torch.randn(40, 256).to(wdtype)
    q, k, v = (x @ w["w_qkv"]).to(torch.bfloat16).float().split([256, 256, 256], -1)
    ref = F.scaled_dot_product_attention(*(t.view(40, 2, 128).transpose(0, 1) for t in (q, k, v)),
                                         is_causal=True).transpose(0, 1).reshape(40, 256)
    ref = ref.to(torch.bfloat16).to(wdtype) @ w["w_o"]
    tol = 3e-2 if wdtype == torch.bfloat16 else 1e-2
    torch.testing.assert_close(layers["attention"](x).float(), ref.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(layers["mlp"](x), F.gelu(x @ w["w_1"]) @ w["w_2"])
    y = layers["ssm"](x)
    assert y.shape == (40, 256) and torch.isfinite(y.float()).all()
    x2 = x.clone()
    x2[30:] = 0  # a later token never changes an earlier output
    torch.testing.assert_close(layers["ssm"](x2)[:30], y[:30])


@pytest.mark.parametrize("kwargs, match", [
    ({"config": HybridModelConfig(d_model=200)}, "d_model"),
    ({"config": "7b"}, "config must be a HybridModelConfig"),
    ({"tokens": [16, 32]}, "tokens"),
    ({"tokens": [0, 32, 16]}, "tokens"),
    ({"tokens": [0, 16.0]}, "tokens"),
    ({"device": "tpu"}, "device"),
    ({"dtype": torch.float32}, "dtype"),
    ({"rep_ms": 0}, "rep_ms"),
])
def test_bad_arguments_name_themselves(kwargs, match):
    kwargs = {"config": TINY, "tokens": [0, 16], "device": "cpu", **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        measure_latency_table(**kwargs)
    with pytest.raises(ValueError, match="max_tokens"):
        latency_tokens(8)
    assert latency_tokens(100) == [0, 16, 32, 64]


def test_simulator_scales_by_flops_beyond_the_last_point():
    cfg = HybridModelConfig()
    req = {"input_tokens": torch.arange(64).numpy(), "output_tokens": torch.arange(2).numpy()}
    r = simulate([req], cfg, 0, "sglang", latency_table={"tokens": [0, 16], "ms": [0.0, 1.0]})
    assert r["ttft_p50_ms"] == pytest.approx(cfg.prefill_flops(64) / cfg.prefill_flops(16))
    r = simulate([req], cfg, 0, "sglang", latency_table={"tokens": [0, 128], "ms": [0.0, 2.0]})
    assert r["ttft_p50_ms"] == pytest.approx(1.0)  # inside: linear


@pytest.mark.parametrize("payload, match", [
    ({"tokens": [0, 16], "ms": [0, -1]}, "finite numbers"),
    ({"tokens": [0, "16"], "ms": [0, 1]}, "finite numbers"),
    ({"tokens": 16, "ms": [0, 1]}, "a latency table is"),
    ({"tokens": [0, 0], "ms": [0, 1]}, "strictly increasing"),
    ({"kind": "gpucheck-section", "extra": {}}, "holds no prefix_cache_latency"),
])
def test_loader_refuses_bad_tables(payload, match, tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match=match):
        load_latency_table(path)


def test_loader_reads_the_gpucheck_section_file(tmp_path):
    table = {"tokens": [0, 16], "ms": [0.0, 3.0], "source": "measured"}
    path = tmp_path / "06_misc.json"
    path.write_text(json.dumps({"kind": "gpucheck-section", "section": "misc",
                                "extra": {"prefix_cache_latency": table}}))
    assert load_latency_table(path) == table


@pytest.mark.parametrize("argv", [["--max-tokens", "8"], ["--rep-ms", "0"],
                                  ["--backend", "fast"], ["--out", "/no/such/dir/t.json"]])
def test_cli_refuses_bad_arguments(argv, capsys):
    base = ["cache-latency", "--out", "t.json"]
    with pytest.raises(SystemExit) as exc:
        parser().parse_args(base + argv)
    assert exc.value.code == 2 and "cache-latency" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_cli_refuses_cuda_without_a_gpu(tmp_path, capsys):
    args = parser().parse_args(["cache-latency", "--device", "cuda", "--out",
                                str(tmp_path / "t.json")])
    assert args.fn(args) == 2
    assert "no CUDA device" in capsys.readouterr().err and not (tmp_path / "t.json").exists()
