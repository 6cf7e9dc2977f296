// Small building blocks for the CPU kernels, on GCC vector extensions of W
// floats. Each instruction-set variant of a kernel (cpu_isa.h) uses the width
// of one register: 16 (AVX-512), 8 (AVX2) or 4 (SSE). A wider generic vector
// than the registers hold is split by the compiler, and GCC then keeps much of
// it on the stack (measured: the AVX2 variant with 16-float vectors spilled
// 2,419 times in the decode kernel and ran slower than the SSE one).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "mini_paged_attn/fp8.h"

#define MPA_INLINE inline __attribute__((always_inline))

namespace mini_paged_attn::cpu {

template <int W>
struct Vec {
  typedef float f32 __attribute__((vector_size(W * sizeof(float))));
  typedef uint8_t u8 __attribute__((vector_size(W * sizeof(uint8_t))));
  typedef uint16_t u16 __attribute__((vector_size(W * sizeof(uint16_t))));
  typedef uint32_t u32 __attribute__((vector_size(W * sizeof(uint32_t))));
  typedef int32_t i32 __attribute__((vector_size(W * sizeof(int32_t))));
  typedef _Float16 f16 __attribute__((vector_size(W * sizeof(_Float16))));
};

// Loads W values as floats; half types are widened in registers, so the
// kernels read the cache directly with no conversion pass.
template <int W>
MPA_INLINE typename Vec<W>::f32 vload(const float* p) {
  typename Vec<W>::f32 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <int W>
MPA_INLINE typename Vec<W>::f32 vload(const c10::BFloat16* p) {
  // bfloat16 is the upper half of a float32.
  typename Vec<W>::u16 h;
  std::memcpy(&h, p, sizeof(h));
  const typename Vec<W>::u32 w = __builtin_convertvector(h, typename Vec<W>::u32) << 16;
  typename Vec<W>::f32 v;
  std::memcpy(&v, &w, sizeof(v));
  return v;
}

template <int W>
MPA_INLINE typename Vec<W>::f32 vload(const c10::Half* p) {
  typename Vec<W>::f16 h;
  std::memcpy(&h, p, sizeof(h));
  return __builtin_convertvector(h, typename Vec<W>::f32);
}

// fp8 codes are widened to 32 bits and decoded in registers (fp8.h); the
// cache's scale is applied outside the inner loops.
template <int W, typename Fp8>
MPA_INLINE typename Vec<W>::f32 vload_fp8(const Fp8* p) {
  typename Vec<W>::u8 b;
  std::memcpy(&b, p, sizeof(b));
  return fp8_to_float<Fp8, typename Vec<W>::u32, typename Vec<W>::f32>(
      __builtin_convertvector(b, typename Vec<W>::u32));
}

template <int W>
MPA_INLINE typename Vec<W>::f32 vload(const c10::Float8_e4m3fn* p) {
  return vload_fp8<W>(p);
}

template <int W>
MPA_INLINE typename Vec<W>::f32 vload(const c10::Float8_e5m2* p) {
  return vload_fp8<W>(p);
}

template <int W>
MPA_INLINE void vstore(float* p, typename Vec<W>::f32 v) {
  std::memcpy(p, &v, sizeof(v));
}

// A tree of halves: a plain loop would be W dependent scalar adds, since
// without -ffast-math the compiler may not reorder them.
template <int W>
MPA_INLINE float hsum(typename Vec<W>::f32 v) {
  if constexpr (W == 4) {
    return (v[0] + v[2]) + (v[1] + v[3]);
  } else {
    typename Vec<W / 2>::f32 lo, hi;
    std::memcpy(&lo, &v, sizeof(lo));
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(lo), sizeof(hi));
    return hsum<W / 2>(lo + hi);
  }
}

template <int W>
MPA_INLINE float hmax(typename Vec<W>::f32 v) {
  if constexpr (W == 4) {
    return std::max(std::max(v[0], v[2]), std::max(v[1], v[3]));
  } else {
    typename Vec<W / 2>::f32 lo, hi;
    std::memcpy(&lo, &v, sizeof(lo));
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(lo), sizeof(hi));
    return hmax<W / 2>(lo > hi ? lo : hi);
  }
}

