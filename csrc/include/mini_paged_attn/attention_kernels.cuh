// One-pass paged decode attention (flash-decoding) on tensor cores. The
// kernel is assembled from decode_traits.cuh (parameters and shape),
// decode_kv_stream.cuh (the copy pipeline), decode_tile_math.cuh (one tile's
// multiplies and softmax) and decode_merge.cuh (the warp and split merges).
//
// A thread block serves one (sequence, kv_head, group of up to 8 query heads,
// context split). Its warps stream disjoint 16-token tiles of K and V through
// their own cp.async pipelines in shared memory, so each K/V page is read from
// memory once per block, whatever the number of query heads it serves. Each
// warp keeps an online softmax of its own; the warps are merged at the end. When
// the batch cannot fill the GPU the context is split too: each split writes a
// partial result, and the last block of a (sequence, kv_head, group) to finish
// merges them, in the same launch.
//
// Scores and the weighted sum of V run on mma.sync m16n8k16 with fp32
// accumulators. Query heads fill rows 0-7 of the A operand and the rounding
// residue of each (x - fp16/bf16(x)) fills rows 8-15, so both the query and the
// probabilities keep about 16 mantissa bits: accuracy close to fp32 arithmetic
// on the cache values, at no extra tensor-core cost. fp32 caches are split the
// same way on the B side (two MMAs instead of one).
#pragma once

#include <cmath>
#include <type_traits>

#include "mini_paged_attn/cuda_utils.cuh"
#include "mini_paged_attn/decode_kv_stream.cuh"
#include "mini_paged_attn/decode_merge.cuh"
#include "mini_paged_attn/decode_tile_math.cuh"
#include "mini_paged_attn/decode_traits.cuh"

