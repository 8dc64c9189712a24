// merge_state / merge_states: combine partial attention states (v, s), s = base-2 log-sum-exp.
//
// The math is ops/attention/reference.py's: s_max = max_i s_i; w_i = exp2(s_i - s_max);
// v = sum_i w_i v_i / sum_i w_i; s = s_max + log2(sum_i w_i); a row whose states are all empty
// (s_max = -inf) gives v = 0, s = -inf; +inf states share the weight (s = +inf). Accumulation
// is in float, v is rounded once on store.
//
// Layout: a row is one (seq, head). blockDim.x = kHeadDim / kVec threads share a row, each
// owning kVec contiguous elements (16 bytes when the launcher could pick the full width);
// blockDim.y rows per block, grid.x = ceil(rows / blockDim.y).
//
// Bytes per row (memory-bound, no reuse across rows), E = sizeof(T), D = head_dim:
//   merge_state : reads 2*D*E + 8 (+1 mask), writes D*E + 4  (bf16, D=128: 520 read, 260 written)
//   merge_states: reads N*(D*E + 4), writes D*E + 4; s is read a second time in pass 2 but from
//                 L1 (N*4 bytes per row), so DRAM sees each v_i once.
//
// Aliasing: outputs may be the inputs (in place: v_out == v_a, s_out == s_a; or v_out == v[:, i]).
// A row's s is read by every thread of the row but written by one, and a row can span several
// warps (fp32, D=256, kVec=4: 64 threads), so a warp that wrote s_out early could be read by a
// warp that has not loaded s_a yet. Each kernel therefore has a read phase and a write phase
// separated by one __syncthreads(): every global read of the block happens before the barrier,
// every global write after it. A row never spans blocks, so this holds for any exact aliasing
// (same row in, same row out). Partially overlapping outputs (a shifted view) are not supported.
// For the same reason no pointer is __restrict__ (which would allow non-coherent loads).
#pragma once

#include "common/dtypes.cuh"

