// One-pass paged decode attention (flash-decoding) on tensor cores.
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

// Every block of a split launch calls this after writing its partial row; the
// last block of its (sequence, kv_head, group) to arrive merges the row's
// splits into `out`. `smem` is the block's pipeline buffer, idle by then.
template <typename Tr, typename query_t>
__device__ __forceinline__ void merge_splits(const PagedAttentionParams& p, unsigned char* smem,
                                             int seq, int head0, int num_q, int used_splits,
                                             query_t* out) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  constexpr int D = Tr::kHeadSize, kWarps = Tr::kWarps;
  constexpr unsigned kFull = 0xffffffffu;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  // Every thread's partial writes precede the barrier, so thread 0's
  // release orders them (cumulatively) before its arrival; the last arrival's
  // acquire orders every split's partial before the copies below.
  __shared__ bool merge_here;
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned int* counter = split_arrivals + p.counter_base + blockIdx.x;
    merge_here = atomic_add_acq_rel(counter, 1u) == static_cast<unsigned int>(used_splits - 1);
    if (merge_here) *counter = 0u;  // every arrival is in: leave it at zero for the next launch
  }
  __syncthreads();
  if (!merge_here) return;

  // The merge runs at the tail of the launch, where each round trip to L2
  // takes over a microsecond (other blocks still stream), so it makes one: the
  // partial rows of each head, a contiguous run, are copied into shared memory
  // (in batches when they do not fit) and merged there. On sm_90 the copy
  // engine moves each run in one instruction; 16-byte cp.async copies issued
  // by the block took 2 us, queued behind the SM's other block's stream.
  constexpr int kPart = D + 4;  // floats a partial row
  // Per head: the running max and sum over the batches merged so far, the
  // factor that rescales them to the current batch's max, and its split weights.
  float* head_state = reinterpret_cast<float*>(smem);  // [3][kHeads]: max, sum, rescale
  float* weights = head_state + 3 * Tr::kHeads;              // [num_q][batch]
  const int batch = min(used_splits, (Tr::kBufferBytes / 4 - 4 * Tr::kHeads) /
                                         (num_q * (kPart + 1)));
  float* parts = weights + ((num_q * batch + 3) & ~3);  // [num_q][batch][kPart], 16 B aligned
  const float* part_rows =
      p.tmp_out + (static_cast<int64_t>(seq) * p.num_heads + head0) * p.num_splits * kPart;
  __shared__ uint64_t parts_ready;  // completion of the bulk copies (sm_90)
  auto copy_parts = [&](int s0) {
    const int n = min(batch, used_splits - s0);
    const float* src = part_rows + s0 * kPart;
#if __CUDA_ARCH__ >= 900
    if (threadIdx.x == 0) {
      if (s0 == 0) mbarrier_init(&parts_ready);
      fence_proxy_async();  // after the acquire, and after this block's own accesses to the buffer
      mbarrier_expect_tx(&parts_ready, num_q * n * kPart * 4);
      for (int g = 0; g < num_q; ++g) {
        bulk_copy_g2s(parts + g * batch * kPart, src + g * p.num_splits * kPart, n * kPart * 4,
                      &parts_ready);
      }
    }
#else
    for (int g = 0; g < num_q; ++g) {
      for (int k = threadIdx.x; k < n * kPart / 4; k += Tr::kThreads) {
        cp_async_16(parts + g * batch * kPart + k * 4, src + g * p.num_splits * kPart + k * 4, true);
      }
    }
    cp_async_commit();
#endif
  };

  // Splits are merged in order, so the result does not depend on which block
  // merges: a warp per head turns a batch's maxima and sums into weights, then
  // each thread accumulates four output elements.
  constexpr int kOutPerThread = (Tr::kHeads * D / 4 + Tr::kThreads - 1) / Tr::kThreads;
  float4 acc[kOutPerThread];
