// Integer finalisers shared by the prefix-cache block hash and the sampling
// noise, callable from host and device code.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define MPA_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MPA_HOST_DEVICE inline
#endif

namespace mini_paged_attn {

// SplitMix64's finaliser: a bijection in which every input bit reaches every output bit.
MPA_HOST_DEVICE uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// A 32-bit finaliser ("lowbias32"): cheap in per-element loops, where 64-bit
// multiplies cost several instructions on a GPU.
MPA_HOST_DEVICE uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  return x ^ (x >> 16);
}

}  // namespace mini_paged_attn
