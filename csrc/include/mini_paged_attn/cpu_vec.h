// Small building blocks for the CPU kernels. They use GCC vector extensions
// (16 floats), which lower to AVX-512, AVX2 or SSE depending on the target:
// the calling kernels are compiled for several instruction sets
// (MINI_PAGED_ATTN_CPU_TARGETS) and pick the best at load time, so these
// helpers are force-inlined into each clone.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MINI_PAGED_ATTN_CPU_TARGETS \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MINI_PAGED_ATTN_CPU_TARGETS
#endif
#define MPA_INLINE inline __attribute__((always_inline))

namespace mini_paged_attn::cpu {

constexpr int64_t kWidth = 16;
typedef float vfloat __attribute__((vector_size(kWidth * sizeof(float))));

typedef uint16_t vhalf_bits __attribute__((vector_size(kWidth * sizeof(uint16_t))));
typedef uint32_t vfloat_bits __attribute__((vector_size(kWidth * sizeof(uint32_t))));
typedef _Float16 vhalf __attribute__((vector_size(kWidth * sizeof(_Float16))));

// Loads kWidth values as floats; half types are widened in registers, so the
// kernels read the cache directly with no conversion pass.
MPA_INLINE vfloat vload(const float* p) {
  vfloat v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

MPA_INLINE vfloat vload(const c10::BFloat16* p) {
  // bfloat16 is the upper half of a float32.
  vhalf_bits h;
  std::memcpy(&h, p, sizeof(h));
  const vfloat_bits w = __builtin_convertvector(h, vfloat_bits) << 16;
  vfloat v;
  std::memcpy(&v, &w, sizeof(v));
  return v;
}

MPA_INLINE vfloat vload(const c10::Half* p) {
  vhalf h;
  std::memcpy(&h, p, sizeof(h));
  return __builtin_convertvector(h, vfloat);
}

MPA_INLINE void vstore(float* p, vfloat v) { std::memcpy(p, &v, sizeof(v)); }

typedef float vfloat8 __attribute__((vector_size(8 * sizeof(float))));
typedef float vfloat4 __attribute__((vector_size(4 * sizeof(float))));

// A tree of halves: a plain loop would be 16 dependent scalar adds, since
// without -ffast-math the compiler may not reorder them.
MPA_INLINE float hsum(vfloat v) {
  vfloat8 lo, hi;
  std::memcpy(&lo, &v, sizeof(lo));
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(lo), sizeof(hi));
  const vfloat8 a = lo + hi;
  vfloat4 a_lo, a_hi;
  std::memcpy(&a_lo, &a, sizeof(a_lo));
  std::memcpy(&a_hi, reinterpret_cast<const char*>(&a) + sizeof(a_lo), sizeof(a_hi));
  const vfloat4 b = a_lo + a_hi;
  return (b[0] + b[2]) + (b[1] + b[3]);
}

// out[j] = dot(q[j], k[j]) for four pairs: four independent accumulators hide
// the FMA latency, and the horizontal sums happen once per pair.
template <typename T>
MPA_INLINE void dot4(const float* q0, const float* q1, const float* q2, const float* q3,
                     const T* k0, const T* k1, const T* k2, const T* k3, int64_t n,
                     float* out) {
  vfloat s0 = {}, s1 = {}, s2 = {}, s3 = {};
  int64_t i = 0;
  for (; i + kWidth <= n; i += kWidth) {
    s0 += vload(q0 + i) * vload(k0 + i);
    s1 += vload(q1 + i) * vload(k1 + i);
    s2 += vload(q2 + i) * vload(k2 + i);
    s3 += vload(q3 + i) * vload(k3 + i);
  }
  float t0 = hsum(s0), t1 = hsum(s1), t2 = hsum(s2), t3 = hsum(s3);
  for (; i < n; ++i) {
    t0 += q0[i] * static_cast<float>(k0[i]);
    t1 += q1[i] * static_cast<float>(k1[i]);
    t2 += q2[i] * static_cast<float>(k2[i]);
    t3 += q3[i] * static_cast<float>(k3[i]);
  }
  out[0] = t0;
  out[1] = t1;
  out[2] = t2;
  out[3] = t3;
}

template <typename T>
MPA_INLINE float dot(const float* q, const T* k, int64_t n) {
  vfloat s = {};
  int64_t i = 0;
  for (; i + kWidth <= n; i += kWidth) s += vload(q + i) * vload(k + i);
  float t = hsum(s);
  for (; i < n; ++i) t += q[i] * static_cast<float>(k[i]);
  return t;
}

// y[i] = exp(x[i] - shift) for x[i] - shift <= 0, vectorised (std::exp is a
// scalar libm call). exp(x) = 2^k * exp(r) with |r| <= ln2 / 2 and a degree-6
// Taylor polynomial: relative error ~2e-7.
MPA_INLINE void exp_shifted(const float* x, float shift, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float v = std::max(x[i] - shift, -87.0f);
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer.
    const float k = (v * 1.44269504f + 12582912.f) - 12582912.f;
    const float r = v - k * 0.693145752f - k * 1.42860677e-6f;
    const float poly =
        1.f + r * (1.f + r * (0.5f + r * (1.f / 6 + r * (1.f / 24 + r * (1.f / 120 +
                                                                       r * (1.f / 720))))));
    const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
    float pow2;
    std::memcpy(&pow2, &bits, sizeof(float));
    y[i] = poly * pow2;
  }
}