namespace mini_paged_attn::cuda {

// A warp's main loop: kStages - 1 tiles in flight while one is computed; the
// page ids of the next tile to issue are loaded one iteration ahead. Each path
// gets its own copy of the loop (a uniform branch around it, none inside).
template <bool kTilePath, typename Tr, typename cache_t>
__device__ __forceinline__ void stream_tiles(const KVStream<Tr, cache_t>& kvs,
                                             const QueryOperand<Tr>& q, HeadState<Tr>& h,
                                             const int (&pages)[Tr::kStages],
                                             const int (&offsets)[Tr::kStages], int my_tiles) {
  constexpr int kStages = Tr::kStages;
  int next_page = pages[kStages - 1], next_offset = offsets[kStages - 1];
  for (int j = 0; j < my_tiles; ++j) {
    const int jn = j + kStages - 1;
    if (jn < my_tiles) kvs.template issue<kTilePath>(jn % kStages, jn, next_page, next_offset);
    cp_async_commit();
    kvs.lookup(jn + 1, next_page, next_offset);
    cp_async_wait<kStages - 1>();
    __syncwarp();
    const unsigned char* ks = kvs.smem + (j % kStages) * Tr::kStageBytes;
    float s[2][4] = {};
    qk_tile<Tr>(s, q, ks);
    uint32_t a[4];
    softmax_tile<Tr>(h, s, kvs.end - kvs.tile_start(j), a);
    pv_tile<Tr>(h, a, ks + Tr::kTileTokens * Tr::kRowBytes);
    __syncwarp();  // the stage is refilled in a later iteration
  }
}

template <typename query_t, typename cache_t, int HEAD_SIZE>
__global__ void __launch_bounds__(AttnTraits<cache_t, HEAD_SIZE>::kThreads)
    paged_attention_kernel(const PagedAttentionParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using Tr = AttnTraits<cache_t, HEAD_SIZE>;
  constexpr int D = HEAD_SIZE;
  constexpr int kWarps = Tr::kWarps, kStages = Tr::kStages, kTile = Tr::kTileTokens;

  // 128-byte aligned, so that swizzled tile rows start on bank-group 0 and each
  // 8-lane group of a copy writes one aligned 128-byte line: with the 16-byte
  // alignment it had, the static shared variables of the split merge put it at
  // byte 16, which made the copies ask L2 for 33 sectors per 512 bytes, not 20.
  extern __shared__ __align__(128) unsigned char smem[];
  unsigned char* q_smem = smem;                   // [16][kQRowBytes]: hi rows, then lo rows
  unsigned char* pipe_smem = smem + Tr::kQBytes;  // per warp: [kStages][K|V][16][kRowBytes]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  const int pairs_per_seq = p.num_kv_heads * p.head_chunks;
  const int seq = blockIdx.x / pairs_per_seq;
  const int kv_head = (blockIdx.x % pairs_per_seq) / p.head_chunks;
  const int chunk = blockIdx.x % p.head_chunks;
  const int head0 = kv_head * p.group_size + chunk * Tr::kHeads;
  const int num_q = min(Tr::kHeads, p.group_size - chunk * Tr::kHeads);
  const int split = blockIdx.y;

  // The prologue's global loads (context length, query, first page ids) do not
  // depend on each other: issue them together, so a block pays one memory
  // latency before its first K/V copies instead of several in a row. Every
  // load is issued before any value is used (masked ones read element 0):
  // loads under a condition were compiled as load-use pairs, one memory latency
  // each, which ncu put at 29% of the stall samples with 256-token contexts.
  const int start = split * p.split_len;
  const int context_len_raw = p.kv.context_lens[seq];
  const query_t* q_in = static_cast<const query_t*>(p.query) + seq * p.q_seq_stride;
  query_t q_raw[kQueryPerThread<Tr>];
#pragma unroll
  for (int k = 0; k < kQueryPerThread<Tr>; ++k) {
    q_raw[k] = q_in[max(query_offset<Tr>(p, head0, num_q, k), int64_t{0})];
  }
  KVStream<Tr, cache_t> kvs{p.kv};
  kvs.start = start;
  kvs.warp = warp;
  kvs.lane = lane;
  kvs.tile_path = p.log2_block_size >= 4 && !p.evict_first;
  kvs.block_table = p.kv.block_tables + seq * p.kv.block_table_stride;
  kvs.offset_mask = (1 << p.log2_block_size) - 1;
  kvs.log2_block_size = p.log2_block_size;
  kvs.lookup_end = min(p.max_context, start + p.split_len);
  int pages[kStages], offsets[kStages];
#pragma unroll
  for (int st = 0; st < kStages; ++st) kvs.lookup(st, pages[st], offsets[st]);

  const int context_len = min(context_len_raw, p.max_context);
  query_t* out = static_cast<query_t*>(p.out) + seq * p.out_seq_stride;
  if (start >= context_len) {
    // Empty split: the merge ignores it; an empty context has a zero output.
    if (split == 0) {
      for (int i = threadIdx.x; i < num_q * D; i += Tr::kThreads) {
        const int head = head0 + i / D, e = head_elem<D>(p, head, i % D);
        if (e >= 0) out[head * p.out_head_stride + e] = Convert<query_t>::from_float(0.f);
      }
    }
    return;
  }
  kvs.end = min(context_len, start + p.split_len);
  const int used_splits = (context_len + p.split_len - 1) / p.split_len;  // non-empty ones
  const int num_tiles = (kvs.end - start + kTile - 1) / kTile;
  const int my_tiles = warp < num_tiles ? (num_tiles - warp + kWarps - 1) / kWarps : 0;
  kvs.smem = pipe_smem + warp * kStages * Tr::kStageBytes;
  kvs.k_base = static_cast<const cache_t*>(p.kv.key_cache) + kv_head * p.kv.k_head_stride;
  kvs.v_base = static_cast<const cache_t*>(p.kv.value_cache) + kv_head * p.kv.v_head_stride;
  kvs.policy = p.evict_first ? l2_evict_first_policy() : kL2EvictNormal;
  if (kvs.tile_path) {
    kvs.template fill<true>(pages, offsets, my_tiles);
  } else {
    kvs.template fill<false>(pages, offsets, my_tiles);
  }

  store_query<Tr>(p, q_smem, q_raw, head0, num_q);
  __syncthreads();
  HeadState<Tr> h;
#pragma unroll
  for (int n = 0; n < D / 8; ++n) h.o[n][0] = h.o[n][1] = h.o[n][2] = h.o[n][3] = 0.f;
  h.m = -INFINITY;
  h.l = 0.f;
  QueryOperand<Tr> q;
  q.smem = q_smem;
  q.load();
  if (kvs.tile_path) {
    stream_tiles<true>(kvs, q, h, pages, offsets, my_tiles);
  } else {
    stream_tiles<false>(kvs, q, h, pages, offsets, my_tiles);
  }
  cp_async_wait<0>();

  merge_warps<Tr>(p, pipe_smem, h, seq, head0, num_q, split, used_splits, out);
  if (used_splits == 1) return;
  merge_splits<Tr>(p, pipe_smem, seq, head0, num_q, used_splits, out);
#else
  __trap();  // the host side refuses devices older than sm_80
#endif
}

}  // namespace mini_paged_attn::cuda