// The four horizontal sums of a, b, c, d as one vector {sum a, sum b, sum c,
// sum d}: pairwise adds of shuffled pairs within each 128-bit lane (what x86's
// hadd does), then the lanes folded. 11 instructions for AVX2 where four
// separate trees took 32.
template <int W>
MPA_INLINE typename Vec<4>::f32 hsum4(typename Vec<W>::f32 a, typename Vec<W>::f32 b,
                                      typename Vec<W>::f32 c, typename Vec<W>::f32 d) {
  using F = typename Vec<W>::f32;
  // {x0 + x1, x2 + x3, y0 + y1, y2 + y3} in each 128-bit lane.
  auto pair_sums = [](F x, F y) -> F {
    if constexpr (W == 4) {
      return __builtin_shufflevector(x, y, 0, 2, 4, 6) + __builtin_shufflevector(x, y, 1, 3, 5, 7);
    } else if constexpr (W == 8) {
      return __builtin_shufflevector(x, y, 0, 2, 8, 10, 4, 6, 12, 14) +
             __builtin_shufflevector(x, y, 1, 3, 9, 11, 5, 7, 13, 15);
    } else {
      static_assert(W == 16);
      return __builtin_shufflevector(x, y, 0, 2, 16, 18, 4, 6, 20, 22, 8, 10, 24, 26, 12, 14, 28,
                                     30) +
             __builtin_shufflevector(x, y, 1, 3, 17, 19, 5, 7, 21, 23, 9, 11, 25, 27, 13, 15, 29,
                                     31);
    }
  };
  const F r = pair_sums(pair_sums(a, b), pair_sums(c, d));  // {a, b, c, d} partials per lane
  if constexpr (W == 4) {
    return r;
  } else if constexpr (W == 8) {
    return __builtin_shufflevector(r, r, 0, 1, 2, 3) + __builtin_shufflevector(r, r, 4, 5, 6, 7);
  } else {
    const typename Vec<8>::f32 h = __builtin_shufflevector(r, r, 0, 1, 2, 3, 4, 5, 6, 7) +
                                   __builtin_shufflevector(r, r, 8, 9, 10, 11, 12, 13, 14, 15);
    return __builtin_shufflevector(h, h, 0, 1, 2, 3) + __builtin_shufflevector(h, h, 4, 5, 6, 7);
  }
}

// {dot(q0, k0), ..., dot(q3, k3)}: four independent accumulators hide the FMA
// latency, and the horizontal sums happen once, together.
template <int W, typename T>
MPA_INLINE typename Vec<4>::f32 dot4(const float* q0, const float* q1, const float* q2,
                                     const float* q3, const T* k0, const T* k1, const T* k2,
                                     const T* k3, int64_t n) {
  typename Vec<W>::f32 s0 = {}, s1 = {}, s2 = {}, s3 = {};
  int64_t i = 0;
#pragma GCC unroll 4
  for (; i + W <= n; i += W) {
    s0 += vload<W>(q0 + i) * vload<W>(k0 + i);
    s1 += vload<W>(q1 + i) * vload<W>(k1 + i);
    s2 += vload<W>(q2 + i) * vload<W>(k2 + i);
    s3 += vload<W>(q3 + i) * vload<W>(k3 + i);
  }
  typename Vec<4>::f32 t = hsum4<W>(s0, s1, s2, s3);
  for (; i < n; ++i) {
    t[0] += q0[i] * static_cast<float>(k0[i]);
    t[1] += q1[i] * static_cast<float>(k1[i]);
    t[2] += q2[i] * static_cast<float>(k2[i]);
    t[3] += q3[i] * static_cast<float>(k3[i]);
  }
  return t;
}

template <int W, typename T>
MPA_INLINE float dot(const float* q, const T* k, int64_t n) {
  typename Vec<W>::f32 s = {};
  int64_t i = 0;
  for (; i + W <= n; i += W) s += vload<W>(q + i) * vload<W>(k + i);
  float t = hsum<W>(s);
  for (; i < n; ++i) t += q[i] * static_cast<float>(k[i]);
  return t;
}

