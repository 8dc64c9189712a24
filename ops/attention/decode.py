"""Decode attention (one query token per request): single_decode_with_kv_cache and
BatchDecodeWithPagedKVCacheWrapper, FlashInfer's API and semantics.

plan() runs on the host: it checks the page table, cuts every request's KV into chunks with the
split-KV planner (ops/scheduler) and copies the work items to the device. run() checks shapes,
then launches the attention kernel (one program per (chunk, KV head), partial states into the
workspace) and the varlen merge; it never synchronizes with the device.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from .._common.checks import check_int, check_tensor
from .checks import (DECODE_KV_DTYPES, FP8_KV_DTYPES, KV_DTYPES, MAX_HEAD_DIM, attn_backend,
                     check_heads, check_layout, check_outputs, check_run_inputs, check_scalars,
                     check_single_kv)
from .compat import (as_backend, check_flag, check_one, check_rope, check_scale,
                     check_split_hints, out_dtype, plan_dtypes, refuse, variant_args_of)
from .decode_cuda import SUPPORTED_HEAD_DIMS as CUDA_HEAD_DIMS
from .decode_cuda import check_cuda_decode
from .forward import DecodeForward
from .graph import DecodeGraphBuffers, check_graph_buffer
from .index_tensors import int32
from .items import default_workers, split_kv_plan
from .kv_views import kv_views
from .page_table import PageTable
from .plan import AttentionPlan
from .run_op import launch
from .variants import AttentionVariant
from .wrapper import PlannedWrapper, refuse_run_extras

__all__ = ["single_decode_with_kv_cache", "BatchDecodeWithPagedKVCacheWrapper"]


def check_kv_scales(q_scale, k_scale, v_scale) -> tuple[float, float]:
    """(logits scale, output scale) from FlashInfer's q_scale/k_scale/v_scale (None: 1.0):
    q_scale and k_scale both multiply the logits, so they are folded into one."""
    return (check_scale("q_scale", q_scale) * check_scale("k_scale", k_scale),
            check_scale("v_scale", v_scale))


def check_fp8_device(kv_dtype, device: torch.device) -> None:
    """Triton has no e4m3 conversion before sm_89 (its sm_80 build of the kernel fails with
    "type fp8e4nv not supported in this architecture"): refuse early on such GPUs."""
    if kv_dtype not in FP8_KV_DTYPES or device.type != "cuda":
        return
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        raise ValueError(f"fp8 (e4m3) KV needs a GPU of compute capability 8.9 or newer "
                         f"(Ada, Hopper), got sm_{major}{minor}; use an fp16/bf16 cache there")


def check_cuda_plan(head_dim: int, variant, kv_dtype=None) -> None:
    """What backend='cuda' (the NVRTC decode kernel) cannot do, refused before any launch."""
    if kv_dtype in FP8_KV_DTYPES:
        raise ValueError("backend='cuda' has no fp8 KV (the NVRTC kernel is fp16/bf16); use "
                         "backend='triton'")
    if variant is not None:
        raise ValueError("backend='cuda' has no custom variants (they are Triton snippets); use "
                         "backend='triton'")
    if head_dim not in CUDA_HEAD_DIMS:
        raise ValueError(f"backend='cuda' supports head_dim {CUDA_HEAD_DIMS}, got {head_dim}; "
                         f"use backend='triton'")


def single_decode_with_kv_cache(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                kv_layout: str = "NHD", pos_encoding_mode: str = "NONE",
                                use_tensor_cores: bool = False, q_scale: float | None = None,
                                k_scale: float | None = None, v_scale: float | None = None,
                                window_left: int = -1, logits_soft_cap: float | None = None,
                                sm_scale: float | None = None, rope_scale: float | None = None,
                                rope_theta: float | None = None, return_lse: bool = False, *,
                                backend: str = "auto", variant: AttentionVariant | None = None,
                                variant_args=()):
    """Attention of one query token over one request's KV.

    Parameters
    ----------
    q : [num_qo_heads, head_dim], fp16/bf16
    k, v : [kv_len, num_kv_heads, head_dim] (NHD) or [num_kv_heads, kv_len, head_dim] (HND),
        q's dtype or torch.float8_e4m3fn; num_kv_heads divides num_qo_heads
    pos_encoding_mode : "NONE" only (apply RoPE before attention); rope_scale/rope_theta then
        have no effect (as in FlashInfer) and are checked only
    use_tensor_cores : accepted, no effect (flashkit picks its kernel itself)
    q_scale, k_scale, v_scale : the logits are multiplied by q_scale * k_scale, the output by
        v_scale (fp8: the real k is k * k_scale), as FlashInfer's
    window_left : keys at positions >= kv_len - 1 - window_left only (-1: all)
    logits_soft_cap : cap * tanh(logits / cap) when > 0
    sm_scale : default 1/sqrt(head_dim)
    return_lse : also return the base-2 LSE [num_qo_heads] float32
    backend : "auto" (Triton on CUDA, torch on CPU) | "triton" | "torch" | "cuda" (the NVRTC
        decode kernel, explicit only until it passes on a GPU: docs/status.md); FlashInfer's
        backend names ("fa2", "fa3", "trtllm-gen", ...) mean "auto"
    variant, variant_args : a custom logits transform/mask (flashkit.ops.attention.variants)

    Returns
    -------
    o : [num_qo_heads, head_dim], q's dtype (and lse when return_lse). An empty KV gives o = 0,
    lse = -inf.

    Example
    -------
    >>> o = flashkit.single_decode_with_kv_cache(q, k, v)   # q [32, 128], k/v [4096, 8, 128]
    """
    check_layout(kv_layout)
    check_rope(pos_encoding_mode, rope_scale, rope_theta)
    check_flag("use_tensor_cores", use_tensor_cores)
    check_tensor("q", q, dtypes=KV_DTYPES, ndim=2, last_dim_contiguous=True)
    heads, dim = q.shape
    kv_len, num_kv_heads = check_single_kv(q, k, v, kv_layout, FP8_KV_DTYPES)
    window_left, soft_cap, sm_scale = check_scalars(window_left, logits_soft_cap, sm_scale, dim)
    k_scale, v_scale = check_kv_scales(q_scale, k_scale, v_scale)
    backend = attn_backend(as_backend(backend), q.device, decode=True)
    k4, v4 = kv_views(k, v, kv_layout)
    if backend == "cuda":
        check_cuda_plan(dim, variant, k.dtype)
        check_cuda_decode(q[None], k4, v4)
    check_fp8_device(k.dtype, q.device)
    items, merge_indptr, n = split_kv_plan(np.array([kv_len], np.int64), q.device, num_kv_heads,
                                           1, None, 128)
    plan = AttentionPlan(
        decode=True, paged=False, batch=1, nnz_qo=1, num_qo_heads=heads,
        num_kv_heads=num_kv_heads, head_dim=dim, page_size=1, causal=False,
        window_left=window_left, soft_cap=soft_cap, sm_scale=sm_scale, q_dtype=q.dtype,
        kv_dtype=k.dtype, n_items=n, max_page=kv_len - 1, items=items,
        qo_indptr=int32([0, 1], q.device), kv_indptr=int32([0, 0], q.device),
        kv_indices=int32([0], q.device), kv_lens=int32([kv_len], q.device),
        merge_indptr=merge_indptr, variant=variant)
    out = torch.empty((1, heads, dim), dtype=q.dtype, device=q.device)
    lse = torch.empty((1, heads), dtype=torch.float32, device=q.device)
    workspace = torch.empty(max(plan.workspace_bytes(), 4), dtype=torch.uint8, device=q.device)
    launch(plan, q[None], k4, v4, out, lse, workspace, backend, variant_args, k_scale=k_scale,
           v_scale=v_scale)
    return (out[0], lse[0]) if return_lse else out[0]


class BatchDecodeWithPagedKVCacheWrapper(DecodeForward, PlannedWrapper):
    """Batched decode over a paged KV cache (FlashInfer's wrapper of the same name).

    Parameters
    ----------
    float_workspace_buffer : a uint8 (any dtype) device tensor for the split-KV partial states;
        plan() checks it is large enough (items x num_qo_heads x (head_dim + 1) x 4 bytes).
    kv_layout : "NHD" | "HND"
    use_cuda_graph : fix run()'s launches so that it can be captured in a CUDA graph once and
        replayed after any later plan(): plan() then copies the page table and its work items
        into fixed buffers (same data_ptrs every plan) and run() launches a fixed grid whose
        surplus programs exit early. Needs the three buffers below (FlashInfer's contract).
    paged_kv_indptr_buffer, paged_kv_indices_buffer, paged_kv_last_page_len_buffer : int32
        device buffers of [max_batch + 1], [max_num_pages] and [max_batch] (use_cuda_graph only):
        plan() copies its page table into them. Any batch up to max_batch can be planned (not
        only max_batch, as FlashInfer requires); run() then takes q with between batch and
        max_batch rows, rows past the planned batch giving o = 0 and lse = -inf, so capture
        run() with q/out of max_batch rows to replay any smaller batch.
    backend : "auto" | "triton" | "torch" | "cuda" (the NVRTC decode kernel, explicit only
        until it passes on a GPU, docs/status.md; no use_cuda_graph). The torch
        backend reads the page table on the host, so it runs a graph-mode plan but cannot be
        captured.

    Example
    -------
    >>> w = BatchDecodeWithPagedKVCacheWrapper(torch.empty(128 << 20, dtype=torch.uint8,
    ...                                        device="cuda"))
    >>> w.plan(indptr, indices, last_page_len, 32, 8, 128, 16, q_data_type=torch.bfloat16)
    >>> o = w.run(q, paged_kv_cache)   # q [batch, 32, 128] -> o [batch, 32, 128]
    """

    def __init__(self, float_workspace_buffer: torch.Tensor, kv_layout: str = "NHD",
                 use_cuda_graph: bool = False, use_tensor_cores: bool = False,
                 paged_kv_indptr_buffer: torch.Tensor | None = None,
                 paged_kv_indices_buffer: torch.Tensor | None = None,
                 paged_kv_last_page_len_buffer: torch.Tensor | None = None,
                 backend: str = "auto", jit_args=None, jit_kwargs=None):
        check_flag("use_tensor_cores", use_tensor_cores)
        self._init_wrapper(float_workspace_buffer, kv_layout, backend, decode=True,
                           jit_args=jit_args, jit_kwargs=jit_kwargs)
        bufs = (("paged_kv_indptr_buffer", paged_kv_indptr_buffer),
                ("paged_kv_indices_buffer", paged_kv_indices_buffer),
                ("paged_kv_last_page_len_buffer", paged_kv_last_page_len_buffer))
        if not use_cuda_graph:
            return
        if self._backend == "cuda":
            raise ValueError("use_cuda_graph=True needs backend 'triton' or 'auto': the CUDA "
                             "decode kernel has no fixed-grid launch yet")
        for name, buf in bufs:
            check_graph_buffer(name, buf, self.device)
        max_batch = paged_kv_last_page_len_buffer.numel()
        if paged_kv_indptr_buffer.numel() != max_batch + 1:
            raise ValueError(f"paged_kv_indptr_buffer must have max_batch + 1 = {max_batch + 1} "
                             f"entries (max_batch from paged_kv_last_page_len_buffer), got "
                             f"{paged_kv_indptr_buffer.numel()}")
        self._graph = DecodeGraphBuffers(paged_kv_indptr_buffer, paged_kv_indices_buffer,
                                         paged_kv_last_page_len_buffer)

    def plan(self, indptr: torch.Tensor, indices: torch.Tensor, last_page_len: torch.Tensor,
             num_qo_heads: int, num_kv_heads: int, head_dim: int, page_size: int,
             pos_encoding_mode: str = "NONE", window_left: int = -1,
             logits_soft_cap: float | None = None, q_data_type="float16", kv_data_type=None,
             o_data_type=None, data_type=None, sm_scale: float | None = None,
             rope_scale: float | None = None, rope_theta: float | None = None,
             non_blocking: bool = True, block_tables=None, seq_lens=None,
             fixed_split_size: int | None = None, disable_split_kv: bool = False,
             q_len_per_req: int = 1, *, window_right: int = 0, is_causal: bool | None = None,
             use_token_head_sf: bool = False, num_workers: int | None = None,
             min_chunk_tokens: int = 128, variant: AttentionVariant | None = None) -> None:
        """Plan a decode step on the host.

        indptr int32 [batch + 1], indices int32 [indptr[-1]], last_page_len int32 [batch] in
        [1, page_size] (0 allowed for a request without pages): request i's KV is pages
        ``indices[indptr[i]:indptr[i + 1]]``, the last holding last_page_len[i] tokens.
        ``num_workers``/``min_chunk_tokens`` (flashkit's) override the split-KV planner's
        defaults (two programs per SM, 128-token chunks at least). ``kv_data_type`` may be
        torch.float8_e4m3fn (q's dtype by default): run() then takes k_scale/v_scale.
        ``o_data_type``: the output's dtype (q's by default; fp16, bf16 or float32).
        FlashInfer's other arguments: docs/attention.md, "FlashInfer compatibility".

        With use_cuda_graph=True the plan is copied into the wrapper's fixed buffers; a batch
        larger than max_batch or more pages than paged_kv_indices_buffer holds raises
        ValueError. Work items are capped at the capacity fixed by the first plan (max_batch +
        2 x its num_workers): a plan that would split into more has its chunks lengthened.
        """
        check_heads(num_qo_heads, num_kv_heads)
        head_dim = check_int("head_dim", head_dim, 1, MAX_HEAD_DIM)
        page_size = check_int("page_size", page_size, 1)
        check_rope(pos_encoding_mode, rope_scale, rope_theta)
        check_split_hints(fixed_split_size, disable_split_kv)
        check_one("q_len_per_req", q_len_per_req, 1)
        check_one("window_right", window_right, 0)
        if is_causal is not None:  # one query per request: causal or not, the same keys
            check_flag("is_causal", is_causal)
        refuse("the page table is indptr/indices/last_page_len; no NVFP4 scale factors",
               block_tables=block_tables, seq_lens=seq_lens, use_token_head_sf=use_token_head_sf)
        q_dtype, kv_dtype = plan_dtypes(q_data_type, kv_data_type, data_type, DECODE_KV_DTYPES)
        o_dtype = out_dtype("o_data_type", o_data_type, q_dtype)
        window_left, soft_cap, sm_scale = check_scalars(window_left, logits_soft_cap, sm_scale,
                                                        head_dim)
        if num_workers is not None:
            check_int("num_workers", num_workers, 1)
        check_int("min_chunk_tokens", min_chunk_tokens, 1)
        if variant is not None and not isinstance(variant, AttentionVariant):
            raise ValueError(f"variant must be an AttentionVariant, got {type(variant).__name__}")
        if self._backend == "cuda":
            check_cuda_plan(head_dim, variant, kv_dtype)
        check_fp8_device(kv_dtype, self.device)
        table = PageTable.check(indptr, indices, last_page_len, page_size)
        kv_lens, max_page = table.kv_lens, table.max_page
        dev = self.device
        batch = kv_lens.size
        common = dict(
            decode=True, paged=True, batch=batch, nnz_qo=batch, num_qo_heads=num_qo_heads,
            num_kv_heads=num_kv_heads, head_dim=head_dim, page_size=page_size, causal=False,
            window_left=window_left, soft_cap=soft_cap, sm_scale=sm_scale, q_dtype=q_dtype,
            kv_dtype=kv_dtype, max_page=max_page, variant=variant, o_dtype=o_dtype)
        if self._graph is not None:
            plan = self._plan_graph(table, num_kv_heads, page_size, num_workers,
                                    min_chunk_tokens, non_blocking, common)
        else:
            items, merge_indptr, n = split_kv_plan(kv_lens, dev, num_kv_heads, page_size,
                                                   num_workers, min_chunk_tokens)
            plan = AttentionPlan(
                **common, n_items=n, items=items, qo_indptr=int32(np.arange(batch + 1), dev),
                **table.copies(dev), kv_lens=int32(kv_lens, dev),
                merge_indptr=merge_indptr)
        need = plan.workspace_bytes()
        have = self._workspace.numel() * self._workspace.element_size()
        if need > have:
            raise ValueError(f"float_workspace_buffer holds {have} bytes; this plan needs {need} "
                             f"({n} split-KV items x {num_qo_heads} heads x ({head_dim} + 1) x 4)")
        self._plan = plan

    begin_forward = plan

    def _plan_graph(self, table: PageTable, num_kv_heads, page_size, num_workers,
                    min_chunk_tokens, non_blocking, common) -> AttentionPlan:
        """A use_cuda_graph plan: every device tensor it names is one of the fixed buffers
        (or a view at its start), refilled in place."""
        g = self._graph
        workers = num_workers or default_workers(self.device, num_kv_heads)
        n = g.fill(table, workers, page_size, min_chunk_tokens, non_blocking)
        batch = table.batch
        return AttentionPlan(
            **common, n_items=n, items=g.items, qo_indptr=g.qo_indptr[:batch + 1],
            kv_indptr=g.indptr[:batch + 1], kv_indices=g.indices, kv_lens=g.kv_lens[:batch],
            merge_indptr=g.merge_indptr, num_items=g.num_items)

    def run(self, q: torch.Tensor, paged_kv_cache, *args, q_scale: float | None = None,
            k_scale: float | None = None, v_scale: float | None = None,
            out: torch.Tensor | None = None, lse: torch.Tensor | None = None,
            return_lse: bool = False, enable_pdl: bool | None = None,
            window_left: int | None = None, sinks=None, q_len_per_req: int | None = None,
            skip_softmax_threshold_scale_factor=None, kv_cache_sf=None, variant_args=()):
        """q [batch, num_qo_heads, head_dim] -> o [batch, num_qo_heads, head_dim] (and the
        base-2 LSE [batch, num_qo_heads] float32 when return_lse). ``paged_kv_cache``: one
        tensor [max_pages, 2, page_size, H, D] (NHD) / [max_pages, 2, H, page_size, D] (HND) or
        a (k_cache, v_cache) tuple of the 4-D halves, of the planned kv_data_type.
        ``k_scale``/``v_scale`` (FlashInfer's): the cache holds k / k_scale and v / v_scale
        (fp8 e4m3, or any dtype); k_scale multiplies the logits (before the soft cap), v_scale
        the output; q_scale multiplies the logits too. ``window_left`` overrides the planned
        window for this run; ``args`` (FlashInfer's JIT-variant arguments) are variant_args;
        ``enable_pdl`` is accepted with no effect. With use_cuda_graph=True, q may have up to
        max_batch rows (see the class)."""
        plan = self._plan
        if plan is None:
            raise RuntimeError("BatchDecodeWithPagedKVCacheWrapper.run() called before plan()")
        check_flag("enable_pdl", enable_pdl, allow_none=True)
        check_one("q_len_per_req", q_len_per_req, 1)
        refuse_run_extras(sinks=sinks, kv_cache_sf=kv_cache_sf,
                          skip_softmax_threshold_scale_factor=skip_softmax_threshold_scale_factor)
        variant_args = variant_args_of(args, variant_args)
        plan = self._run_plan(window_left)
        rows = plan.batch
        if self._graph is not None and plan.batch <= q.shape[0] <= self._graph.max_batch:
            rows = q.shape[0]
        k, v = check_run_inputs(plan, q, paged_kv_cache, self._kv_layout, self.device,
                                (rows, plan.num_qo_heads, plan.head_dim), DECODE_KV_DTYPES)
        k_scale, v_scale = check_kv_scales(q_scale, k_scale, v_scale)
        out, lse = check_outputs(plan, q, out, lse)
        if self._backend == "cuda":
            check_cuda_decode(q, k, v)
        launch(plan, q, k, v, out, lse, self._workspace, self._backend, variant_args,
               k_scale=k_scale, v_scale=v_scale)
        return (out, lse) if return_lse else out

    run_return_lse = functools.partialmethod(run, return_lse=True)
