"""Triton launchers of paged/ragged attention (templates/attention/attention.py.j2).

One kernel serves decode and prefill: a work item is (request, query tokens, key range, output
row) and its rows are (token, q head) pairs of one KV head's GQA group. Decode items are the
split-KV chunks of ``plan_split_kv`` and write partial states that ``merge_varlen_triton``
combines; prefill items are query tiles over a request's whole KV and write the output directly.
"""
from __future__ import annotations


from flashkit import jit

from .._common.triton import dot_f32, pow2
from .._common.specs import memoized_spec
from .variants import AttentionVariant

_MERGE_MAX_BLOCK_ELEMS = 2048  # as merge_state_triton: 16 fp32 accumulators per thread at 4 warps


@memoized_spec
def attention_triton_spec(head_dim: int, variant: AttentionVariant | None = None) -> jit.KernelSpec:
    variant = variant or AttentionVariant.default()
    name = f"attention_triton_hd{head_dim}" + (f"_{variant.name}" if variant.name != "default" else "")
    return jit.KernelSpec.create(name, "triton", "attention/attention.py.j2", {
        "head_dim": head_dim, "block_d": pow2(head_dim), "variant_name": variant.name,
        "logits_snippet": jit.Snippet(variant.triton_lines), "variant_params": variant.params,
        "extra_params": variant.param_names})


def shipped_triton_specs() -> list[jit.KernelSpec]:
    return [attention_triton_spec(d) for d in (64, 128, 256)]


def block_sizes(group: int, head_dim: int, decode: bool,
                masked: bool = False) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps). Rows: a decode item has one token, so its rows are the GQA group,
    padded to 16 (the smallest tensor-core dot); a prefill tile packs 64 rows (at least one
    token's group). hd 256 halves BLOCK_N to keep the K/V tiles (2 x BLOCK_N x 256 x 2 B) within
    shared memory. Tiles over 64 x 128 elements and tiles with a custom mask (``masked``: its
    int64 addresses) take 8 warps: at 4 they spilled 352-416 bytes a thread on sm_80/sm_90
    (tests/jit/test_triton_targets.py). Not
    autotuned yet: these are starting points for the GPU benchmark."""
    block_m = max(16, pow2(group)) if decode else max(64, pow2(group))
    block_n = 32 if head_dim > 128 else 64
    warps = 8 if block_m * pow2(head_dim) > 64 * 128 or masked else 4
    return block_m, block_n, warps


def attention_fwd_triton(q, k, v, o, lse, items, n_items_pad, n_programs, qo_indptr, kv_indptr,
                         kv_indices, kv_lens, mask, mask_indptr, *, num_kv_heads, page_size, paged,
                         causal, window_left, soft_cap, sm_scale, decode, variant=None,
                         variant_args=(), num_items=None) -> None:
    """q [nnz_q, Hq, D]; k/v 4-D [pages, page_size, Hk, D]-like views given by their
    (page, token, head) strides (ragged: [tokens, Hk, D] viewed with a unit page), q's dtype or
    fp8 e4m3 (converted to q's dtype after the load; fold k_scale into ``sm_scale``); o/lse the
    rows that items' ``o_row`` index. ``items`` int32 [6, n_items_pad]. ``num_items`` (int32
    [1] on the device, CUDA-graph plans): programs at or past it exit at once, so the grid
    ``n_programs`` can stay fixed while re-plans change the real count."""
    if n_programs == 0 or num_kv_heads == 0:
        return
    head_dim = q.shape[-1]
    group = q.shape[1] // num_kv_heads
    kernel = jit.load(attention_triton_spec(head_dim, variant))._attention_fwd_kernel
    block_m, block_n, warps = block_sizes(group, head_dim, decode, mask is not None)
    s_k, s_v = k.stride(), v.stride()
    kernel[(n_programs, num_kv_heads)](
        q, k, v, o, lse, items, n_items_pad, num_items if num_items is not None else items,
        qo_indptr, kv_indptr, kv_indices, kv_lens,
        mask if mask is not None else kv_lens, mask_indptr if mask_indptr is not None else kv_lens,
        float(sm_scale), float(soft_cap or 1.0), int(window_left),
        q.stride(0), q.stride(1), s_k[0], s_k[1], s_k[2], s_v[0], s_v[1], s_v[2],
        o.stride(0), o.stride(1), lse.stride(0), lse.stride(1), *variant_args,
        GROUP=group, PAGE_SIZE=page_size, PAGED=paged, CAUSAL=causal and mask is None,
        HAS_WINDOW=window_left >= 0, SOFT_CAP=bool(soft_cap), HAS_MASK=mask is not None,
        BLOCK_M=block_m, BLOCK_N=block_n,
        DOT_F32=dot_f32(q.dtype),
        HAS_COUNT=num_items is not None, num_warps=warps,
    )


def merge_varlen_triton(v, s, merge_indptr, v_out, s_out, v_scale: float = 1.0) -> None:
    """v [n_items, H, D], s [n_items, H] partial states; request i's are rows
    merge_indptr[i]:merge_indptr[i + 1]; writes v_out [batch, H, D] (times ``v_scale``, fp8
    KV's value scale), s_out [batch, H]."""
    batch, heads, dim = v_out.shape
    if batch == 0 or heads == 0:
        return
    kernel = jit.load(attention_triton_spec(dim))._merge_varlen_kernel
    block_h = max(1, min(pow2(heads), _MERGE_MAX_BLOCK_ELEMS // pow2(dim)))
    kernel[(batch, -(-heads // block_h))](
        v, s, merge_indptr, v_out, s_out, heads, float(v_scale), v.stride(0), v.stride(1),
        s.stride(0), s.stride(1), v_out.stride(0), v_out.stride(1), s_out.stride(0),
        s_out.stride(1),
        BLOCK_H=block_h)