// exp(x) for x <= 0 on W lanes (std::exp is a scalar libm call): exp(x) =
// 2^k * exp(r) with |r| <= ln2 / 2 and a degree-6 Taylor polynomial, relative
// error ~2e-7. W = 1 is the scalar form, for tails.
template <int W, typename F>
MPA_INLINE F exp_nonpositive(F x) {
  const F v = x > -87.f ? x : F{} - 87.f;
  // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer.
  const F k = (v * 1.44269504f + 12582912.f) - 12582912.f;
  const F r = v - k * 0.693145752f - k * 1.42860677e-6f;
  const F poly =
      1.f + r * (1.f + r * (0.5f + r * (1.f / 6 + r * (1.f / 24 + r * (1.f / 120 +
                                                                     r * (1.f / 720))))));
  F pow2;
  if constexpr (W == 1) {
    const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
    std::memcpy(&pow2, &bits, sizeof(float));
  } else {
    const typename Vec<W>::i32 bits = (__builtin_convertvector(k, typename Vec<W>::i32) + 127) << 23;
    std::memcpy(&pow2, &bits, sizeof(pow2));
  }
  return poly * pow2;
}

// One step of the online softmax for one row over n new scores p[0, n):
// moves the row's running max (rescaling its sum and its d-wide unnormalised
// output acc by exp(old - new) when it moves), turns p into exp(p - max) and
// adds them to the sum. In W-wide vectors: the max compare of a scalar loop
// mispredicts on random scores, and its dependent adds wait on each other.
template <int W>
MPA_INLINE void online_softmax(float* p, int64_t n, float& max, float& sum, float* acc,
                               int64_t d) {
  using F = typename Vec<W>::f32;
  int64_t i = 0;
  float m = max;
  if (n >= W) {
    F mv = vload<W>(p);
    for (i = W; i + W <= n; i += W) {
      const F x = vload<W>(p + i);
      mv = mv > x ? mv : x;
    }
    m = std::max(m, hmax<W>(mv));
  }
  for (; i < n; ++i) m = std::max(m, p[i]);
  if (m != max) {
    const float alpha = std::exp(max - m);  // 0 while max is -inf
    int64_t j = 0;
    for (; j + W <= d; j += W) vstore<W>(acc + j, vload<W>(acc + j) * alpha);
    for (; j < d; ++j) acc[j] *= alpha;
    sum *= alpha;
    max = m;
  }
  F sv = {};
  for (i = 0; i + W <= n; i += W) {
    const F e = exp_nonpositive<W>(vload<W>(p + i) - m);
    vstore<W>(p + i, e);
    sv += e;
  }
  float total = hsum<W>(sv);
  for (; i < n; ++i) {
    p[i] = exp_nonpositive<1>(p[i] - m);
    total += p[i];
  }
  sum += total;
}

// The same step for h rows at once, laid out as columns: scores p[i * h + r]
// of n new keys for rows r < h (a decode block: one column per query head),
// with max[r], sum[r] and acc[r * d, (r + 1) * d). Vectorised across the rows,
// so the max and the sum need no horizontal reductions; an output row is
// rescaled only when its max moved (exp(0) is exactly 1, so the others would
// not change anyway).
template <int W>
MPA_INLINE void online_softmax_columns(float* p, int64_t n, int64_t h, float* max, float* sum,
                                       float* acc, int64_t d) {
  using F = typename Vec<W>::f32;
  int64_t r = 0;
  for (; r + W <= h; r += W) {
    const F old = vload<W>(max + r);
    F m = old;
    for (int64_t i = 0; i < n; ++i) {
      const F x = vload<W>(p + i * h + r);
      m = m > x ? m : x;
    }
    const F alpha = exp_nonpositive<W>(old - m);  // ~0 while old is -inf; acc is 0 then
    F total = vload<W>(sum + r) * alpha;
    for (int j = 0; j < W; ++j) {
      if (m[j] == old[j]) continue;
      float* a = acc + (r + j) * d;
      int64_t e = 0;
      for (; e + W <= d; e += W) vstore<W>(a + e, vload<W>(a + e) * alpha[j]);
      for (; e < d; ++e) a[e] *= alpha[j];
    }
    for (int64_t i = 0; i < n; ++i) {
      const F x = exp_nonpositive<W>(vload<W>(p + i * h + r) - m);
      vstore<W>(p + i * h + r, x);
      total += x;
    }
    vstore<W>(max + r, m);
    vstore<W>(sum + r, total);
  }
  for (; r < h; ++r) {
    float m = max[r];
    for (int64_t i = 0; i < n; ++i) m = std::max(m, p[i * h + r]);
    const float alpha = exp_nonpositive<1>(max[r] - m);
    if (m != max[r]) {
      for (int64_t e = 0; e < d; ++e) acc[r * d + e] *= alpha;
    }
    float total = sum[r] * alpha;
    for (int64_t i = 0; i < n; ++i) {
      p[i * h + r] = exp_nonpositive<1>(p[i * h + r] - m);
      total += p[i * h + r];
    }
    max[r] = m;
    sum[r] = total;
  }
}

