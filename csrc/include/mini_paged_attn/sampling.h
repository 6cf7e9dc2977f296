// Counter-based sampling noise shared by the CPU and CUDA sample_tokens
// kernels. Each (row seed, position, token) names one uniform draw, so a
// seeded sequence samples the same tokens alone, in any batch and after a
// preemption (its position is the counter), and no row needs a generator.
#pragma once

#include <cmath>
#include <cstdint>

#include "mini_paged_attn/hash_mix.h"

namespace mini_paged_attn {

// The key of one row's draw: its seed and the position being sampled.
MPA_HOST_DEVICE uint64_t noise_key(int64_t seed, int64_t position) {
  return mix64(static_cast<uint64_t>(seed) ^ mix64(static_cast<uint64_t>(position) +
                                                   0x9E3779B97F4A7C15ull));
}

// The fast approximate log on a GPU: noise needs no last-bit accuracy.
MPA_HOST_DEVICE float fast_log(float x) {
#ifdef __CUDA_ARCH__
  return __logf(x);
#else
  return std::log(x);
#endif
}

// Gumbel(0, 1) noise of `token` under `key`: argmax of logit / T + noise
// samples softmax(logit / T) (the Gumbel-max trick). u is in (0, 1), 24 bits.
MPA_HOST_DEVICE float gumbel_noise(uint64_t key, int64_t token) {
  const uint32_t bits = mix32(mix32(static_cast<uint32_t>(token) ^ static_cast<uint32_t>(key)) ^
                              static_cast<uint32_t>(key >> 32));
  const float u = (static_cast<float>(bits >> 8) + 0.5f) * (1.0f / 16777216.0f);
  return -fast_log(-fast_log(u));
}

}  // namespace mini_paged_attn
