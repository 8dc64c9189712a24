"""The torch path of flashkit::attention_run: each request through the reference attention."""
from __future__ import annotations

import torch

from . import reference


def torch_run(q, k, v, out, lse, qo_indptr, kv_indptr, kv_indices, kv_lens, mask, mask_indptr,
               variant_args, paged, causal, window_left, soft_cap, sm_scale, variant, k_scale,
               v_scale):
    """Each request of a plan through reference.naive_single_attention, into out/lse."""
    num_kv_heads = k.shape[2]
    qo = qo_indptr.tolist()
    ptr, idx, lens = kv_indptr.tolist(), kv_indices.tolist(), kv_lens.tolist()
    mptr = mask_indptr.tolist() if mask is not None else None
    logits_fn = None
    if variant is not None and variant.torch_fn is not None:
        def logits_fn(lg, keep, qp, kp, h):
            return variant.torch_fn(lg, keep, qp, kp, h, *variant_args)
    for i in range(len(qo) - 1):
        if paged:
            pages = idx[ptr[i]:ptr[i + 1]]
            kk = k[pages].flatten(0, 1)[:lens[i]]
            vv = v[pages].flatten(0, 1)[:lens[i]]
        else:
            kk = k[0, ptr[i]:ptr[i] + lens[i]]
            vv = v[0, ptr[i]:ptr[i] + lens[i]]
        qo_len = qo[i + 1] - qo[i]
        m = None
        if mask is not None:
            m = mask[mptr[i]:mptr[i] + qo_len * lens[i]].view(qo_len, lens[i])
        o_i, lse_i = reference.naive_single_attention(
            q[qo[i]:qo[i + 1]], kk.reshape(-1, num_kv_heads, k.shape[-1]),
            vv.reshape(-1, num_kv_heads, v.shape[-1]), causal=causal, custom_mask=m,
            window_left=window_left, logits_soft_cap=soft_cap or None, sm_scale=sm_scale,
            logits_fn=_wrap_logits_fn(logits_fn),
            k_scale=k_scale if k_scale != 1.0 else None, v_scale=v_scale if v_scale != 1.0 else None)
        out[qo[i]:qo[i + 1]] = o_i
        lse[qo[i]:qo[i + 1]] = lse_i
    # Rows past the planned ones (a CUDA-graph plan run with padded q): empty, as the kernels.
    out[qo[-1]:] = 0
    lse[qo[-1]:] = float("-inf")


def _wrap_logits_fn(fn):
    if fn is None:
        return None

    def wrapped(logits, q_pos, k_pos, heads):
        keep = torch.ones(logits.shape, dtype=torch.bool, device=logits.device)
        return fn(logits, keep, q_pos, k_pos, heads)
    return wrapped
