// The CUDA path of paged decode attention (one query token per request; the Triton path is
// templates/attention/attention.py.j2), split-KV: one CTA per (work item, KV head, block of
// that KV head's q heads), launched by ops/attention/decode_cuda.py. A work item is the plan's
// (request, kv chunk) (ops/attention/items.py: split_kv_plan); the CTA writes the chunk's float32 partial state
// (o, base-2 lse) for every q head of its block into the workspace rows that the Triton path
// uses (part_v [n_items_pad, Hq, D], part_s [n_items_pad, Hq]), and the varlen merge over
// merge_indptr combines the chunks of a request. The math is ops/attention/reference.py's
// naive_single_attention for a query at the end of the KV (position kv_len - 1).
//
// Threads. kVec = 8 elements (16 bytes) per lane: kLanes = D / 8 lanes own one row's head_dim
// (hd64: 8, hd128: 16, hd256: 32) and kRows = kThreads / kLanes rows run side by side. A row is
// (q head h of the block, token slice z): the launcher picks heads_per_cta = hb (a power of two,
// at most kRows; runtime) and the rows split as hb heads x (kRows / hb) token slices, so a
// GQA group of 1 (MHA) still keeps every row busy: its kRows rows read disjoint tokens of each
// tile. Each row keeps its own online-softmax state (m, l, acc[8] per lane) in registers; at the
// end the token slices of a head are merged through shared memory.
//
// Memory. K and V tiles of kTile tokens are copied into shared memory with 16-byte cp.async
// (LDGSTS), double-buffered: tile j + 1 is in flight while tile j is computed. The page number
// of every token is looked up one tile ahead of its copy (plain loads into registers), so the
// page-table latency is off the critical path too. Tokens past the chunk are zero-filled
// (cp.async with src-size 0), never read from global memory, and masked to -inf.
//
// Logits: s = q.k * sm_scale, soft-capped (cap * tanh(s / cap)) when cap > 0, then turned into
// base 2: sm_scale * log2(e) is folded into one multiply when there is no cap. Sliding window:
// keys at positions >= kv_len - 1 - window_left only; the chunk's start is clamped, so keys
// outside the window are never copied. An item with no visible key writes o = 0, lse = -inf.
//
// Layout flag kTokenStrideIsD: the "HND" specialization, where the tokens of one (page, head)
// are contiguous (token stride = head_dim, known at compile time); the "NHD" one takes any
// token stride (the launcher passes HND views with other strides to it).
//
// Alignment (checked by the launcher): q, k, v base addresses 16-byte aligned and every stride
// but the last a multiple of 8 elements; the partial outputs (float32) 16-byte aligned.
#pragma once

#include "common/dtypes.cuh"