// acc[j][d, d + NV * W) += sum_i p[i * ps + j] * row_i[d, d + NV * W) for four
// heads j (row_i = rows + i * rs), in 4 x NV accumulators held for all the rows.
template <int W, int NV, typename T>
MPA_INLINE void four_heads_rows_sum(const T* rows, int64_t rs, const float* p, int64_t ps,
                                    int64_t num_rows, float* const (&acc)[4], int64_t d) {
  typename Vec<W>::f32 s[4][NV];
  for (int j = 0; j < 4; ++j) {
    for (int v = 0; v < NV; ++v) s[j][v] = vload<W>(acc[j] + d + v * W);
  }
#pragma GCC unroll 4
  for (int64_t i = 0; i < num_rows; ++i) {
    const T* row = rows + i * rs + d;
    const float* pi = p + i * ps;
    typename Vec<W>::f32 x[NV];
    for (int v = 0; v < NV; ++v) x[v] = vload<W>(row + v * W);
    for (int j = 0; j < 4; ++j) {
      for (int v = 0; v < NV; ++v) s[j][v] += pi[j] * x[v];
    }
  }
  for (int j = 0; j < 4; ++j) {
    for (int v = 0; v < NV; ++v) vstore<W>(acc[j] + d + v * W, s[j][v]);
  }
}

// acc[g][e] += sum_i p[i * ps + g] * rows[i * rs + e] for the heads g of a
// group (acc[g] = acc + g * n). Four heads share each loaded row; sums stay in
// registers for a whole block, which avoids a read-modify-write of acc per
// row (a store-to-load forwarding chain).
template <int W, typename T>
MPA_INLINE void weighted_rows_sum(const T* rows, int64_t rs, const float* p, int64_t ps,
                                  int64_t num_heads, int64_t num_rows, float* acc, int64_t n) {
  int64_t g = 0;
  for (; g + 4 <= num_heads; g += 4) {
    float* const as[4] = {acc + g * n, acc + (g + 1) * n, acc + (g + 2) * n, acc + (g + 3) * n};
    int64_t d = 0;
    // Two vectors per head: eight independent FMA chains keep both FMA units busy.
    for (; d + 2 * W <= n; d += 2 * W) four_heads_rows_sum<W, 2>(rows, rs, p + g, ps, num_rows, as, d);
    for (; d + W <= n; d += W) four_heads_rows_sum<W, 1>(rows, rs, p + g, ps, num_rows, as, d);
    for (; d < n; ++d) {
      for (int64_t i = 0; i < num_rows; ++i) {
        const float v = static_cast<float>(rows[i * rs + d]);
        for (int j = 0; j < 4; ++j) as[j][d] += p[i * ps + g + j] * v;
      }
    }
  }
  for (; g < num_heads; ++g) {
    float* ag = acc + g * n;
    int64_t d = 0;
    for (; d + 2 * W <= n; d += 2 * W) {
      typename Vec<W>::f32 s0 = vload<W>(ag + d), s1 = vload<W>(ag + d + W);
      for (int64_t i = 0; i < num_rows; ++i) {
        const float pg = p[i * ps + g];
        s0 += pg * vload<W>(rows + i * rs + d);
        s1 += pg * vload<W>(rows + i * rs + d + W);
      }
      vstore<W>(ag + d, s0);
      vstore<W>(ag + d + W, s1);
    }
    for (; d < n; ++d) {
      float s = ag[d];
      for (int64_t i = 0; i < num_rows; ++i) s += p[i * ps + g] * static_cast<float>(rows[i * rs + d]);
      ag[d] = s;
    }
  }
}

}  // namespace mini_paged_attn::cpu
