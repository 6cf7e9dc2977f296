// The decode kernel's launch parameters and compile-time shape
// (attention_kernels.cuh): what a block serves, its pipeline's stages and its
// shared-memory layout.
#pragma once

#include <type_traits>

#include "mini_paged_attn/cuda_utils.cuh"

namespace mini_paged_attn::cuda {

// Arrival counters of split launches, one per (sequence, kv_head, group) of a
// launch. Zero at module load (PTX zero-fills .global variables), and every
// launch leaves them at zero (the merging block resets its counter), so there is
// nothing to allocate or clear per call and CUDA-graph replays start from zero.
constexpr int kSplitCounters = 1 << 16;
__device__ unsigned int split_arrivals[kSplitCounters];

// Everything one launch of the decode kernel needs. Strides are in elements.
struct PagedAttentionParams {
  void* out;                    // [num_seqs, num_heads, head_size], query dtype
  // Split partials (num_splits > 1), [num_seqs, num_heads, num_splits, head_size + 4]:
  // the split's normalised output, then its max score (log2 domain) and sum of exp2.
  float* tmp_out;
  const void* query;            // [num_seqs, num_heads, head_size]
  PagedKV kv;
  int64_t out_seq_stride, out_head_stride;
  int64_t q_seq_stride, q_head_stride;
  int num_heads, num_kv_heads;
  int group_size;   // num_heads / num_kv_heads
  int head_chunks;  // blocks per kv head: ceil(group_size / 8)
  int log2_block_size;
  int max_context;  // max_blocks_per_seq * block_size: contexts are clamped to it
  int split_len;    // tokens per split, a multiple of the block's tile
  int num_splits;
  int counter_base;  // this launch's range of split_arrivals starts here (num_splits > 1)
  float scale_log2;  // softmax scale * log2(e): the kernel works with exp2
  // > 0: head pairing (see pair_heads on the host). Each KV head of the launch
  // is two adjacent KV heads of size HEAD_SIZE / 2; query head h has its
  // elements in half (h / paired_group) % 2 of the row, zeros in the other.
  int paired_group;
  bool evict_first;  // K/V copies marked evict-first in L2 (see kL2EvictNormal)
};

// Query heads a block serves: MMA rows 0-7, with their residues in rows 8-15.
constexpr int kHeadsPerBlock = 8;

// Which element of query head `head` (and of its output) element d of a
// launch's row is: d itself; with head pairing, d's offset within the head's
// half of the row, or -1 for the sibling head's half.
template <int D>
__device__ __forceinline__ int head_elem(const PagedAttentionParams& p, int head, int d) {
  if (p.paired_group == 0) return d;
  return d / (D / 2) == (head / p.paired_group) % 2 ? d % (D / 2) : -1;
}

template <typename cache_t, int HEAD_SIZE>
struct AttnTraits {
  // fp32 caches are fed to bf16 tensor cores as hi + lo pairs.
  using mma_t = std::conditional_t<std::is_same_v<cache_t, __half>, __half, __nv_bfloat16>;
  static constexpr bool kFloatCache = std::is_same_v<cache_t, float>;
  static constexpr int kHeadSize = HEAD_SIZE;
  static constexpr int kHeads = kHeadsPerBlock;
  static constexpr int kTileTokens = 16;  // tokens per warp and pipeline stage: one MMA k-step
  static constexpr int kChunks = HEAD_SIZE * int(sizeof(cache_t)) / 16;  // 16-byte pieces a row
  // The 8 rows an ldmatrix reads must hit distinct bank groups. Rows of whole
  // 128-byte lines are XOR-swizzled (chunk c of row r stored at c ^ (r % 8)), so a
  // warp's copies write whole aligned lines: a 16-byte pad per row instead costs
  // 25 L2 sectors per 512-byte copy instruction instead of 20, and 3% of the
  // stream (docs/archive/perf-notes-2026-11.md). Other row sizes keep the pad.
  static constexpr bool kSwizzle = kChunks % 8 == 0;
  static constexpr int kRowBytes = HEAD_SIZE * int(sizeof(cache_t)) + (kSwizzle ? 0 : 16);
  // Byte offset of 16-byte chunk `chunk` of row `row` in a K or V tile.
  static __device__ __forceinline__ int offset(int row, int chunk) {
    return row * kRowBytes + ((kSwizzle ? chunk ^ (row & 7) : chunk) << 4);
  }
  static constexpr int kStageBytes = 2 * kTileTokens * kRowBytes;  // K tile + V tile
  // Four warps unless two stages of four would not fit (fp32, head size 256).
  static constexpr int kWarps = 2 * 4 * kStageBytes <= 160 * 1024 ? 4 : 2;
  // About 120 KB of stages a block: two blocks an SM for head size 128 with
  // 16-bit caches, and well over the bytes in flight HBM3 needs.
  static constexpr int kStages = 120 * 1024 / (kWarps * kStageBytes) < 2   ? 2
                                 : 120 * 1024 / (kWarps * kStageBytes) > 4 ? 4
                                 : 120 * 1024 / (kWarps * kStageBytes);
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kBlockTokens = kWarps * kTileTokens;  // split lengths are multiples
  static constexpr int kQRowBytes = HEAD_SIZE * 2 + 16;
  static constexpr int kQBytes = 16 * kQRowBytes;
  static constexpr int kPipeBytes = kWarps * kStages * kStageBytes;
  static constexpr int kWarpMergeBytes = kWarps * kHeads * (HEAD_SIZE + 2) * 4;
  // The pipeline buffers, reused by the warp merge and the split merge.
  static constexpr int kBufferBytes = kPipeBytes > kWarpMergeBytes ? kPipeBytes : kWarpMergeBytes;
  static constexpr int kSmemBytes = kQBytes + kBufferBytes;
  // The split merge holds at least one partial row (and weight) of every head at a time.
  static_assert(kHeads * (HEAD_SIZE + 10) * 4 + 16 <= kBufferBytes,
                "split merge buffer too small");
  static_assert(HEAD_SIZE % 16 == 0, "head_size must be a multiple of 16");
  static_assert(kChunks % 2 == 0, "a 16-token tile must split evenly over 32 lanes");
};

}  // namespace mini_paged_attn::cuda
