// What the two tensor-core prefill kernels share (prefill_tc_kernel.cuh on
// mma.sync, prefill_wgmma_kernel.cuh on wgmma): which (sequence, query tile,
// heads) a CTA owns, and the per-thread work on score and output fragments.
//
// Fragments follow the tensor cores' accumulator layout: a warp owns MT
// m-tiles of 16 rows; in each, a thread holds rows lane / 4 and lane / 4 + 8,
// and in column chunk j (8 columns) the two columns j * 8 + (lane % 4) * 2 +
// {0, 1}. Element e of a chunk is row half e / 2, column e % 2. Row rr of a
// thread is m-tile rr / 2, half rr % 2.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "mini_paged_attn/prefill_tc.cuh"

namespace mini_paged_attn::cuda::prefill_tiles {

// Where a CTA's rows are: which sequence and query tile, which heads.
struct TileCoords {
  int seq, first_token, tokens;  // query rows [first_token, first_token + tokens) of query
  int first_pos;                 // position of the tile's first token in its sequence
  int kv_end;                    // the tile's keys: positions [0, kv_end)
  int kv_head, first_head, heads;
};

// Tile `idx` of the launch in sequence order, for head chunk `y` (kv head
// y / head_chunks); each warp scans 32 sequences at a time. Tiles of one
// sequence are handed out last first: the ones with the most keys start
// earliest. False when idx is past the last tile.
__device__ __forceinline__ bool find_tile(const PrefillTcParams& p, int idx, int y,
                                          TileCoords& c) {
  const int lane = threadIdx.x % 32;
  const int tpt = p.tokens_per_tile;
  int before = 0;  // tiles of the sequences already scanned
  for (int s0 = 0; s0 < p.num_seqs; s0 += 32) {
    const int s = s0 + lane;
    // All three loads in one trip: the hit's values then come by shuffle.
    int start = 0, len = 0, context = 0;
    if (s < p.num_seqs) {
      start = p.query_start_loc[s];
      len = p.query_start_loc[s + 1] - start;
      context = p.kv.context_lens[s];
    }
    const int tiles = (len + tpt - 1) / tpt;
    int incl = tiles;
#pragma unroll
    for (int o = 1; o < 32; o *= 2) {
      const int y = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += y;
    }
    const int total = __shfl_sync(0xffffffffu, incl, 31);
    if (idx < before + total) {
      const int hit = __ffs(__ballot_sync(0xffffffffu, before + incl > idx)) - 1;
      const int excl = __shfl_sync(0xffffffffu, incl - tiles, hit);
      const int n_tiles = __shfl_sync(0xffffffffu, tiles, hit);
      const int q_len = __shfl_sync(0xffffffffu, len, hit);
      const int tile = n_tiles - 1 - (idx - before - excl);
      c.seq = s0 + hit;
      c.first_token = __shfl_sync(0xffffffffu, start, hit) + tile * tpt;
      c.tokens = min(tpt, q_len - tile * tpt);
      c.first_pos = __shfl_sync(0xffffffffu, context, hit) - q_len + tile * tpt;
      c.kv_end = c.first_pos + c.tokens;
      c.kv_head = y / p.head_chunks;
      c.first_head = c.kv_head * p.group_size + (y % p.head_chunks) * p.heads_per_cta;
      c.heads = min(p.heads_per_cta, (c.kv_head + 1) * p.group_size - c.first_head);
      return true;
    }
    before += total;
  }
  return false;
}

// The CTA's Q rows into shared memory: 16-byte chunk `chunk` of row r goes to
// dst + dst_offset(r, chunk); rows past the tile's tokens or heads are zeros.
template <typename T, int Rows, int Chunks, int Threads, typename DstOffset>
__device__ __forceinline__ void load_q_rows(unsigned char* dst, const PrefillTcParams& p,
                                            const TileCoords& c, DstOffset dst_offset) {
  const T* query = static_cast<const T*>(p.query);
  for (int i = threadIdx.x; i < Rows * Chunks; i += Threads) {
    const int r = i / Chunks, chunk = i % Chunks;
    const int t = r / p.heads_per_cta, h = r % p.heads_per_cta;
    const bool valid = t < c.tokens && h < c.heads;
    const T* src = valid ? query + (c.first_token + t) * p.q_token_stride +
                               (c.first_head + h) * p.q_head_stride + chunk * 8
                         : query;
    cp_async_16(dst + dst_offset(r, chunk), src, valid);
  }
}

__device__ __forceinline__ int64_t shfl_i64(int64_t v, int lane) {
  const int lo = __shfl_sync(0xffffffffu, static_cast<int>(v), lane);
  const int hi = __shfl_sync(0xffffffffu, static_cast<int>(v >> 32), lane);
  return (static_cast<int64_t>(hi) << 32) | static_cast<uint32_t>(lo);
}

// K/V tiles are gathered through the block table in two steps. Each warp
// copies its own RW rows of a tile; lane l < RW looks up the page of row l a
// tile ahead (lookup_page: a table load whose latency the next tile's work
// hides), turns it into the row's offset (row_offset), and the copying lanes
// take the offsets by shuffle (copy_rows). The key and value caches share one
// layout (checked at launch), so a row's offset serves both.
struct KVRows {
  int32_t block_stride, token_stride;  // fit 32 bits (checked at launch)
  int64_t head_offset;
};

__device__ __forceinline__ KVRows kv_rows(const PrefillTcParams& p, int kv_head) {
  return {static_cast<int32_t>(p.kv.k_block_stride), static_cast<int32_t>(p.kv.k_token_stride),
          kv_head * p.kv.k_head_stride};
}

__device__ __forceinline__ int page_index(const PrefillTcParams& p, int pos) {
  return p.block_shift >= 0 ? pos >> p.block_shift : pos / p.block_size;
}

// Position of the row that this lane looks up, in the tile at `first`; rows at
// or past kv_end take the last key's (their table entries may be garbage).
template <int RW>
__device__ __forceinline__ int lookup_pos(int first, int kv_end) {
  return min(first + static_cast<int>(threadIdx.x / 32) * RW + static_cast<int>(threadIdx.x % RW),
             kv_end - 1);
}

// The page of this lane's row in the tile at `first` (0 for first < 0: no tile).
template <int RW>
__device__ __forceinline__ int lookup_page(const PrefillTcParams& p, const int32_t* table,
                                           int first, int kv_end) {
  return first >= 0 ? table[page_index(p, lookup_pos<RW>(first, kv_end))] : 0;
}

template <int RW>
__device__ __forceinline__ int64_t row_offset(const PrefillTcParams& p, const KVRows& kv,
                                              int page, int first, int kv_end) {
  const int pos = lookup_pos<RW>(first, kv_end);
  return kv.head_offset + static_cast<int64_t>(page) * kv.block_stride +
         (pos - page_index(p, pos) * p.block_size) * kv.token_stride;
}

// Copies this warp's RW rows of the tile at `first` from `cache` into a shared
// tile: 16-byte item it * 32 + lane is chunk item % Chunks of row item / Chunks.
// Rows at or past kv_end are zeros: those slots may be unwritten (NaN).
// dst_offset(row, chunk) is a chunk's byte offset in the tile.
template <int RW, int Chunks, typename T, typename DstOffset>
__device__ __forceinline__ void copy_rows(unsigned char* dst, const T* cache, int64_t offset,
                                          int first, int kv_end, DstOffset dst_offset) {
  static_assert(RW <= 32 && (RW * Chunks) % 32 == 0);
  const int lane = threadIdx.x % 32, row0 = (threadIdx.x / 32) * RW;
#pragma unroll
  for (int it = 0; it < RW * Chunks / 32; ++it) {
    const int item = it * 32 + lane, r = item / Chunks, chunk = item % Chunks;
    const int64_t off = shfl_i64(offset, r);
    cp_async_16(dst + dst_offset(row0 + r, chunk), cache + off + chunk * 8,
                first + row0 + r < kv_end);
  }
}

// Row `rr` of thread `tid` (of the threads holding fragments) within the
// CTA's rows, for a warp owning MT m-tiles.
template <int MT>
__device__ __forceinline__ int fragment_row(int rr, int tid = threadIdx.x) {
  const int lane = tid % 32, warp = tid / 32;
  return (warp * MT + rr / 2) * 16 + lane / 4 + 8 * (rr % 2);
}

// Keys a row must not see get score -inf: past the row's own position
// (causal) and past the tile's keys. Only tiles that reach past the CTA's
// first row need this.
template <int MT, int NT>
__device__ __forceinline__ void mask_tile(float (&s)[MT][NT][4], int k0,
                                          const int (&row_pos)[2 * MT], int kv_end) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int j = 0; j < NT; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = k0 + j * 8 + (lane % 4) * 2 + (e & 1);
        if (key > row_pos[2 * mt + e / 2] || key >= kv_end) s[mt][j][e] = -INFINITY;
      }
    }
  }
}

