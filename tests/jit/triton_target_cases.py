"""Representative launches of every Triton kernel family, recorded under the interpreter and
compiled for sm_80 and sm_90: ``python tests/jit/triton_target_cases.py FAMILY`` prints one
JSON list of results (see flashkit.jit.triton_aot.compile_launches).

Run as a script, in its own process: the bf16-dot switch must be set before any spec renders,
and the shapes are the production ones (head_dim 128, dstate 128, hidden 4096 blocks) where
the GPU compiler's limits bite, kept short in tokens so the interpreter runs them in seconds.
"""
import json
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"
os.environ["FLASHKIT_INTERPRET_BF16_DOT"] = "native"  # record the GPU's launches

import torch  # noqa: E402

from flashkit import ops  # noqa: E402
from flashkit.jit.triton_aot import compile_launches, record_launches  # noqa: E402

BF16, FP16, F32 = torch.bfloat16, torch.float16, torch.float32
FP8 = torch.float8_e4m3fn
g = torch.Generator().manual_seed(0)


def randn(*shape, dtype=F32, scale=1.0):
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


def attention():
    from flashkit.ops import attention as A

    for dtype in (BF16, FP16):
        for dim, hq, hk in ((128, 32, 8), (64, 8, 8), (256, 8, 1)):
            page, lens = 16, (1, 40)
            pages = [-(-n // page) for n in lens]
            indptr = torch.tensor([0, pages[0], sum(pages)], dtype=torch.int32)
            last = torch.tensor([n - (p - 1) * page for n, p in zip(lens, pages)],
                                dtype=torch.int32)
            cache = randn(sum(pages), 2, page, hk, dim, dtype=dtype)
            indices = torch.arange(sum(pages), dtype=torch.int32)
            ws = torch.empty(1 << 22, dtype=torch.uint8)
            w = A.BatchDecodeWithPagedKVCacheWrapper(ws, backend="triton")
            w.plan(indptr, indices, last, hq, hk, dim, page, q_data_type=dtype,
                   num_workers=4, min_chunk_tokens=16)
            w.run(randn(2, hq, dim, dtype=dtype), cache)
            q = randn(24, hq, dim, dtype=dtype)
            k = randn(40, hk, dim, dtype=dtype)
            A.single_prefill_with_kv_cache(q, k, k, causal=True, backend="triton")
        # soft cap + window + custom mask; fp8 KV decode; a CUDA-graph plan
        q, k = randn(24, 32, 128, dtype=dtype), randn(40, 8, 128, dtype=dtype)
        A.single_prefill_with_kv_cache(q, k, k, custom_mask=torch.rand(24, 40, generator=g) > 0.5,
                                       window_left=16, logits_soft_cap=30.0, backend="triton")
        A.single_decode_with_kv_cache(q[0], k.to(FP8), k.to(FP8), k_scale=0.5, v_scale=2.0,
                                      backend="triton")
        bufs = dict(paged_kv_indptr_buffer=torch.zeros(5, dtype=torch.int32),
                    paged_kv_indices_buffer=torch.zeros(8, dtype=torch.int32),
                    paged_kv_last_page_len_buffer=torch.zeros(4, dtype=torch.int32))
        w = A.BatchDecodeWithPagedKVCacheWrapper(torch.empty(1 << 22, dtype=torch.uint8), "NHD",
                                                 True, backend="triton", **bufs)
        w.plan(torch.tensor([0, 3], dtype=torch.int32), torch.arange(3, dtype=torch.int32),
               torch.tensor([5], dtype=torch.int32), 32, 8, 128, 16, q_data_type=dtype)
        w.run(randn(4, 32, 128, dtype=dtype), randn(8, 2, 16, 8, 128, dtype=dtype))
        bufs = dict(qo_indptr_buf=torch.zeros(3, dtype=torch.int32),
                    kv_indptr_buf=torch.zeros(3, dtype=torch.int32))
        w = A.BatchPrefillWithRaggedKVCacheWrapper(torch.empty(1 << 22, dtype=torch.uint8),
                                                   "NHD", True, backend="triton", **bufs)
        w.plan(torch.tensor([0, 20, 24], dtype=torch.int32),
               torch.tensor([0, 30, 40], dtype=torch.int32), 32, 8, 128, causal=True,
               q_data_type=dtype)
        w.run(q, k, k)
    v, s = randn(5, 3, 8, 128, dtype=BF16), randn(5, 3, 8)
    ops.merge_states(v, s, backend="triton")
    ops.merge_state(v[0], s[0], v[1], s[1], backend="triton")


def ssm():
    for dtype in (BF16, F32):
        b, L, h, p, n = 1, 70, 4, 64, 128  # Mamba2-2.7B's head: headdim 64, dstate 128
        x, dt = randn(b, L, h, p, dtype=dtype), randn(b, L, h, dtype=dtype)
        A = -torch.rand(h, generator=g)
        B, C = randn(b, L, 1, n, dtype=dtype), randn(b, L, 1, n, dtype=dtype)
        ops.chunk_ssd_scan(x, dt, A, B, C, chunk_size=64, D=torch.ones(h), z=x, dt_softplus=True,
                           checkpoint_positions=[[5, 64]], return_final_states=True,
                           backend="triton")
        state = randn(3, h, p, n)
        ops.selective_state_update(state, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0],
                                   dt_softplus=True, backend="triton")
        d, n1 = 64, 16  # Mamba-1: dstate 16
        u, delta = randn(1, d, 40, dtype=dtype), randn(1, d, 40, dtype=dtype)
        B1, C1 = randn(1, 1, n1, 40, dtype=dtype), randn(1, 1, n1, 40, dtype=dtype)
        ops.selective_scan(u, delta, -torch.rand(d, n1, generator=g), B1, C1, D=torch.ones(d), z=u,
                           delta_softplus=True, checkpoint_positions=[[7]],
                           return_last_state=True, backend="triton")
        xc, wc = randn(1, 128, 40, dtype=dtype), randn(128, 4, dtype=dtype)
        ops.causal_conv1d(xc, wc, randn(128, dtype=dtype), activation="silu",
                          return_final_states=True, backend="triton")
        ops.causal_conv1d_update(xc[:, :, :1].contiguous(), randn(1, 128, 3, dtype=dtype), wc,
                                 activation="silu", backend="triton")


def moe():
    for dtype in (BF16, FP16):
        tokens, hidden, ffn, e, k = 40, 256, 128, 8, 2
        x = randn(tokens, hidden, dtype=dtype, scale=0.1)
        w1 = randn(e, 2 * ffn, hidden, dtype=dtype, scale=0.05)
        w2 = randn(e, hidden, ffn, dtype=dtype, scale=0.05)
        weights, ids = ops.fused_topk(randn(tokens, e), k, backend="triton")
        for act in ("silu", "gelu"):
            ops.fused_moe(x, w1, w2, weights, ids, activation=act, backend="triton")
    ops.fused_topk(randn(tokens, 64), 8, scoring="sigmoid", correction_bias=randn(64),
                   num_expert_groups=8, topk_group=4, backend="triton")


def optim():
    for dtype in (F32, BF16):
        for scale_type in ("channel", "tensor"):
            m, n, r = 48, 80, 8
            p, gr = randn(m, n, dtype=dtype), randn(m, n, dtype=dtype)
            proj = randn(r, n)
            ops.apollo_fused_update(p, gr, proj, torch.zeros(r, n), torch.zeros(r, n),
                                    torch.zeros(2), step=1, lr=1e-3, scale_type=scale_type,
                                    backend="triton")


if __name__ == "__main__":
    family = sys.argv[1]
    with record_launches() as launches:
        globals()[family]()
    print(json.dumps(compile_launches(launches)))
