"""flashkit::attention_run, the one custom op every decode/prefill run launches through, and
launch(), which calls it for a plan."""
from __future__ import annotations

import torch

from .._common.custom_op import custom_op, eager_or_op
from .plan import AttentionPlan
from .torch_run import torch_run
from .variant_registry import lookup_variant, variant_key


def _attention_run_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                        lse: torch.Tensor, workspace: torch.Tensor, items: torch.Tensor,
                        qo_indptr: torch.Tensor, kv_indptr: torch.Tensor,
                        kv_indices: torch.Tensor, kv_lens: torch.Tensor,
                        merge_indptr: torch.Tensor, mask: torch.Tensor | None,
                        mask_indptr: torch.Tensor | None, variant_args: list[torch.Tensor],
                        num_items: torch.Tensor | None, n_programs: int, page_size: int,
                        decode: bool, paged: bool, causal: bool, window_left: int,
                        soft_cap: float, sm_scale: float, k_scale: float, v_scale: float,
                        variant: str, backend: str) -> None:
    var = lookup_variant(variant)
    if backend == "torch":
        torch_run(q, k, v, out, lse, qo_indptr, kv_indptr, kv_indices, kv_lens, mask,
                   mask_indptr, variant_args, paged, causal, window_left, soft_cap, sm_scale, var,
                   k_scale, v_scale)
        return
    # The kernels take the dequantization folded in: k_scale into the logits' scale (as
    # FlashInfer does), v_scale into the merge (linear in v).
    sm_scale = sm_scale * k_scale
    from .attention_triton import attention_fwd_triton, merge_varlen_triton

    if backend == "cuda":
        if not decode or var is not None or num_items is not None:
            raise ValueError("backend='cuda' runs decode without a variant or CUDA-graph plan only")
        from .decode_cuda import batch_decode_cuda

        heads, dim = q.shape[1], q.shape[2]
        n_pad = items.shape[1]
        ws = workspace.view(torch.float32)
        part_v = ws[:n_pad * heads * dim].view(n_pad, heads, dim)
        part_s = ws[n_pad * heads * dim:n_pad * heads * (dim + 1)].view(n_pad, heads)
        batch_decode_cuda(q, k, v, part_v, part_s, items, n_pad, n_programs, qo_indptr,
                          kv_indptr, kv_indices, kv_lens, num_kv_heads=k.shape[2],
                          page_size=page_size, paged=paged, window_left=window_left,
                          soft_cap=soft_cap, sm_scale=sm_scale)
        merge_varlen_triton(part_v, part_s, merge_indptr, out, lse, v_scale)
        return

    kw = dict(num_kv_heads=k.shape[2], page_size=page_size, paged=paged, causal=causal,
              window_left=window_left, soft_cap=soft_cap, sm_scale=sm_scale, decode=decode,
              variant=var, variant_args=tuple(variant_args), num_items=num_items)
    n_pad = items.shape[1]
    if not decode:
        if v_scale != 1.0:
            raise ValueError("v_scale is decode only")
        attention_fwd_triton(q, k, v, out, lse, items, n_pad, n_programs, qo_indptr, kv_indptr,
                             kv_indices, kv_lens, mask, mask_indptr, **kw)
        return
    heads, dim = q.shape[1], q.shape[2]
    ws = workspace.view(torch.float32)
    part_v = ws[:n_pad * heads * dim].view(n_pad, heads, dim)
    part_s = ws[n_pad * heads * dim:n_pad * heads * (dim + 1)].view(n_pad, heads)
    attention_fwd_triton(q, k, v, part_v, part_s, items, n_pad, n_programs, qo_indptr,
                         kv_indptr, kv_indices, kv_lens, None, None, **kw)
    merge_varlen_triton(part_v, part_s, merge_indptr, out, lse, v_scale)


attention_run_op = custom_op("attention_run", _attention_run_impl,
                             mutates_args=("out", "lse", "workspace"))


@attention_run_op.register_fake
def _(q, k, v, out, lse, workspace, items, qo_indptr, kv_indptr, kv_indices, kv_lens,
      merge_indptr, mask, mask_indptr, variant_args, num_items, n_programs, page_size, decode,
      paged, causal, window_left, soft_cap, sm_scale, k_scale, v_scale, variant, backend):
    return None


def launch(plan: AttentionPlan, q, k, v, out, lse, workspace, backend: str, variant_args=(), *,
           k_scale: float = 1.0, v_scale: float = 1.0):
    """Run ``plan`` through the custom op (the implementation itself in eager mode).
    ``k_scale``/``v_scale``: the KV cache's dequantization scales (fp8; decode only)."""
    if plan.variant is not None:
        variant_args = plan.variant.check_run(backend, variant_args, q.device, dict(
            num_qo_heads=plan.num_qo_heads, num_kv_heads=plan.num_kv_heads,
            head_dim=plan.head_dim))
    elif len(tuple(variant_args)):
        raise ValueError(f"variant_args given ({len(tuple(variant_args))}) but the plan has no "
                         f"variant")
    fn = eager_or_op(attention_run_op, _attention_run_impl)
    fn(q, k, v, out, lse, workspace, plan.items, plan.qo_indptr, plan.kv_indptr,
       plan.kv_indices, plan.kv_lens, plan.merge_indptr, plan.mask, plan.mask_indptr,
       list(variant_args), plan.num_items, plan.n_programs, plan.page_size, plan.decode,
       plan.paged, plan.causal, plan.window_left, plan.soft_cap, plan.sm_scale, float(k_scale),
       float(v_scale), variant_key(plan.variant), backend)