// 2^x on the special-function unit; exp2(-inf) = 0.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Online softmax over one tile of raw scores for this thread's rows. m is each
// row's reference max in the log2 domain (scores times scale_log2; needs
// scale_log2 > 0, the launcher's rule, so the raw max is the scaled max). s
// becomes exp2(s * scale_log2 - m): one FFMA and one MUFU per score. The
// reference moves only when a score exceeds it by more than kLazyRescale, so
// probabilities stay below 2^kLazyRescale and the output is rescaled (by
// alpha, see rescale_rows) only on the rare tiles where some row of the warp
// moved. Returns whether one did.
constexpr float kLazyRescale = 8.f;

template <int MT, int NT>
__device__ __forceinline__ bool softmax_tile(float (&s)[MT][NT][4], float (&m)[2 * MT],
                                             float (&l)[2 * MT], float (&alpha)[2 * MT],
                                             float scale_log2) {
  bool moved = false;
#pragma unroll
  for (int rr = 0; rr < 2 * MT; ++rr) {
    const int mt = rr / 2, r = rr % 2;
    float mx = -INFINITY;
#pragma unroll
    for (int j = 0; j < NT; ++j) mx = fmaxf(mx, fmaxf(s[mt][j][2 * r], s[mt][j][2 * r + 1]));
    // The four threads of a quad hold one row.
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    mx *= scale_log2;
    alpha[rr] = 1.f;
    if (mx > m[rr] + kLazyRescale) {  // never while the tile's row is all masked
      alpha[rr] = fast_exp2(m[rr] - mx);  // 0 when m was -inf
      m[rr] = mx;
      moved = true;
    }
    // A row that has seen only masked keys keeps m = -inf; a shift of 0 then
    // keeps its probabilities at exp2(-inf) = 0 instead of NaN.
    const float shift = m[rr] == -INFINITY ? 0.f : m[rr];
    float sum = 0.f;
#pragma unroll
    for (int j = 0; j < NT; ++j) {
#pragma unroll
      for (int e = 2 * r; e < 2 * r + 2; ++e) {
        s[mt][j][e] = fast_exp2(fmaf(s[mt][j][e], scale_log2, -shift));
        sum += s[mt][j][e];
      }
    }
    l[rr] = l[rr] * alpha[rr] + sum;
  }
  return __any_sync(0xffffffffu, moved);
}