namespace flashkit {
namespace attention {
namespace decode {

constexpr int kVec = 8;  // 16 bytes of fp16/bf16 per lane access

__device__ __forceinline__ float neg_inf() { return __uint_as_float(0xff800000u); }

template <int kHeadDim>
struct Config {
  static_assert(kHeadDim == 64 || kHeadDim == 128 || kHeadDim == 256,
                "head_dim 64, 128 or 256: a row's D / 8 lanes are a power-of-two shuffle group");
  static constexpr int kLanes = kHeadDim / kVec;                       // lanes per row
  static constexpr int kRows = kLanes * 8 >= 128 ? 8 : 128 / kLanes;  // rows per CTA
  static constexpr int kThreads = kRows * kLanes;                      // 128 or 256
  static constexpr int kTile = 4096 / kHeadDim;                        // 16 KB of K+V per stage
  static constexpr int kStages = 2;
  static constexpr int kLoadIters = kTile / kRows;  // 16-byte copies per thread per tile (K, V)
  static_assert(kTile % kRows == 0, "a tile is whole load passes");
  static constexpr int kTileElems = kTile * kHeadDim;
};

// 1 / x in one MUFU.RCP (about 1 ulp; rcp(+inf) = 0). __frcp_rn is a called IEEE subroutine.
__device__ __forceinline__ float rcp_approx(float x) {
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ unsigned smem_addr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared; src_bytes = 0 writes zeros without reading global memory.
__device__ __forceinline__ void cp_async_16(unsigned dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
               :: "r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" :: "n"(N) : "memory");
}

// 16 bytes from shared memory as 8 floats.
template <typename T>
__device__ __forceinline__ void lds_float8(const T* p, float (&out)[kVec]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  unpack2(T{}, raw.x, out[0], out[1]);
  unpack2(T{}, raw.y, out[2], out[3]);
  unpack2(T{}, raw.z, out[4], out[5]);
  unpack2(T{}, raw.w, out[6], out[7]);
}

template <typename T, int kHeadDim, bool kTokenStrideIsD>
__device__ __forceinline__ void batch_decode(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
    float* __restrict__ part_v, float* __restrict__ part_s, const int* __restrict__ items,
    int n_items_pad, const int* __restrict__ qo_indptr, const int* __restrict__ kv_indptr,
    const int* __restrict__ kv_indices, const int* __restrict__ kv_lens, int paged,
    int page_size, int group, int heads_per_cta, int head_blocks, float sm_scale, float soft_cap,
    int window_left, int64 s_qt, int64 s_qh, int64 s_kp, int64 s_kt, int64 s_kh, int64 s_vp,
    int64 s_vt, int64 s_vh, int64 s_ot, int64 s_oh, int64 s_lt, int64 s_lh) {
  using C = Config<kHeadDim>;
  constexpr int kLanes = C::kLanes, kRows = C::kRows, kTile = C::kTile;
  constexpr float kLog2e = 1.4426950408889634f;

  // K and V stages; reused at the end for the cross-slice merge (kRows x (D + 2) floats, at most
  // 8 KB, always below the 32 KB of the stages).
  __shared__ __align__(16) T smem[2 * C::kStages * C::kTileElems];
  T* s_k = smem;
  T* s_v = smem + C::kStages * C::kTileElems;

  const int item = blockIdx.x;
  const int kh = blockIdx.y / head_blocks;
  const int hblock = blockIdx.y - kh * head_blocks;
  const int tx = threadIdx.x % kLanes;
  const int row = threadIdx.x / kLanes;
  const int hb = heads_per_cta;  // power of two <= kRows
  const int slices = kRows / hb;
  const int h_local = row & (hb - 1);
  const int z = row / hb;
  const int h_in_group = hblock * hb + h_local;
  const bool head_ok = h_in_group < group;
  const int qo_head = kh * group + (head_ok ? h_in_group : 0);

  const int req = items[item];
  const int q_start = items[n_items_pad + item];
  const int kv_start = items[3 * n_items_pad + item];
  const int kv_end = items[4 * n_items_pad + item];
  const int64 o_row = items[5 * n_items_pad + item];
  const int kv_len = kv_lens[req];
  const int kv_base = kv_indptr[req];
  const int64 q_row = static_cast<int64>(qo_indptr[req]) + q_start;

  // The query, as floats in registers (a head past the group reads a valid head, never stored).
  float qf[kVec];
  load_float<kVec>(q + q_row * s_qt + qo_head * s_qh + tx * kVec, qf);

  int lo = kv_start;
  const int hi = kv_end;
  if (window_left >= 0) lo = max(lo, kv_len - 1 - window_left);
  const int n_tiles = hi > lo ? (hi - lo + kTile - 1) / kTile : 0;

  const float scale = soft_cap > 0.f ? sm_scale / soft_cap : sm_scale * kLog2e;
  const float cap2 = soft_cap * kLog2e;  // cap * tanh(x) in base 2

  // This thread's copy slots: token (i * kRows + row) of a tile, 16-byte chunk tx.
  const T* k_head = k + kh * s_kh + tx * kVec;
  const T* v_head = v + kh * s_vh + tx * kVec;
  const int64 tok_k = kTokenStrideIsD ? kHeadDim : s_kt;
  const int64 tok_v = kTokenStrideIsD ? kHeadDim : s_vt;

  // Where the tokens of the next tile to copy live: page number and slot in the page, looked up
  // one tile ahead (the page-table load and the division are off the copy's critical path).
  int page_next[C::kLoadIters], slot_next[C::kLoadIters];
  auto fetch_pages = [&](int tile) {
#pragma unroll
    for (int i = 0; i < C::kLoadIters; ++i) {
      const int t = lo + tile * kTile + i * kRows + row;
      const int p = t / page_size;
      page_next[i] = (paged && t < hi) ? kv_indices[kv_base + p] : 0;
      slot_next[i] = paged ? t - p * page_size : kv_base + t;
    }
  };
  auto issue = [&](int tile, int stage) {
#pragma unroll
    for (int i = 0; i < C::kLoadIters; ++i) {
      const int n = i * kRows + row;
      const bool ok = lo + tile * kTile + n < hi;
      // Non-paged (one request's contiguous KV): page 0, slot = the token's row.
      const int64 page = page_next[i], slot = slot_next[i];
      const int64 ok_k = ok ? page * s_kp + slot * tok_k : 0;
      const int64 ok_v = ok ? page * s_vp + slot * tok_v : 0;
      const int dst = stage * C::kTileElems + n * kHeadDim + tx * kVec;
      cp_async_16(smem_addr(s_k + dst), k_head + ok_k, ok ? 16 : 0);
      cp_async_16(smem_addr(s_v + dst), v_head + ok_v, ok ? 16 : 0);
    }
    cp_async_commit();
  };

  float m = neg_inf(), l = 0.f;
  float acc[kVec];
#pragma unroll
  for (int i = 0; i < kVec; ++i) acc[i] = 0.f;

  if (n_tiles > 0) {
    fetch_pages(0);
    issue(0, 0);
    if (n_tiles > 1) fetch_pages(1);
  }
  for (int j = 0; j < n_tiles; ++j) {
    const int stage = j & 1;
    if (j + 1 < n_tiles) {
      issue(j + 1, stage ^ 1);
      if (j + 2 < n_tiles) fetch_pages(j + 2);  // consumed by the next iteration's issue
    } else {
      cp_async_commit();  // an empty group keeps wait_group<1> meaning "tile j has landed"
    }
    cp_async_wait<1>();
    __syncthreads();

    const T* tk = s_k + stage * C::kTileElems + tx * kVec;
    const T* tv = s_v + stage * C::kTileElems + tx * kVec;
    const int t0 = lo + j * kTile;
    // Every row runs kTile / slices iterations (uniform across the CTA), so the shuffles below
    // always see their whole warp; tokens past the chunk are masked, not skipped.
#pragma unroll 2
    for (int n = z; n < kTile; n += slices) {
      float kf[kVec];
      lds_float8(tk + n * kHeadDim, kf);
      float s = 0.f;
#pragma unroll
      for (int i = 0; i < kVec; ++i) s = fmaf(qf[i], kf[i], s);
#pragma unroll
      for (int off = kLanes / 2; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
      if (soft_cap > 0.f) {
        // cap * tanh(y), tanh(y) = 1 - 2 / (exp(2y) + 1): exact at both tails (as Triton's).
        s = cap2 * (1.f - 2.f * rcp_approx(exp2f(s * scale * (2.f * kLog2e)) + 1.f));
      } else {
        s *= scale;
      }
      if (t0 + n < hi) {
        if (s > m) {
          const float alpha = exp2f(m - s);  // m = -inf at first: alpha = 0
          l *= alpha;
#pragma unroll
          for (int i = 0; i < kVec; ++i) acc[i] *= alpha;
          m = s;
        }
        const float p = exp2f(s - m);
        float vf[kVec];
        lds_float8(tv + n * kHeadDim, vf);
        l += p;
#pragma unroll
        for (int i = 0; i < kVec; ++i) acc[i] = fmaf(p, vf[i], acc[i]);
      }
    }
    __syncthreads();  // stage j & 1 is refilled by the next iteration's issue
  }

  // Merge the token slices of each head: rows z * hb + h_local, z = 0 .. slices - 1.
  float* s_m = reinterpret_cast<float*>(smem);
  float* s_l = s_m + kRows;
  float* s_acc = s_l + kRows;  // [kRows][kHeadDim]
  if (slices > 1) {
    if (tx == 0) {
      s_m[row] = m;
      s_l[row] = l;
    }
#pragma unroll
    for (int i = 0; i < kVec; ++i) s_acc[row * kHeadDim + tx * kVec + i] = acc[i];
    __syncthreads();
    if (z == 0) {
      float m_all = neg_inf();
      for (int zz = 0; zz < slices; ++zz) m_all = fmaxf(m_all, s_m[zz * hb + h_local]);
      const float m_safe = m_all == neg_inf() ? 0.f : m_all;
      l = 0.f;
#pragma unroll
      for (int i = 0; i < kVec; ++i) acc[i] = 0.f;
      for (int zz = 0; zz < slices; ++zz) {
        const int r = zz * hb + h_local;
        const float w = exp2f(s_m[r] - m_safe);  // an empty slice (-inf) weighs 0
        l = fmaf(w, s_l[r], l);
#pragma unroll
        for (int i = 0; i < kVec; ++i) acc[i] = fmaf(w, s_acc[r * kHeadDim + tx * kVec + i], acc[i]);
      }
      m = m_all;
    }
  }
  if (z != 0 || !head_ok) return;

  const bool empty = l == 0.f;
  const float inv = empty ? 0.f : rcp_approx(l);
  float* o = part_v + o_row * s_ot + qo_head * s_oh + tx * kVec;
  uint4 lo4, hi4;
  lo4.x = __float_as_uint(acc[0] * inv);
  lo4.y = __float_as_uint(acc[1] * inv);
  lo4.z = __float_as_uint(acc[2] * inv);
  lo4.w = __float_as_uint(acc[3] * inv);
  hi4.x = __float_as_uint(acc[4] * inv);
  hi4.y = __float_as_uint(acc[5] * inv);
  hi4.z = __float_as_uint(acc[6] * inv);
  hi4.w = __float_as_uint(acc[7] * inv);
  store_global(o, lo4);
  store_global(o + 4, hi4);
  if (tx == 0) part_s[o_row * s_lt + qo_head * s_lh] = empty ? neg_inf() : m + log2f(l);
}

}  // namespace decode
}  // namespace attention
}  // namespace flashkit