#pragma unroll
  for (int k = 0; k < kOutPerThread; ++k) acc[k] = make_float4(0.f, 0.f, 0.f, 0.f);
  if (threadIdx.x < Tr::kHeads) {
    head_state[threadIdx.x] = -INFINITY;
    head_state[Tr::kHeads + threadIdx.x] = 0.f;
  }
  copy_parts(0);
  __syncthreads();  // the mbarrier's initialisation, before anyone waits on it
  for (int b = 0, s0 = 0; s0 < used_splits; ++b, s0 += batch) {
    if (b > 0) {
      __syncthreads();  // every thread is done with the previous batch
      copy_parts(s0);
    }
#if __CUDA_ARCH__ >= 900
    mbarrier_wait(&parts_ready, b & 1);
#else
    cp_async_wait<0>();
    __syncthreads();
#endif
    const int n = min(batch, used_splits - s0);
    for (int g = warp; g < num_q; g += kWarps) {
      const float* rows = parts + g * batch * kPart;
      float m_new = head_state[g];
      for (int s = lane; s < n; s += 32) m_new = fmaxf(m_new, rows[s * kPart + D]);
#pragma unroll
      for (int mask = 16; mask > 0; mask /= 2) {
        m_new = fmaxf(m_new, __shfl_xor_sync(kFull, m_new, mask));
      }
      float sum = 0.f;
      for (int s = lane; s < n; s += 32) {
        const float w = exp2f(rows[s * kPart + D] - m_new) * rows[s * kPart + D + 1];
        weights[g * batch + s] = w;
        sum += w;
      }
#pragma unroll
      for (int mask = 16; mask > 0; mask /= 2) sum += __shfl_xor_sync(kFull, sum, mask);
      if (lane == 0) {
        const float rescale = exp2f(head_state[g] - m_new);  // 0 on the first batch
        head_state[g] = m_new;
        head_state[Tr::kHeads + g] = head_state[Tr::kHeads + g] * rescale + sum;
        head_state[2 * Tr::kHeads + g] = rescale;
      }
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kOutPerThread; ++k) {
      const int i = threadIdx.x + k * Tr::kThreads;
      if (i >= num_q * D / 4) break;
      const int g = i / (D / 4), d = i % (D / 4) * 4;
      const float rescale = head_state[2 * Tr::kHeads + g];
      float4 a = make_float4(acc[k].x * rescale, acc[k].y * rescale, acc[k].z * rescale,
                             acc[k].w * rescale);
      const float* w = weights + g * batch;
      const float* rows = parts + g * batch * kPart + d;
#pragma unroll 4
      for (int s = 0; s < n; ++s) {
        const float4 v = *reinterpret_cast<const float4*>(rows + s * kPart);
        a.x += w[s] * v.x;
        a.y += w[s] * v.y;
        a.z += w[s] * v.z;
        a.w += w[s] * v.w;
      }
      acc[k] = a;
    }
  }
#pragma unroll
  for (int k = 0; k < kOutPerThread; ++k) {
    const int i = threadIdx.x + k * Tr::kThreads;
    if (i >= num_q * D / 4) break;
    const int g = i / (D / 4), d = i % (D / 4) * 4;
    const int e = head_elem<D>(p, head0 + g, d);
    if (e < 0) continue;  // the other head's half of a paired row
    const float scale = 1.f / head_state[Tr::kHeads + g];
    query_t* o = out + (head0 + g) * p.out_head_stride + e;
    o[0] = Convert<query_t>::from_float(acc[k].x * scale);
    o[1] = Convert<query_t>::from_float(acc[k].y * scale);
    o[2] = Convert<query_t>::from_float(acc[k].z * scale);
    o[3] = Convert<query_t>::from_float(acc[k].w * scale);
  }
#endif
}

