"""FlashInfer's arguments beyond flashkit's own (ops/attention/compat.py): the implemented ones
against the float32 reference, the accepted ones leave the output bit-identical, the refused
ones raise naming the argument. Small shapes; "triton" runs the kernels (the interpreter on
CPU), "torch" the host path."""
import math

import pytest
import torch

from flashkit.ops import attention as A
from tests.helpers import device
from tests.ops.attention.attn_common import check_attn, make_paged, ref_paged, ref_single

F16 = torch.float16
BACKENDS = ["torch", "triton"]


def _qkv(qo, kv, hq=4, hk=2, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(qo, hq, d, generator=g).to(F16).to(device())
    k, v = (torch.randn(kv, hk, d, generator=g).to(F16).to(device()) for _ in range(2))
    return q, k, v


def _decode_wrapper(backend, kv_lens=(37, 5, 70), **plan):
    cache, indptr, indices, last = make_paged(list(kv_lens), 16, 2, 64, F16, "NHD", seed=1)
    w = A.BatchDecodeWithPagedKVCacheWrapper(torch.empty(1 << 20, dtype=torch.uint8,
                                                         device=device()), backend=backend)
    w.plan(indptr, indices, last, 4, 2, 64, 16, **plan)
    q = torch.randn(len(kv_lens), 4, 64, generator=torch.Generator().manual_seed(2)).to(F16)
    return w, q.to(device()), (cache, indptr, indices, last)


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_decode_q_scale_and_positional_order(backend):
    """q_scale multiplies the logits (with k_scale); arguments bind at FlashInfer's positions:
    5th pos_encoding_mode, 7th q_scale, 10th window_left."""
    q, k, v = _qkv(1, 50)
    o, lse = A.single_decode_with_kv_cache(q[0], k, v, "NHD", "NONE", False, 0.5, 2.0, None, 20,
                                           return_lse=True, backend=backend)
    ref_o, ref_lse = ref_single(q, k, v, window_left=20, sm_scale=1.0 / math.sqrt(64))
    check_attn(o[None], None, ref_o, ref_lse, F16)  # 0.5 * 2.0 cancel
    o2, lse2 = A.single_decode_with_kv_cache(q[0], k, v, q_scale=0.25, window_left=20,
                                             return_lse=True, backend=backend)
    ref_o2, ref_lse2 = ref_single(q, k, v, window_left=20, sm_scale=0.25 / math.sqrt(64))
    check_attn(o2[None], lse2[None], ref_o2, ref_lse2, F16)


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_prefill_scales_and_o_dtype(backend):
    q, k, v = _qkv(6, 20)
    o, lse = A.single_prefill_with_kv_cache(q, k, v, o_dtype=torch.float32, causal=True,
                                            k_scale=2.0, v_scale=0.5, return_lse=True,
                                            backend=backend)
    assert o.dtype == torch.float32
    ref_o, ref_lse = ref_single(q, k, v, causal=True, sm_scale=2.0 / math.sqrt(64))
    check_attn(o, lse, ref_o * 0.5, ref_lse, F16)


@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_run_window_left_q_scale_lse(backend):
    """run(window_left=) overrides the plan for that run only; run_return_lse; o_data_type."""
    w, q, (cache, indptr, indices, last) = _decode_wrapper(backend, o_data_type=torch.float32)
    o, lse = w.run_return_lse(q, cache, window_left=9, q_scale=0.5)
    assert o.dtype == torch.float32
    qo = torch.arange(q.shape[0] + 1, dtype=torch.int32)
    ref_o, ref_lse = ref_paged(q, qo, cache, indptr, indices, last, "NHD", window_left=9,
                               sm_scale=0.5 / 8)
    check_attn(o, lse, ref_o, ref_lse, F16)
    full_o, full_lse = ref_paged(q, qo, cache, indptr, indices, last, "NHD")
    check_attn(*w.run(q, cache, return_lse=True), full_o, full_lse, F16)


def test_decode_forward_restates_the_plan():
    """FlashInfer's deprecated forward(): its sm_scale/window_left stay for later runs."""
    w, q, (cache, indptr, indices, last) = _decode_wrapper("torch")
    qo = torch.arange(q.shape[0] + 1, dtype=torch.int32)
    ref = ref_paged(q, qo, cache, indptr, indices, last, "NHD", window_left=4, sm_scale=0.3)
    check_attn(w.forward(q, cache, "NONE", None, None, None, 4, None, 0.3), None, *ref, F16)
    check_attn(*w.run(q, cache, return_lse=True), *ref, F16)
    with pytest.raises(ValueError, match="pos_encoding_mode"):
        w.forward(q, cache, "ROPE_LLAMA")


@pytest.mark.parametrize("backend", BACKENDS)
def test_ragged_lse_base_and_uniform_q_len(backend):
    q, k, v = _qkv(8, 24)
    qo = torch.tensor([0, 4, 8], dtype=torch.int32)
    kv = torch.tensor([0, 10, 24], dtype=torch.int32)
    w = A.BatchPrefillWithRaggedKVCacheWrapper(torch.empty(16, dtype=torch.uint8,
                                                           device=device()), backend=backend)
    w.plan(qo, kv, 4, 2, 64, causal=True, uniform_q_len=4, qo_indptr_cpu=qo, kv_indptr_cpu=kv)
    _, lse2 = w.run(q, k, v, return_lse=True)
    _, lse_ln = w.run(q, k, v, return_lse=True, lse_base="ln")
    torch.testing.assert_close(lse_ln, lse2 * math.log(2.0))
    with pytest.raises(ValueError, match="uniform_q_len=3"):
        w.plan(qo, kv, 4, 2, 64, uniform_q_len=3)
    with pytest.raises(ValueError, match="qo_indptr_cpu"):
        w.plan(qo, kv, 4, 2, 64, qo_indptr_cpu=kv)


def test_accepted_arguments_change_nothing():
    """use_tensor_cores, enable_pdl, split hints, use_fp16_qk_reduction, rope_* without RoPE,
    FlashInfer's backend names: the same bits as without them."""
    q, k, v = _qkv(5, 30)
    base = A.single_prefill_with_kv_cache(q, k, v, causal=True, backend="torch")
    same = A.single_prefill_with_kv_cache(q, k, v, causal=True, use_fp16_qk_reduction=True,
                                          rope_scale=2.0, rope_theta=5e5, backend="fa2")
    assert torch.equal(base, same)
    d0 = A.single_decode_with_kv_cache(q[0], k, v, backend="torch")
    assert torch.equal(d0, A.single_decode_with_kv_cache(q[0], k, v, use_tensor_cores=True,
                                                         backend="torch"))
    w, qd, (cache, *_) = _decode_wrapper("torch")
    ref = w.run(qd, cache)
    w.plan(*_[:3], 4, 2, 64, 16, fixed_split_size=64, disable_split_kv=True, is_causal=True,
           q_len_per_req=1, window_right=0)
    assert torch.equal(ref, w.run(qd, cache, enable_pdl=True, q_len_per_req=1))


def test_data_type_and_dtype_validation():
    w, _, (cache, indptr, indices, last) = _decode_wrapper("torch")
    w.plan(indptr, indices, last, 4, 2, 64, 16, q_data_type=None, data_type=torch.bfloat16)
    assert (w._plan.q_dtype, w._plan.kv_dtype) == (torch.bfloat16, torch.bfloat16)
    for kw, name in ((dict(data_type=torch.int8), "kv_data_type"),
                     (dict(o_data_type=torch.int8), "o_data_type"),
                     (dict(q_data_type="float64"), "q_data_type")):
        with pytest.raises(ValueError, match=name):
            w.plan(indptr, indices, last, 4, 2, 64, 16, **kw)
    with pytest.raises(TypeError, match="use_tensor_cores"):
        A.BatchDecodeWithPagedKVCacheWrapper(torch.empty(16, dtype=torch.uint8), "NHD", False,
                                             "yes")
    with pytest.raises(ValueError, match="o_dtype"):
        A.single_prefill_with_kv_cache(*_qkv(2, 4), o_dtype=torch.int32)


def test_refused_arguments_name_themselves():
    q, k, v = _qkv(2, 8)
    t = torch.zeros(4)
    cases = [
        (lambda: A.single_decode_with_kv_cache(q[0], k, v, pos_encoding_mode="ROPE_LLAMA"),
         "pos_encoding_mode"),
        (lambda: A.single_decode_with_kv_cache(q[0], k, v, rope_theta=-1.0), "rope_theta"),
        (lambda: A.single_prefill_with_kv_cache(q, k, v, scale_q=t), "scale_q"),
        (lambda: A.single_prefill_with_kv_cache(q, k, v, packed_custom_mask=t),
         "packed_custom_mask"),
        (lambda: A.BatchPrefillWithPagedKVCacheWrapper(torch.empty(16, dtype=torch.uint8),
                                                       jit_args=[1]), "jit_args"),
        (lambda: A.BatchPrefillWithPagedKVCacheWrapper(torch.empty(16, dtype=torch.uint8),
                                                       max_total_num_rows=8),
         "max_total_num_rows"),
    ]
    for fn, name in cases:
        with pytest.raises(ValueError, match=name):
            fn()
    w, qd, (cache, indptr, indices, last) = _decode_wrapper("torch")
    for kw, name in ((dict(sinks=t), "sinks"), (dict(q_len_per_req=2), "q_len_per_req"),
                     (dict(kv_cache_sf=t), "kv_cache_sf")):
        with pytest.raises(ValueError, match=name):
            w.run(qd, cache, **kw)
    with pytest.raises(TypeError, match="variant_args"):
        w.run(qd, cache, t, variant_args=(t,))
    for kw, name in ((dict(block_tables=t), "block_tables"), (dict(window_right=3), "window_right"),
                     (dict(fixed_split_size=0), "fixed_split_size")):
        with pytest.raises(ValueError, match=name):
            w.plan(indptr, indices, last, 4, 2, 64, 16, **kw)
    p = A.BatchPrefillWithPagedKVCacheWrapper(torch.empty(16, dtype=torch.uint8))
    qo = torch.tensor([0, 1, 2, 3], dtype=torch.int32)
    for kw, name in ((dict(head_dim_vo=128), "head_dim_vo"), (dict(prefix_len_ptr=t), "prefix_len"),
                     (dict(token_pos_in_items_len=4), "token_pos_in_items_len")):
        with pytest.raises(ValueError, match=name):
            p.plan(qo, indptr.cpu(), indices.cpu(), last.cpu(), 4, 2, 64, 16, **kw)
    p.plan(qo, indptr.cpu(), indices.cpu(), last.cpu(), 4, 2, 64, 16)
    for kw, name in ((dict(lse_layout="HN"), "lse_layout"), (dict(lse_base="e"), "lse_base"),
                     (dict(use_fp16_softmax=True), "use_fp16_softmax")):
        with pytest.raises(ValueError, match=name):
            p.run(qd, cache.cpu(), **kw)


def test_reset_workspace_buffer():
    w, q, (cache, *_) = _decode_wrapper("torch")
    ref = w.run(q, cache)
    ints = torch.empty(8, dtype=torch.uint8, device=device())
    with pytest.raises(ValueError, match="float_workspace_buffer holds 8 bytes"):
        w.reset_workspace_buffer(torch.empty(8, dtype=torch.uint8, device=device()), ints)
    w.reset_workspace_buffer(torch.empty(1 << 20, dtype=torch.uint8, device=device()), ints)
    assert torch.equal(ref, w.run(q, cache))
    c = A.MultiLevelCascadeAttentionWrapper(2, torch.empty(16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="int_workspace_buffers"):
        c.reset_workspace_buffer(torch.empty(16, dtype=torch.uint8), [ints])


def test_get_batch_indices_positions_out_buffers():
    indptr = torch.tensor([0, 2, 5], dtype=torch.int32, device=device())
    seq = torch.tensor([4, 3], dtype=torch.int32, device=device())
    bi, pos = (torch.full((5,), -1, dtype=torch.int32, device=device()) for _ in range(2))
    got = A.get_batch_indices_positions(indptr, seq, 5, bi, pos)
    assert got[0] is bi and got[1] is pos
    assert bi.tolist() == [0, 0, 1, 1, 1] and pos.tolist() == [2, 3, 0, 1, 2]
    with pytest.raises(ValueError, match="positions"):
        A.get_batch_indices_positions(indptr, seq, 5, None, torch.zeros(4, dtype=torch.int32))