// o *= alpha, row by row (after a softmax_tile that moved a reference max).
template <int MT, int DT>
__device__ __forceinline__ void rescale_rows(float (&o)[MT][DT][4], const float (&alpha)[2 * MT]) {
#pragma unroll
  for (int rr = 0; rr < 2 * MT; ++rr) {
#pragma unroll
    for (int j = 0; j < DT; ++j) {
      o[rr / 2][j][2 * (rr % 2)] *= alpha[rr];
      o[rr / 2][j][2 * (rr % 2) + 1] *= alpha[rr];
    }
  }
}

// Probabilities of m-tile mt, keys kk * 16 + [0, 16), as the A operand of a
// 16-bit m16n8k16 (or wgmma m64nNk16 from registers) multiply.
template <typename T, int MT, int NT>
__device__ __forceinline__ void probs_to_a(uint32_t (&a)[4], const float (&s)[MT][NT][4], int mt,
                                           int kk) {
  a[0] = Convert<T>::pack2(s[mt][2 * kk][0], s[mt][2 * kk][1]);
  a[1] = Convert<T>::pack2(s[mt][2 * kk][2], s[mt][2 * kk][3]);
  a[2] = Convert<T>::pack2(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
  a[3] = Convert<T>::pack2(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
}

// o / l into the rows of thread `tid` of the output.
template <typename T, int MT, int DT>
__device__ __forceinline__ void store_out(const float (&o)[MT][DT][4], float (&l)[2 * MT],
                                          const PrefillTcParams& p, const TileCoords& c,
                                          int tid = threadIdx.x) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int rr = 0; rr < 2 * MT; ++rr) {
    l[rr] += __shfl_xor_sync(0xffffffffu, l[rr], 1);
    l[rr] += __shfl_xor_sync(0xffffffffu, l[rr], 2);
    const int row = fragment_row<MT>(rr, tid);
    const int t = row / p.heads_per_cta, h = row % p.heads_per_cta;
    if (t >= c.tokens || h >= c.heads) continue;
    // A real row always sees key 0, so l > 0.
    const float inv = 1.f / l[rr];
    T* out = static_cast<T*>(p.out) + (c.first_token + t) * p.out_token_stride +
             (c.first_head + h) * p.out_head_stride + (lane % 4) * 2;
#pragma unroll
    for (int j = 0; j < DT; ++j) {
      const uint32_t v = Convert<T>::pack2(o[rr / 2][j][2 * (rr % 2)] * inv,
                                           o[rr / 2][j][2 * (rr % 2) + 1] * inv);
      *reinterpret_cast<uint32_t*>(out + j * 8) = v;
    }
  }
}