template <typename query_t, typename cache_t, int HEAD_SIZE>
__global__ void __launch_bounds__(AttnTraits<cache_t, HEAD_SIZE>::kThreads)
    paged_attention_kernel(const PagedAttentionParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using Tr = AttnTraits<cache_t, HEAD_SIZE>;
  using mma_t = typename Tr::mma_t;
  constexpr int D = HEAD_SIZE;
  constexpr int kWarps = Tr::kWarps, kStages = Tr::kStages, kTile = Tr::kTileTokens;
  constexpr unsigned kFull = 0xffffffffu;

  // 128-byte aligned, so that swizzled tile rows start on bank-group 0 and each
  // 8-lane group of a copy writes one aligned 128-byte line: with the 16-byte
  // alignment it had, the static `merge_here` (merge_splits) put it at byte 16,
  // which made the copies ask L2 for 33 sectors per 512 bytes instead of 20.
  extern __shared__ __align__(128) unsigned char smem[];
  unsigned char* q_smem = smem;                   // [16][kQRowBytes]: hi rows, then lo rows
  unsigned char* pipe_smem = smem + Tr::kQBytes;  // per warp: [kStages][K|V][16][kRowBytes]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int gid = lane / 4, tig = lane % 4;  // mma fragment coordinates

  const int pairs_per_seq = p.num_kv_heads * p.head_chunks;
  const int seq = blockIdx.x / pairs_per_seq;
  const int kv_head = (blockIdx.x % pairs_per_seq) / p.head_chunks;
  const int chunk = blockIdx.x % p.head_chunks;
  const int head0 = kv_head * p.group_size + chunk * Tr::kHeads;
  const int num_q = min(Tr::kHeads, p.group_size - chunk * Tr::kHeads);
  const int split = blockIdx.y;

  // The prologue's global loads (context length, query, first page ids) do not
  // depend on each other: issue them together, so a block pays one memory
  // latency before its first K/V copies instead of several in a row.
  const int start = split * p.split_len;
  const int context_len_raw = p.kv.context_lens[seq];

  // Where this thread's query element k sits in the sequence's query (head
  // head0 + i / D), or -1 past num_q and in the sibling half of a paired row.
  constexpr int kQPerThread = Tr::kHeads * D / Tr::kThreads;
  static_assert(Tr::kHeads * D % Tr::kThreads == 0, "query rows must split evenly");
  auto q_offset = [&](int k) -> int64_t {
    const int i = threadIdx.x + k * Tr::kThreads, g = i / D;
    const int e = g < num_q ? head_elem<D>(p, head0 + g, i % D) : -1;
    return e >= 0 ? (head0 + g) * p.q_head_stride + e : -1;
  };
  // Every load is issued before any value is used (masked ones read element 0):
  // loads under a condition were compiled as load-use pairs, one memory latency
  // each, which ncu put at 29% of the stall samples with 256-token contexts.
  const query_t* q = static_cast<const query_t*>(p.query) + seq * p.q_seq_stride;
  query_t q_raw[kQPerThread];
#pragma unroll
  for (int k = 0; k < kQPerThread; ++k) q_raw[k] = q[max(q_offset(k), int64_t{0})];

  // Warp w takes tiles w, w + kWarps, ... of the split. Tiles start on
  // multiples of 16 tokens, so with blocks of 16 tokens or more a tile lies in
  // one page (the tile path): every lane looks up the page of the tile's first
  // token, and row r is r token strides further: no shuffles and one 64-bit
  // multiply a tile. Otherwise (and in evict-first launches, see `issue`)
  // lanes l and l + 16 look up the page of token l, and each row takes its page
  // from that lane (the row path).
  // Lookups are speculative (bounded by the block-table row, not yet by the
  // context): a page is used only for tokens before `end`; later tokens are
  // zero-filled, never read (they may be NaN).
  const bool tile_path = p.log2_block_size >= 4 && !p.evict_first;
  auto tile_start = [&](int j) { return start + (warp + j * kWarps) * kTile; };
  const int32_t* block_table = p.kv.block_tables + seq * p.kv.block_table_stride;
  const int offset_mask = (1 << p.log2_block_size) - 1;
  const int lookup_end = min(p.max_context, start + p.split_len);
  auto lookup = [&](int j, int& page, int& offset) {
    const int tok = tile_start(j) + (tile_path ? 0 : lane & 15);
    page = 0;
    offset = tok & offset_mask;
    if (tok < lookup_end) page = __ldg(block_table + (tok >> p.log2_block_size));
  };
  int pages[kStages], offsets[kStages];
#pragma unroll
  for (int st = 0; st < kStages; ++st) lookup(st, pages[st], offsets[st]);

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
  const int end = min(context_len, start + p.split_len);
  const int used_splits = (context_len + p.split_len - 1) / p.split_len;  // non-empty ones
  const int num_tiles = (end - start + kTile - 1) / kTile;
  const int my_tiles = warp < num_tiles ? (num_tiles - warp + kWarps - 1) / kWarps : 0;

  unsigned char* wsmem = pipe_smem + warp * kStages * Tr::kStageBytes;
  const PagedKV& kv = p.kv;
  const cache_t* k_base = static_cast<const cache_t*>(kv.key_cache) + kv_head * kv.k_head_stride;
  const cache_t* v_base = static_cast<const cache_t*>(kv.value_cache) + kv_head * kv.v_head_stride;
  const uint64_t policy = p.evict_first ? l2_evict_first_policy() : kL2EvictNormal;
  // Consecutive lanes copy consecutive 16-byte pieces of a row: coalesced.
  // The tile path copies without a policy operand, so evict-first launches
  // take the row path: with a cache-hint operand, ptxas 13.0 (V13.0.88) turned
  // the tile path's copies into LDGSTS instructions that read the policy from
  // an odd uniform register, which the GPU stops as an illegal instruction
  // (docs/archive/perf-notes-2026-11.md).
  auto issue = [&](auto tile_path_c, int stage, int j, int page, int offset) {
    unsigned char* ks = wsmem + stage * Tr::kStageBytes;
    unsigned char* vs = ks + kTile * Tr::kRowBytes;
    const int valid_rows = end - tile_start(j);
    constexpr bool kTilePath = decltype(tile_path_c)::value;
    const int row0 = tile_start(j) & offset_mask;  // tile path: the tile's first row in its page
    const cache_t* k_tile = k_base + int64_t{page} * kv.k_block_stride + row0 * kv.k_token_stride;
    const cache_t* v_tile = v_base + int64_t{page} * kv.v_block_stride + row0 * kv.v_token_stride;
#pragma unroll
    for (int k = 0; k < Tr::kChunks / 2; ++k) {
      const int idx = lane + 32 * k;
      const int row = idx / Tr::kChunks, c = idx % Tr::kChunks;
      const int elem = c * (16 / int(sizeof(cache_t)));
      const int dst = Tr::offset(row, c);
      const bool valid = row < valid_rows;
      if constexpr (kTilePath) {
        cp_async_16(ks + dst, k_tile + row * kv.k_token_stride + elem, valid);
        cp_async_16(vs + dst, v_tile + row * kv.v_token_stride + elem, valid);
      } else {
        const int pg = __shfl_sync(kFull, page, row), off = __shfl_sync(kFull, offset, row);
        const int64_t blk = valid ? pg : 0;  // rows past the context may hold garbage ids
        cp_async_16(ks + dst, k_base + blk * kv.k_block_stride + off * kv.k_token_stride + elem,
                    valid, policy);
        cp_async_16(vs + dst, v_base + blk * kv.v_block_stride + off * kv.v_token_stride + elem,
                    valid, policy);
      }
    }
  };

  // Pipeline: kStages - 1 tiles in flight while one is computed; the page ids
  // of the next tile to issue are loaded one iteration ahead. Each path gets
  // its own copy of the loops (a uniform branch around them, none inside).
  auto fill = [&](auto tile_path_c) {
#pragma unroll
    for (int st = 0; st < kStages - 1; ++st) {
      if (st < my_tiles) issue(tile_path_c, st, st, pages[st], offsets[st]);
      cp_async_commit();
    }
  };
  if (tile_path) {
    fill(std::true_type{});
  } else {
    fill(std::false_type{});
  }

  // Query rows, pre-scaled, as hi and lo 16-bit parts; rows past num_q are zero.
#pragma unroll
  for (int k = 0; k < kQPerThread; ++k) {
    const int i = threadIdx.x + k * Tr::kThreads, g = i / D, d = i % D;
    float hi, lo;
    const float q_val = q_offset(k) >= 0 ? Convert<query_t>::to_float(q_raw[k]) : 0.f;
    split_hi_lo<mma_t>(q_val * p.scale_log2, hi, lo);
    reinterpret_cast<mma_t*>(q_smem + g * Tr::kQRowBytes)[d] = Convert<mma_t>::from_float(hi);
    reinterpret_cast<mma_t*>(q_smem + (g + 8) * Tr::kQRowBytes)[d] =
        Convert<mma_t>::from_float(lo);
  }
  __syncthreads();

  float o[D / 8][4];  // accumulator tiles: rows gid (hi) and gid + 8 (lo) of head gid
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  float m = -INFINITY;  // running max (log2 domain) of head gid
  float l = 0.f;        // this lane's part of the running sum of exp2

  // Every tile multiplies by the same query: its A fragments are loaded once
  // when they fit in registers (head size <= 128), else once per tile.
  constexpr bool kQInRegs = D <= 128;
  uint32_t q_frag[kQInRegs ? D / 16 : 1][4];
  auto load_q_frag = [&](int kk, uint32_t(&a)[4]) {
    ldmatrix_x4(a, q_smem + ((lane & 7) + ((lane >> 3) & 1) * 8) * Tr::kQRowBytes +
                       (kk * 16 + (lane >> 4) * 8) * 2);
  };
  if constexpr (kQInRegs) {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) load_q_frag(kk, q_frag[kk]);
  }

  auto compute = [&](int stage, int j) {
    const unsigned char* ks = wsmem + stage * Tr::kStageBytes;
    const unsigned char* vs = ks + kTile * Tr::kRowBytes;

    // S = Q K^T for 16 tokens: s[n] holds tokens 8n + 2 tig + {0, 1}.
    float s[2][4] = {};
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t a[4];
      if constexpr (kQInRegs) {
#pragma unroll
        for (int r = 0; r < 4; ++r) a[r] = q_frag[kk][r];
      } else {
        load_q_frag(kk, a);
      }
      if constexpr (!Tr::kFloatCache) {
        uint32_t b[4];
        ldmatrix_x4(b, ks + Tr::offset((lane & 7) + (lane >> 4) * 8, kk * 2 + ((lane >> 3) & 1)));
        mma_16816<mma_t>(s[0], a, b[0], b[1]);
        mma_16816<mma_t>(s[1], a, b[2], b[3]);
      } else {
#pragma unroll
        for (int n = 0; n < 2; ++n) {
          // Elements kk * 16 + 2 tig (+ 8) of row n * 8 + gid: 4 floats a chunk.
          const unsigned char* k = ks + (tig & 1) * 8;
          const int row = n * 8 + gid;
          const float2 k0 = *reinterpret_cast<const float2*>(k + Tr::offset(row, kk * 4 + tig / 2));
          const float2 k1 =
              *reinterpret_cast<const float2*>(k + Tr::offset(row, kk * 4 + 2 + tig / 2));
          float h[4], r[4];
          split_hi_lo<mma_t>(k0.x, h[0], r[0]);
          split_hi_lo<mma_t>(k0.y, h[1], r[1]);
          split_hi_lo<mma_t>(k1.x, h[2], r[2]);
          split_hi_lo<mma_t>(k1.y, h[3], r[3]);
          mma_16816<mma_t>(s[n], a, Convert<mma_t>::pack2(h[0], h[1]),
                           Convert<mma_t>::pack2(h[2], h[3]));
          mma_16816<mma_t>(s[n], a, Convert<mma_t>::pack2(r[0], r[1]),
                           Convert<mma_t>::pack2(r[2], r[3]));
        }
      }
    }

    // Online softmax of head gid over this tile; masked tokens get exp2(-inf) = 0.
    const int valid_tokens = end - tile_start(j);
    float x[2][2];
    float tile_max = -INFINITY;