namespace flashkit {
namespace attention {

// Caps registers at 64 per thread; the largest block is max(128, kHeadDim / kVec) threads.
constexpr int kMaxBlockThreads = 1024;

// merge_states' pass 2 loads this many v vectors per iteration before using them. ptxas (NVRTC
// 13.5, sm_90, bf16 hd128) still issues them two at a time in SASS; at 49 registers (36 resident
// warps per SM) that keeps 36 warps x 32 lanes x 2 x 16 B = ~36 KB in flight per SM, above the
// ~18 KB that Little's law asks for on H100 (3.35 TB/s x ~0.7 us DRAM latency / 132 SMs).
// Not yet measured on a GPU (docs/status.md).
constexpr int kMergeStatesUnroll = 4;

__device__ __forceinline__ float neg_inf() { return __uint_as_float(0xff800000u); }

// exp2(s - m) for a state s against the row's max m, with the state at the max weighing exactly
// 1: a +inf state then gets 1, not exp2(inf - inf) = NaN, so +inf states share the weight.
__device__ __forceinline__ float state_weight(float s, float m) {
  return s == m ? 1.f : exp2f(s - m);
}

// Row r of the block -> (seq t, head h); false when the row is past the end (tail block).
__device__ __forceinline__ bool locate_row(int seq_len, int heads, int64& t, int64& h) {
  const int64 row = static_cast<int64>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (row >= static_cast<int64>(seq_len) * heads) return false;
  t = row / heads;
  h = row - t * heads;
  return true;
}

template <typename T, int kHeadDim, int kVec>
__device__ __forceinline__ void merge_state(
    const T* v_a, const float* s_a, const T* v_b, const float* s_b, T* v_out, float* s_out,
    const unsigned char* mask, int seq_len, int heads,
    int64 va_seq, int64 va_head, int64 sa_seq, int64 sa_head,
    int64 vb_seq, int64 vb_head, int64 sb_seq, int64 sb_head,
    int64 vo_seq, int64 vo_head, int64 so_seq, int64 so_head) {
  static_assert(kHeadDim % kVec == 0, "head_dim must be a multiple of the vector width");
  static_assert(kHeadDim / kVec <= kMaxBlockThreads, "one row must fit in one block");
  const int64 d = static_cast<int64>(threadIdx.x) * kVec;
  int64 t = 0, h = 0;
  // mask (a bool per seq) is never an output, so reading it needs no ordering.
  const bool active = locate_row(seq_len, heads, t, h) && (mask == nullptr || mask[t] != 0);

  // Read phase.
  float out[kVec];
  float s_new = 0.f;
  if (active) {
    const float sa = s_a[t * sa_seq + h * sa_head];
    const float sb = s_b[t * sb_seq + h * sb_head];
    float a[kVec], b[kVec];
    load_float<kVec>(v_a + t * va_seq + h * va_head + d, a);
    load_float<kVec>(v_b + t * vb_seq + h * vb_head + d, b);
    // Selects, not a branch on "empty": a branch let the compiler sink the v loads below the s
    // loads' use, serializing two DRAM latencies (seen in the sm_90 SASS).
    const float s_max = fmaxf(sa, sb);
    const bool empty = s_max == neg_inf();
    const float m = empty ? 0.f : s_max;
    // One of the two weights is exactly 1, so the sum is in [1, 2]: no overflow, no 0/0. An
    // empty row has weights 0 and sum 0; its result is selected away below.
    const float w_a = state_weight(sa, m);
    const float w_b = state_weight(sb, m);
    const float sum = w_a + w_b;
    const float inv = __frcp_rn(sum);
#pragma unroll
    for (int i = 0; i < kVec; ++i) out[i] = empty ? 0.f : (w_a * a[i] + w_b * b[i]) * inv;
    s_new = empty ? neg_inf() : s_max + log2f(sum);
  }

  __syncthreads();  // every read of this block's rows is done: in-place writes are safe below.

  if (active) {
    store_float<kVec>(v_out + t * vo_seq + h * vo_head + d, out);
    if (threadIdx.x == 0) s_out[t * so_seq + h * so_head] = s_new;
  }
}

template <typename T, int kHeadDim, int kVec>
__device__ __forceinline__ void merge_states(
    const T* v, const float* s, T* v_out, float* s_out, int seq_len, int num_states, int heads,
    int64 v_seq, int64 v_state, int64 v_head, int64 s_seq, int64 s_state, int64 s_head,
    int64 vo_seq, int64 vo_head, int64 so_seq, int64 so_head) {
  static_assert(kHeadDim % kVec == 0, "head_dim must be a multiple of the vector width");
  static_assert(kHeadDim / kVec <= kMaxBlockThreads, "one row must fit in one block");
  constexpr int U = kMergeStatesUnroll;
  const int64 d = static_cast<int64>(threadIdx.x) * kVec;
  int64 t = 0, h = 0;
  const bool active = locate_row(seq_len, heads, t, h);

  // Read phase.
  float acc[kVec];
#pragma unroll
  for (int i = 0; i < kVec; ++i) acc[i] = 0.f;
  float s_new = neg_inf();
  if (active) {
    const float* p_s = s + t * s_seq + h * s_head;
    const T* p_v = v + t * v_seq + h * v_head + d;
    // Pass 1: the max of s (N * 4 bytes), so that pass 2 weighs each v_i once with its final
    // weight instead of rescaling the accumulator at every new maximum.
    float s_max = neg_inf();
#pragma unroll 4
    for (int i = 0; i < num_states; ++i) s_max = fmaxf(s_max, p_s[i * s_state]);
    if (s_max != neg_inf()) {
      float sum = 0.f;
      int i = 0;
      // Pass 2, U states at a time; in source order all U loads precede their first use (what
      // ptxas makes of it: see kMergeStatesUnroll).
      for (; i + U <= num_states; i += U) {
        Vec<T, kVec> x[U];
        float w[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
          w[u] = p_s[(i + u) * s_state];
          x[u].load(p_v + (i + u) * v_state);
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
          w[u] = state_weight(w[u], s_max);
          sum += w[u];
          float f[kVec];
          x[u].to_float(f);
#pragma unroll
          for (int k = 0; k < kVec; ++k) acc[k] += w[u] * f[k];
        }
      }
      for (; i < num_states; ++i) {
        const float w = state_weight(p_s[i * s_state], s_max);
        float x[kVec];
        load_float<kVec>(p_v + i * v_state, x);
        sum += w;
#pragma unroll
        for (int k = 0; k < kVec; ++k) acc[k] += w * x[k];
      }
      // The state holding s_max has weight 1, so sum >= 1.
      const float inv = __frcp_rn(sum);
#pragma unroll
      for (int k = 0; k < kVec; ++k) acc[k] *= inv;
      s_new = s_max + log2f(sum);
    }
  }

  __syncthreads();  // every read of this block's rows is done: in-place writes are safe below.

  if (active) {
    store_float<kVec>(v_out + t * vo_seq + h * vo_head + d, acc);
    if (threadIdx.x == 0) s_out[t * so_seq + h * so_head] = s_new;
  }
}

}  // namespace attention
}  // namespace flashkit