// A launch's tiles of block_m rows: a tile's rows are (token, head) pairs of
// one KV head's group. Sets the row split in p; `tiles` is an upper bound on
// the tiles of one head chunk (each sequence wastes at most one partial
// tile), and find_tile maps an index to its tile on the device.
struct TilePlan {
  int64_t tiles, head_chunks;  // head_chunks: num_kv_heads * p.head_chunks
};

inline TilePlan plan_tiles(PrefillTcParams& p, int block_m, int64_t num_tokens,
                           int64_t num_kv_heads) {
  p.heads_per_cta = std::min(p.group_size, block_m);
  p.head_chunks = (p.group_size + p.heads_per_cta - 1) / p.heads_per_cta;
  p.tokens_per_tile = block_m / p.heads_per_cta;
  const TilePlan plan{(num_tokens + p.tokens_per_tile - 1) / p.tokens_per_tile + p.num_seqs,
                      num_kv_heads * p.head_chunks};
  TORCH_CHECK(plan.tiles < (int64_t{1} << 31) && plan.head_chunks < 65536 &&
                  plan.tiles * plan.head_chunks < (int64_t{1} << 31),
              "paged_prefill_attention: too many tokens or heads");
  return plan;
}

// Launches `kernel` with one CTA a tile (blockIdx.x the tile, blockIdx.y the
// head chunk).
template <typename Kernel>
void launch_tiles(Kernel kernel, PrefillTcParams p, int block_m, int threads, int smem_bytes,
                  int64_t num_tokens, int64_t num_kv_heads, cudaStream_t stream) {
  const TilePlan plan = plan_tiles(p, block_m, num_tokens, num_kv_heads);
  C10_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes));
  kernel<<<dim3(static_cast<unsigned>(plan.tiles), static_cast<unsigned>(plan.head_chunks)),
           threads, smem_bytes, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace mini_paged_attn::cuda::prefill_tiles
