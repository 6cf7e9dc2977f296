// Prefix-cache key of a full KV-cache block: a 64-bit hash chained through the
// parent block's hash, so equal keys mean equal token prefixes (up to 64-bit
// collisions). No seed and no pointers go in: keys are stable across runs.
#pragma once

#include <cstdint>

#include "mini_paged_attn/hash_mix.h"

namespace mini_paged_attn {

// The parent hash of a sequence's first block.
constexpr uint64_t kRootBlockHash = 0;

inline uint64_t hash_block(uint64_t parent_hash, const int64_t* token_ids, int64_t n) {
  uint64_t h = mix64(parent_hash + 0x9e3779b97f4a7c15ULL);
  for (int64_t i = 0; i < n; ++i) h = mix64(h ^ static_cast<uint64_t>(token_ids[i]));
  // The length goes in last so that a block is not a prefix of a longer one.
  return mix64(h ^ static_cast<uint64_t>(n));
}

}  // namespace mini_paged_attn
