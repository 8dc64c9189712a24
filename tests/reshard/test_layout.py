import pytest
import torch

from flashkit.reshard import (Layout, Rule, hybrid_rules, hybrid_state_dict, llama_rules,
                              moe_rules, plan_reshard, reshard, shard)

from .common import HEAD_DIM, assemble, llama_state

LAYOUTS = [Layout(1, 1, 4), Layout(4, 1), Layout(2, 2), Layout(1, 4), Layout(2, 1, 2),
           Layout(1, 2, 2)]


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_shard_round_trip(layout):
    sd = llama_state()
    rules = llama_rules(HEAD_DIM)
    shards = {r: shard(sd, rules, layout, r) for r in range(layout.world_size)}
    shapes = {n: t.shape for n, t in sd.items()}
    full = assemble(shards, rules, layout, shapes)
    for n in sd:
        assert torch.equal(full[n], sd[n]), n


def test_shard_slices_are_megatron():
    sd = llama_state(layers=4)
    rules = llama_rules(HEAD_DIM)
    lay = Layout(2, 2)
    s3 = shard(sd, rules, lay, 3)  # stage 1, tp index 1: layers 2 and 3, the LM head
    assert not any(".layers.0." in n or ".layers.1." in n for n in s3)
    assert "model.embed_tokens.weight" not in s3 and "lm_head.weight" in s3
    q = sd["model.layers.2.self_attn.q_proj.weight"]
    assert torch.equal(s3["model.layers.2.self_attn.q_proj.weight"], q[16:32])
    o = sd["model.layers.3.self_attn.o_proj.weight"]
    assert torch.equal(s3["model.layers.3.self_attn.o_proj.weight"], o[:, 16:32])
    assert torch.equal(s3["model.layers.3.input_layernorm.weight"],
                       sd["model.layers.3.input_layernorm.weight"])
    assert torch.equal(s3["lm_head.weight"], sd["lm_head.weight"][16:])


def test_uneven_stages_balance():
    sd = llama_state(layers=5)
    lay = Layout(1, 2)
    s0 = shard(sd, llama_rules(HEAD_DIM), lay, 0)
    assert {n.split(".")[2] for n in s0 if ".layers." in n} == {"0", "1", "2"}