#pragma unroll
    for (int n = 0; n < 2; ++n) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        x[n][e] = n * 8 + tig * 2 + e < valid_tokens ? s[n][e] + s[n][e + 2] : -INFINITY;
        tile_max = fmaxf(tile_max, x[n][e]);
      }
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(kFull, tile_max, 1));
    tile_max = fmaxf(tile_max, __shfl_xor_sync(kFull, tile_max, 2));
    const float m_new = fmaxf(m, tile_max);  // finite: token 0 of a tile is always valid
    const float alpha = exp2f(m - m_new);    // 0 on the first tile
    m = m_new;
    // Once the maxima settle, no head's max moves and alpha is exactly 1 in the
    // whole warp: skip the rescale then.
    if (__any_sync(kFull, alpha != 1.f)) {
      l *= alpha;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) o[n][e] *= alpha;
      }
    }

    // P as the A operand: row gid = hi parts, row gid + 8 = lo parts.
    uint32_t a[4];
#pragma unroll
    for (int n = 0; n < 2; ++n) {
      float h[2], r[2];
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float pr = exp2f(x[n][e] - m_new);
        l += pr;
        split_hi_lo<mma_t>(pr, h[e], r[e]);
      }
      a[2 * n] = Convert<mma_t>::pack2(h[0], h[1]);
      a[2 * n + 1] = Convert<mma_t>::pack2(r[0], r[1]);
    }

    // O += P V.
    if constexpr (!Tr::kFloatCache) {
#pragma unroll
      for (int n = 0; n < D / 8; n += 2) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, vs + Tr::offset((lane & 7) + ((lane >> 3) & 1) * 8, n + (lane >> 4)));
        mma_16816<mma_t>(o[n], a, b[0], b[1]);
        mma_16816<mma_t>(o[n + 1], a, b[2], b[3]);
      }
    } else {
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        // Element n * 8 + gid of rows 2 tig, 2 tig + 1, 2 tig + 8, 2 tig + 9.
        const unsigned char* v = vs + (gid & 3) * 4;
        const int chunk = n * 2 + gid / 4;
        float v_rows[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          v_rows[e] = *reinterpret_cast<const float*>(
              v + Tr::offset(tig * 2 + (e & 1) + (e >> 1) * 8, chunk));
        }
        float h[4], r[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) split_hi_lo<mma_t>(v_rows[e], h[e], r[e]);
        mma_16816<mma_t>(o[n], a, Convert<mma_t>::pack2(h[0], h[1]),
                         Convert<mma_t>::pack2(h[2], h[3]));
        mma_16816<mma_t>(o[n], a, Convert<mma_t>::pack2(r[0], r[1]),
                         Convert<mma_t>::pack2(r[2], r[3]));
      }
    }
  };

  auto stream = [&](auto tile_path_c) {
    int next_page = pages[kStages - 1], next_offset = offsets[kStages - 1];
    for (int j = 0; j < my_tiles; ++j) {
      const int jn = j + kStages - 1;
      if (jn < my_tiles) issue(tile_path_c, jn % kStages, jn, next_page, next_offset);
      cp_async_commit();
      lookup(jn + 1, next_page, next_offset);
      cp_async_wait<kStages - 1>();
      __syncwarp();
      compute(j % kStages, j);
      __syncwarp();  // the stage is refilled in a later iteration
    }
  };
  if (tile_path) {
    stream(std::true_type{});
  } else {
    stream(std::false_type{});
  }
  cp_async_wait<0>();
  l += __shfl_xor_sync(kFull, l, 1);
  l += __shfl_xor_sync(kFull, l, 2);

  // Merge the warps through shared memory (the pipeline buffers, now idle).
  __syncthreads();
  float* merge_o = reinterpret_cast<float*>(pipe_smem);  // [kWarps][8][D]
  float* merge_m = merge_o + kWarps * Tr::kHeads * D;     // [kWarps][8]
  float* merge_l = merge_m + kWarps * Tr::kHeads;         // [kWarps][8]
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    *reinterpret_cast<float2*>(merge_o + (warp * Tr::kHeads + gid) * D + n * 8 + tig * 2) =
        make_float2(o[n][0] + o[n][2], o[n][1] + o[n][3]);
  }
  if (tig == 0) {
    merge_m[warp * Tr::kHeads + gid] = m;
    merge_l[warp * Tr::kHeads + gid] = l;
  }
  __syncthreads();

  for (int i = threadIdx.x; i < num_q * D; i += Tr::kThreads) {
    const int g = i / D, d = i % D;
    float m_all = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) m_all = fmaxf(m_all, merge_m[w * Tr::kHeads + g]);
    float l_all = 0.f, acc = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float f = exp2f(merge_m[w * Tr::kHeads + g] - m_all);  // 0 for idle warps
      l_all += f * merge_l[w * Tr::kHeads + g];
      acc += f * merge_o[(w * Tr::kHeads + g) * D + d];
    }
    const int head = head0 + g;
    if (used_splits == 1) {
      const int e = head_elem<D>(p, head, d);
      if (e >= 0) out[head * p.out_head_stride + e] = Convert<query_t>::from_float(acc / l_all);
    } else {
      float* part = p.tmp_out + ((static_cast<int64_t>(seq) * p.num_heads + head) * p.num_splits +
                                 split) * (D + 4);
      part[d] = acc / l_all;
      if (d == 0) {
        part[D] = m_all;
        part[D + 1] = l_all;
      }
    }
  }
  if (used_splits == 1) return;

  merge_splits<Tr>(p, pipe_smem, seq, head0, num_q, used_splits, out);
#else
  __trap();  // the host side refuses devices older than sm_80
#endif
}

}  // namespace mini_paged_attn::cuda
