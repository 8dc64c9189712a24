"""The hooks' contracts against the installed transformers and kernels: a release that renames
or reorders what flashkit plugs into fails here, by name."""
import inspect
import warnings

import pytest

from .hf_common import fk_hf, transformers

kernels = pytest.importorskip("kernels")

P = inspect.Parameter


def _params(fn):
    return [(p.name, p.kind) for p in inspect.signature(fn).parameters.values()]


def test_attention_hook_contract():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from flashkit.integrations.transformers.attention import attention_forward

    # transformers calls fn(module, query, key, value, attention_mask, dropout=, scaling=, **kw)
    want = ["module", "query", "key", "value", "attention_mask", "dropout", "scaling",
            "is_causal"]
    assert [n for n, _ in _params(sdpa_attention_forward)][:8] == want
    assert [n for n, _ in _params(attention_forward)][:8] == want
    assert _params(attention_forward)[-1][1] == P.VAR_KEYWORD


def test_mask_hook_contract():
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    from flashkit.integrations.transformers.attention import padding_mask

    want = ["batch_size", "q_length", "kv_length", "q_offset", "kv_offset", "mask_function",
            "attention_mask"]
    assert [n for n, _ in _params(flash_attention_mask)][:7] == want
    assert [n for n, _ in _params(padding_mask)][:7] == want
    assert "flash_attention_2" in AttentionMaskInterface._global_mapping


def test_experts_hook_contract():
    from transformers.integrations.moe import (ALL_EXPERTS_FUNCTIONS, _default_apply_gate,
                                               batched_mm_experts_forward)

    from flashkit.integrations.transformers.experts import experts_forward

    want = ["self", "hidden_states", "top_k_index", "top_k_weights"]
    assert [n for n, _ in _params(batched_mm_experts_forward)] == want
    assert [n for n, _ in _params(experts_forward)] == want
    assert callable(_default_apply_gate) and "batched_mm" in ALL_EXPERTS_FUNCTIONS
    experts = transformers.models.mixtral.modeling_mixtral.MixtralExperts
    cfg = transformers.MixtralConfig(hidden_size=8, intermediate_size=4, num_local_experts=2)
    e = experts(cfg)
    assert tuple(e.gate_up_proj.shape) == (2, 8, 8) and tuple(e.down_proj.shape) == (2, 8, 4)
    assert (e.is_transposed, e.is_concatenated, e.has_gate, e.has_bias) == (False, True, True,
                                                                           False)


@pytest.mark.parametrize("module", ["mamba2", "bamba", "falcon_h1", "nemotron_h"])
def test_ssm_functions_match_each_models_fallback(module):
    """kernelize accepts a replacement whose forward has the original's parameter count and
    kinds; each model's torch fallback for a name must agree with flashkit's function."""
    import importlib

    from flashkit.integrations.transformers.mamba import FUNCTIONS, _layer

    mod = importlib.import_module(f"transformers.models.{module}.modeling_{module}")
    found = {}
    for obj in vars(mod).values():
        name = getattr(type(obj), "kernel_layer_name", None)
        if name in FUNCTIONS:
            found[name] = obj
    assert {"causal_conv1d_fn", "causal_conv1d_update"} <= set(found), module
    for name, obj in found.items():
        theirs = [k for _, k in _params(type(obj).forward)]
        ours = [k for _, k in _params(_layer(FUNCTIONS[name]).forward)]
        assert ours == theirs, f"{module}.{name}: {theirs} vs flashkit's {ours}"


def test_kernels_api_contract():
    assert callable(kernels.register_kernel_mapping) and callable(kernels.kernelize)
    assert callable(kernels.use_kernel_mapping) and hasattr(kernels, "Mode")
    assert transformers.utils.import_utils.is_kernels_available(), (
        "transformers disables its kernel-hub hooks for this kernels version: pin a kernels "
        "release inside transformers' KERNELS_MIN/MAX_VERSION")
    from flashkit.integrations.transformers.mamba import FlashkitFuncRepository

    import torch
    from kernels.layer.layer import _validate_layer

    layer = FlashkitFuncRepository("causal_conv1d_update").load()

    class Original(torch.nn.Module):
        def forward(self, hidden_states, conv_state, weight, bias=None, activation=None):
            return hidden_states

    _validate_layer(check_cls=Original, cls=layer, repo=FlashkitFuncRepository(
        "causal_conv1d_update"))


def _tiny_llama(**kw):
    from .hf_common import SMALL

    return transformers.AutoModelForCausalLM.from_config(transformers.LlamaConfig(**SMALL), **kw)


def test_a_name_with_flash_is_loaded_as_a_hub_kernel(monkeypatch):
    """Why NAME is "fkit": with "flash" in the name, from_config asks the kernel hub for the
    functions of flash_attn (modeling_utils._check_and_adjust_attn_implementation ->
    lazy_import_flash_attention), even for a name registered with AttentionInterface."""
    from transformers import modeling_flash_attention_utils as mfu
    from transformers.utils.generic import is_flash_attention_requested

    from flashkit.integrations.transformers.attention import attention_forward

    assert is_flash_attention_requested(requested_attention_implementation="flashkit")
    monkeypatch.setitem(transformers.AttentionInterface._global_mapping, "flashkit",
                        attention_forward)
    # lazy_import_flash_attention records the name before loading; put it back afterwards
    monkeypatch.setattr(mfu, "_loaded_implementation", mfu._loaded_implementation)
    try:
        _tiny_llama(attn_implementation="flashkit")
    except ValueError as err:
        assert "Could not find the currently requested flash attention" in str(err)
    else:
        pytest.fail(f"transformers {transformers.__version__} accepts a registered attention "
                    "implementation named 'flashkit': NAME can become 'flashkit' "
                    "(flashkit/integrations/transformers/__init__.py, docs/integrations.md)")


@pytest.mark.parametrize("impl", ["fkit", "paged|fkit"])
def test_continuous_batching_refuses_a_registered_implementation(impl):
    """generate_batch serves only 'paged|eager', 'sdpa' and "flash" names
    (ContinuousBatchingManager.switch_to_cb_friendly_attn); "paged|<name>" is stripped to
    <name> when the model is built. When a release lets a registered implementation through,
    this fails: serve PagedAttentionCache then (docs/integrations.md, Continuous batching)."""
    fk_hf.register()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the "paged|" prefix is deprecated
        model = _tiny_llama(attn_implementation=impl).eval()
    assert model.config._attn_implementation == fk_hf.NAME
    gen = transformers.GenerationConfig(max_new_tokens=2, do_sample=False, eos_token_id=-1)
    cb = transformers.ContinuousBatchingConfig(auto_switch_to_flash=False)
    try:
        model.generate_batch([[1, 2, 3]], generation_config=gen, continuous_batching_config=cb,
                             warmup=False)
    except ValueError as err:
        assert f"Implementation {fk_hf.NAME} is not supported for continuous batching" in str(err)
    else:
        pytest.fail(f"transformers {transformers.__version__} runs continuous batching with the "
                    f"registered {impl!r}: flashkit's hook must now serve PagedAttentionCache")
    assert model.config._attn_implementation == fk_hf.NAME