def test_hybrid_rules_split_mamba_heads():
    from flashkit.prefix_cache.engine import TinyHybrid

    m = TinyHybrid(layers="sa", d_model=16, d_state=4, headdim=4, expand=2, n_heads=2)
    sd = hybrid_state_dict(m)
    rules = hybrid_rules(d_model=16, d_inner=m.di, d_state=4, headdim=4, attn_head_dim=m.adh)
    di, n, nh = m.di, 4, m.nh  # 32, 4, 8
    s1 = shard(sd, rules, Layout(2, 1), 1)
    w = sd["layers.0.mixer.in_proj"]
    z, x, B, C, dt = w.split([di, di, n, n, nh], 1)
    h = di // 2
    want = torch.cat([z[:, h:], x[:, h:], B, C, dt[:, nh // 2:]], 1)
    assert torch.equal(s1["layers.0.mixer.in_proj"], want)
    conv = sd["layers.0.mixer.conv_w"]
    assert torch.equal(s1["layers.0.mixer.conv_w"], torch.cat([conv[h:di], conv[di:]], 0))
    assert torch.equal(s1["layers.0.mixer.out"], sd["layers.0.mixer.out"][h:])
    qkv = sd["layers.1.attn.qkv"]
    d = 16
    assert torch.equal(s1["layers.1.attn.qkv"],
                       torch.cat([qkv[:, d // 2:d], qkv[:, d + d // 2:2 * d], qkv[:, -d // 2:]], 1))
    shapes = {k: v.shape for k, v in sd.items()}
    full = assemble({r: shard(sd, rules, Layout(2, 2), r) for r in range(4)}, rules,
                    Layout(2, 2), shapes)
    assert all(torch.equal(full[k], sd[k]) for k in sd)


def test_moe_rules_split_experts():
    sd = llama_state(layers=2)
    for i in range(2):
        for k in ("gate_proj", "up_proj", "down_proj"):
            del sd[f"model.layers.{i}.mlp.{k}.weight"]
        sd[f"model.layers.{i}.mlp.experts.gate_up_proj"] = torch.randn(4, 16, 12)
        sd[f"model.layers.{i}.mlp.experts.down_proj"] = torch.randn(4, 6, 16)
        sd[f"model.layers.{i}.mlp.gate.weight"] = torch.randn(4, 16)
    s = shard(sd, moe_rules(HEAD_DIM), Layout(4, 1), 2)
    assert torch.equal(s["model.layers.1.mlp.experts.gate_up_proj"],
                       sd["model.layers.1.mlp.experts.gate_up_proj"][2:3])
    assert torch.equal(s["model.layers.1.mlp.gate.weight"], sd["model.layers.1.mlp.gate.weight"])
    sd["model.layers.1.mlp.experts.down_proj"] = torch.randn(6, 6, 16)
    with pytest.raises(ValueError, match="experts.down_proj: tp=4 must divide the experts"):
        shard(sd, moe_rules(HEAD_DIM), Layout(4, 1), 0)


@pytest.mark.parametrize("layout,match", [
    (Layout(16, 1), "q_proj.weight: tp=16 must divide the heads"),
    (Layout(4, 1), "k_proj.weight: tp=4 must divide the kv heads"),
    (Layout(1, 5), "pp=5 does not fit the model's 4 layers"),
], ids=["heads", "kv_heads", "pp"])
def test_bad_layouts(layout, match):
    sd = llama_state(heads=8, kv_heads=2)
    with pytest.raises(ValueError, match=match):
        shard(sd, llama_rules(HEAD_DIM), layout, 0)


def test_bad_ffn_and_vocab():
    with pytest.raises(ValueError, match="gate_proj.weight: tp=4 must divide the ffn"):
        shard(llama_state(ffn=18), llama_rules(HEAD_DIM), Layout(4, 1), 0)
    with pytest.raises(ValueError, match="embed_tokens.weight: tp=4 must divide the vocab"):
        shard(llama_state(vocab=30), llama_rules(HEAD_DIM), Layout(4, 1), 0)


def test_bad_rules_and_names():
    sd = llama_state() | {"model.layers.0.extra.weight": torch.zeros(3)}
    with pytest.raises(ValueError, match="model.layers.0.extra.weight: no placement rule"):
        shard(sd, llama_rules(HEAD_DIM), Layout(2, 1), 0)
    with pytest.raises(ValueError, match="Rule.kind"):
        Rule("x", "diagonal")
    with pytest.raises(ValueError, match="Layout.tp"):
        Layout(0, 1)
    with pytest.raises(ValueError, match="head_dim"):
        llama_rules(0)
    with pytest.raises(ValueError, match="rank must be"):
        shard(llama_state(), llama_rules(HEAD_DIM), Layout(2, 1), 2)


def test_plan_world_size_mismatch():
    shapes = {n: t.shape for n, t in llama_state().items()}
    with pytest.raises(ValueError, match="world size differs"):
        plan_reshard(shapes, llama_rules(HEAD_DIM), Layout(4, 1), Layout(2, 1), itemsize=4)
    with pytest.raises(ValueError, match="itemsize"):
        plan_reshard(shapes, llama_rules(HEAD_DIM), Layout(4, 1), Layout(2, 2))


def test_reshard_validates_before_sending():
    # No process group exists: each of these must fail on validation, before any transfer.
    sd = llama_state()
    rules = llama_rules(HEAD_DIM)
    plan = plan_reshard(sd, rules, Layout(4, 1), Layout(1, 4))
    local = shard(sd, rules, Layout(4, 1), 1)
    missing = dict(local)
    del missing["model.layers.2.mlp.up_proj.weight"]
    with pytest.raises(ValueError, match=r"missing 'model.layers.2.mlp.up_proj.weight' \(expected "
                                         r"shape \(6, 16\)"):
        reshard(missing, plan, 1)
    bad = dict(local)
    bad["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(5, 16)
    with pytest.raises(ValueError, match=r"q_proj.weight'\] must have shape \(8, 16\)"):
        reshard(bad, plan, 1)
    with pytest.raises(ValueError, match="rank must be"):
        reshard(local, plan, 4)
    with pytest.raises(RuntimeError, match="initialized"):
        reshard(local, plan, 1)
