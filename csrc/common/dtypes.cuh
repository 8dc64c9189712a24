// fp16 / bf16 <-> float conversion and vector load/store for NVRTC-compiled kernels.
//
// NVRTC here ships no CUDA headers (<cuda_fp16.h>, <cuda_bf16.h>, <cstdint> do not exist), so
// the 16-bit types are plain bit containers and the conversions are one PTX instruction each.
// Everything accumulates in float; a value is rounded to its storage type once, on store.
#pragma once

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "flashkit kernels need sm_80 or newer (cvt.rn.bf16.f32 is an sm_80 instruction)"
#endif

namespace flashkit {

using int64 = long long;

// IEEE binary16 and bfloat16, as raw bits: layout-compatible with __half / __nv_bfloat16, so
// torch.float16 / torch.bfloat16 data pointers can be passed as half_t* / bf16_t*.
struct half_t { unsigned short bits; };
struct bf16_t { unsigned short bits; };

__device__ __forceinline__ float to_float(float x) { return x; }

__device__ __forceinline__ float to_float(half_t x) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
  return f;
}

// bf16 is the top half of a float32: widening is exact and needs no conversion instruction.
__device__ __forceinline__ float to_float(bf16_t x) {
  return __uint_as_float(static_cast<unsigned>(x.bits) << 16);
}

template <typename T> __device__ __forceinline__ T from_float(float x);

template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }

template <> __device__ __forceinline__ half_t from_float<half_t>(float x) {
  half_t h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(x));
  return h;
}

template <> __device__ __forceinline__ bf16_t from_float<bf16_t>(float x) {
  bf16_t h;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h.bits) : "f"(x));
  return h;
}

// Two 16-bit values in one 32-bit word (element 2j in the low half, as in memory) <-> floats.
__device__ __forceinline__ void unpack2(half_t, unsigned w, float& lo, float& hi) {
  unsigned short l, h;
  asm("mov.b32 {%0, %1}, %2;" : "=h"(l), "=h"(h) : "r"(w));
  lo = to_float(half_t{l});
  hi = to_float(half_t{h});
}

__device__ __forceinline__ void unpack2(bf16_t, unsigned w, float& lo, float& hi) {
  lo = __uint_as_float(w << 16);
  hi = __uint_as_float(w & 0xffff0000u);
}

// cvt.rn.{f16,bf16}x2.f32 d, a, b puts a in the upper half: one instruction per pair.
__device__ __forceinline__ unsigned pack2(half_t, float lo, float hi) {
  unsigned w;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(w) : "f"(hi), "f"(lo));
  return w;
}

__device__ __forceinline__ unsigned pack2(bf16_t, float lo, float hi) {
  unsigned w;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(w) : "f"(hi), "f"(lo));
  return w;
}

// Raw storage moved by one load/store instruction: 16 bytes -> LDG.E.128 / STG.E.128 when the
// address is 16-byte aligned (the launcher only picks a vector width that guarantees it).
template <int kBytes> struct RawBits;
template <> struct RawBits<16> { using type = uint4; };
template <> struct RawBits<8> { using type = uint2; };
template <> struct RawBits<4> { using type = unsigned; };
template <> struct RawBits<2> { using type = unsigned short; };

// Stores of 8 and 16 bytes are written in PTX: as a plain C++ store NVVM split the 16-byte store
// into four st.global.u32 inside merge_state (a 64-bit division in the address computation was
// enough to lose it; seen in the PTX and SASS for sm_90), while loads stayed ld.global.v4.
// "memory" keeps them after any barrier before them. Global memory only.
__device__ __forceinline__ void store_global(void* ptr, const uint4& r) {
  asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};"
               :: "l"(ptr), "r"(r.x), "r"(r.y), "r"(r.z), "r"(r.w) : "memory");
}
__device__ __forceinline__ void store_global(void* ptr, const uint2& r) {
  asm volatile("st.global.v2.b32 [%0], {%1, %2};" :: "l"(ptr), "r"(r.x), "r"(r.y) : "memory");
}
__device__ __forceinline__ void store_global(void* ptr, unsigned r) {
  *static_cast<unsigned*>(ptr) = r;
}
__device__ __forceinline__ void store_global(void* ptr, unsigned short r) {
  *static_cast<unsigned short*>(ptr) = r;
}

__device__ __forceinline__ unsigned& word(uint4& r, int i) {
  return i == 0 ? r.x : i == 1 ? r.y : i == 2 ? r.z : r.w;
}
__device__ __forceinline__ unsigned& word(uint2& r, int i) { return i == 0 ? r.x : r.y; }
__device__ __forceinline__ unsigned& word(unsigned& r, int) { return r; }
__device__ __forceinline__ unsigned word(const uint4& r, int i) {
  return i == 0 ? r.x : i == 1 ? r.y : i == 2 ? r.z : r.w;
}
__device__ __forceinline__ unsigned word(const uint2& r, int i) { return i == 0 ? r.x : r.y; }
__device__ __forceinline__ unsigned word(const unsigned& r, int) { return r; }

// N contiguous elements of T moved as one aligned access and converted to/from float in
// registers.
template <typename T, int N>
struct Vec {
  static_assert(N >= 1 && (N & (N - 1)) == 0, "vector width must be a power of two");
  static_assert(sizeof(T) * N <= 16, "at most 16 bytes per vector access");
  static_assert(sizeof(T) == 4 || sizeof(T) == 2, "float, half_t or bf16_t");
  using Raw = typename RawBits<sizeof(T) * N>::type;
  Raw raw;

  // ptr: global memory, aligned to sizeof(T) * N bytes.
  __device__ __forceinline__ void load(const T* ptr) { raw = *reinterpret_cast<const Raw*>(ptr); }
  __device__ __forceinline__ void store(T* ptr) const { store_global(ptr, raw); }

  __device__ __forceinline__ void to_float(float (&out)[N]) const {
    if constexpr (sizeof(T) == 4) {
#pragma unroll
      for (int i = 0; i < N; ++i) out[i] = __uint_as_float(word(raw, i));
    } else if constexpr (N == 1) {
      out[0] = flashkit::to_float(T{raw});
    } else {
#pragma unroll
      for (int j = 0; j < N / 2; ++j) unpack2(T{}, word(raw, j), out[2 * j], out[2 * j + 1]);
    }
  }

  __device__ __forceinline__ void from_float(const float (&in)[N]) {
    if constexpr (sizeof(T) == 4) {
#pragma unroll
      for (int i = 0; i < N; ++i) word(raw, i) = __float_as_uint(in[i]);
    } else if constexpr (N == 1) {
      raw = flashkit::from_float<T>(in[0]).bits;
    } else {
#pragma unroll
      for (int j = 0; j < N / 2; ++j) word(raw, j) = pack2(T{}, in[2 * j], in[2 * j + 1]);
    }
  }
};

// Load N elements of T and widen them to float.
template <int N, typename T>
__device__ __forceinline__ void load_float(const T* ptr, float (&out)[N]) {
  Vec<T, N> v;
  v.load(ptr);
  v.to_float(out);
}

// Round N floats to T and store them.
template <int N, typename T>
__device__ __forceinline__ void store_float(T* ptr, const float (&in)[N]) {
  Vec<T, N> v;
  v.from_float(in);
  v.store(ptr);
}

}  // namespace flashkit