// acc[g][d] += sum_i p[g][i] * rows[i][d] for the heads g of a group
// (p[g] = p + g * p_stride, acc[g] = acc + g * n). Four heads share each
// loaded row; sums stay in registers for a whole block, which avoids a
// read-modify-write of acc per row (a store-to-load forwarding chain).
template <typename T>
MPA_INLINE void weighted_rows_sum(const T* const* rows, const float* p, int64_t p_stride,
                                  int64_t num_heads, int64_t num_rows, float* acc, int64_t n) {
  int64_t g = 0;
  for (; g + 4 <= num_heads; g += 4) {
    const float *p0 = p + g * p_stride, *p1 = p0 + p_stride, *p2 = p1 + p_stride,
                *p3 = p2 + p_stride;
    float *a0 = acc + g * n, *a1 = a0 + n, *a2 = a1 + n, *a3 = a2 + n;
    int64_t d = 0;
    for (; d + kWidth <= n; d += kWidth) {
      vfloat s0 = vload(a0 + d), s1 = vload(a1 + d), s2 = vload(a2 + d), s3 = vload(a3 + d);
      for (int64_t i = 0; i < num_rows; ++i) {
        const vfloat v = vload(rows[i] + d);
        s0 += p0[i] * v;
        s1 += p1[i] * v;
        s2 += p2[i] * v;
        s3 += p3[i] * v;
      }
      vstore(a0 + d, s0);
      vstore(a1 + d, s1);
      vstore(a2 + d, s2);
      vstore(a3 + d, s3);
    }
    for (; d < n; ++d) {
      for (int64_t i = 0; i < num_rows; ++i) {
        const float v = static_cast<float>(rows[i][d]);
        a0[d] += p0[i] * v;
        a1[d] += p1[i] * v;
        a2[d] += p2[i] * v;
        a3[d] += p3[i] * v;
      }
    }
  }
  for (; g < num_heads; ++g) {
    const float* pg = p + g * p_stride;
    float* ag = acc + g * n;
    int64_t d = 0;
    for (; d + 2 * kWidth <= n; d += 2 * kWidth) {
      vfloat s0 = vload(ag + d), s1 = vload(ag + d + kWidth);
      for (int64_t i = 0; i < num_rows; ++i) {
        s0 += pg[i] * vload(rows[i] + d);
        s1 += pg[i] * vload(rows[i] + d + kWidth);
      }
      vstore(ag + d, s0);
      vstore(ag + d + kWidth, s1);
    }
    for (; d < n; ++d) {
      float s = ag[d];
      for (int64_t i = 0; i < num_rows; ++i) s += pg[i] * static_cast<float>(rows[i][d]);
      ag[d] = s;
    }
  }
}

MPA_INLINE float sum(const float* x, int64_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += x[i];
  return s;
}

MPA_INLINE void scale(float alpha, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] *= alpha;
}

}  // namespace mini_paged_attn::cpu
