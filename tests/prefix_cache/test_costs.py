"""The cost model against numbers worked out by hand for Marconi's 7B hybrid."""
import pytest

from flashkit.prefix_cache import HybridModelConfig


def test_default_bytes_by_hand():
    c = HybridModelConfig()
    assert c.kv_bytes_per_token == 2 * 4 * 4096 * 2 == 65_536
    assert c.ssm_state_bytes == 24 * 8192 * 128 * 2 == 50_331_648
    assert c.conv_state_bytes == 24 * (8192 + 2 * 128) * 3 * 2 == 1_216_512
    assert c.state_bytes == 51_548_160  # ~787 tokens of KV per checkpoint


def test_default_flops_by_hand():
    c = HybridModelConfig()
    # L = 1000: attention 4 x (8*1000*4096^2 + 4*1000^2*4096) = 602_406_912_000
    #           MLP 28 x 16*1000*4096^2 = 7_516_192_768_000
    #           Mamba 24 x (12*1000*4096^2 + 16*1000*4096*128 + 10*1000*4096) = 5_034_147_840_000
    assert c.prefill_flops(1000) == 13_152_747_520_000
    assert c.prefill_flops(0) == 0
    assert c.flops_between(1000, 1000) == 0


def test_flops_between_is_quadratic_in_attention_only():
    c = HybridModelConfig(n_ssm=0, n_mlp=0, n_attn=1, d_model=2, d_state=1)
    # 8*L*4 + 4*L^2*2: L=3 -> 96 + 72; L=1 -> 32 + 8
    assert c.prefill_flops(3) == 168
    assert c.flops_between(1, 3) == 168 - 40


def test_gqa_kv_dim_and_small_config():
    c = HybridModelConfig(n_ssm=2, n_attn=1, n_mlp=3, d_model=64, d_state=16, dtype_bytes=4,
                          expand=2, d_conv=4, n_groups=1, kv_dim=32)
    assert c.kv_bytes_per_token == 2 * 1 * 32 * 4
    assert c.ssm_state_bytes == 2 * 128 * 16 * 4
    assert c.conv_state_bytes == 2 * (128 + 32) * 3 * 4


@pytest.mark.parametrize("field", ["n_ssm", "d_model", "dtype_bytes"])
def test_bad_config_names_the_field(field):
    with pytest.raises(ValueError, match=field):
        HybridModelConfig(**{field: -1})
