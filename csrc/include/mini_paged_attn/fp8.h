// fp8 KV caches (torch.float8_e4m3fn, torch.float8_e5m2) with vLLM's
// per-tensor scales: reshape_and_cache stores round(x / scale) saturated to
// the format's finite range, attention reads fp8 * scale as float32. Host code.
#pragma once

#include <c10/core/ScalarType.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>

namespace mini_paged_attn {

inline bool is_fp8(at::ScalarType t) {
  return t == at::kFloat8_e4m3fn || t == at::kFloat8_e5m2;
}

// Scales only apply to fp8 caches; other caches ignore them (as vLLM does).
inline float effective_kv_scale(at::ScalarType cache, double scale) {
  return is_fp8(cache) ? static_cast<float>(scale) : 1.f;
}

// x / scale, saturated to cache_t's finite range (c10's cast alone turns
// overflow into NaN for e4m3fn and inf for e5m2), then rounded to nearest even.
template <typename cache_t>
inline cache_t quantize_fp8(float x, float scale) {
  const float limit = static_cast<float>(std::numeric_limits<cache_t>::max());
  return cache_t(std::min(std::max(x / scale, -limit), limit));  // NaN stays NaN
}

namespace cpu {

template <typename Fp8>
struct Fp8Format;
template <>
struct Fp8Format<c10::Float8_e4m3fn> {
  static constexpr int kMantissa = 3, kBias = 7;
  static constexpr bool kIeeeSpecials = false;  // no infinities; S.1111.111 is NaN
};
template <>
struct Fp8Format<c10::Float8_e5m2> {
  static constexpr int kMantissa = 2, kBias = 15;
  static constexpr bool kIeeeSpecials = true;  // exponent all ones: inf / NaN, as in IEEE
};

// Vectors U32 of fp8 codes (zero-extended) to float32 vectors F32, exact for
// every code, in plain integer/float vector operations, so every instruction-
// set level runs it (a table lookup would be a gather). Exponent and mantissa
// move to float position and the exponent is rebiased; a subnormal code is
// first read as the normal 2^(1-bias) * 1.m, which then loses its implicit one
// in an exact subtraction. This never makes float denormals (slow, or zero
// under DAZ).
template <typename Fp8, typename U32, typename F32>
inline __attribute__((always_inline)) F32 fp8_to_float(U32 code) {
  using F = Fp8Format<Fp8>;
  constexpr int M = F::kMantissa;
  constexpr uint32_t kRebias = uint32_t(127 - F::kBias) << 23;
  const U32 mag = code & 0x7fu;
  const U32 subnormal = (U32)(mag < (1u << M));  // exponent field 0 (zero included)
  U32 bits = (mag << (23 - M)) + kRebias + (subnormal & (1u << 23));
  if constexpr (F::kIeeeSpecials) {
    // Exponent all ones maps to float's all ones: inf stays inf, NaN stays NaN.
    bits += (U32)(mag >= (0x7fu & ~((1u << M) - 1))) & kRebias;
  } else {
    const U32 nan = (U32)(mag == 0x7fu);
    bits = (bits & ~nan) | (nan & 0x7fc00000u);
  }
  const U32 implicit_one = subnormal & (uint32_t(128 - F::kBias) << 23);  // 2^(1-bias)
  F32 f, one;
  std::memcpy(&f, &bits, sizeof(f));
  std::memcpy(&one, &implicit_one, sizeof(one));
  f -= one;
  std::memcpy(&bits, &f, sizeof(f));
  bits |= (code & 0x80u) << 24;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

}  // namespace cpu
}  // namespace mini_paged_attn
