// Paged prefill attention on Hopper's warpgroup tensor cores (wgmma, sm_90a),
// for head sizes 64 and 128, FlashAttention-3 style: each of a CTA's two
// warpgroups owns 64 query rows; S = Q K^T reads Q and K from shared memory,
// O += P V takes P from registers. Within a warpgroup the two multiplies of
// neighbouring key tiles overlap the softmax: while the tensor cores compute
// S_j and P_{j+1} V_{j+1}, the threads wait only for S_j, take its softmax, and
// wait for the second only before rescaling O.
//
// K and V tiles are gathered through the block table with cp.async (a page
// can hold as few as 8 keys, too small a unit for TMA) into 128-byte swizzled
// panels, two stages each. The copies of K_{j-1} and V_j run during tile j's
// work. Tiles, GQA rows and masking are as in the mma.sync kernel
// (prefill_tiles.cuh), which serves the other head sizes and GPUs.
#pragma once

#include <ATen/ATen.h>

#include "mini_paged_attn/dispatch.h"
#include "mini_paged_attn/prefill_tc.cuh"
#include "mini_paged_attn/prefill_tiles.cuh"
#include "mini_paged_attn/wgmma.cuh"

namespace mini_paged_attn::cuda {
namespace prefill_wgmma {

using namespace prefill_tiles;

template <int D>
struct Traits {
  static constexpr int kWarpGroups = 2;
  static constexpr int kThreads = 128 * kWarpGroups;
  static constexpr int kBlockM = 64 * kWarpGroups;  // rows: (token, head) pairs
  static constexpr int kBlockN = 128;               // keys a tile
  static constexpr int kChunks = D / 8;             // 16-byte chunks a row
  static constexpr int kRowsPerWarp = kBlockN / (kThreads / 32);  // of a K or V tile
  static constexpr int kQBytes = kBlockM * D * 2;
  static constexpr int kTileBytes = kBlockN * D * 2;  // one stage of K or of V
  // Q, two stages of K and two of V, and room to align the base to 1024 bytes.
  static constexpr int kSmemBytes = kQBytes + 4 * kTileBytes + 1024;
  static_assert(D == 64 || D == 128);
};

template <int D>
using Scores = float[1][Traits<D>::kBlockN / 8][4];
template <int D>
using Accum = float[1][D / 8][4];
template <int D>
using Probs = uint32_t[Traits<D>::kBlockN / 16][4];  // P as wgmma A fragments, 16 keys each

// Q rows into the swizzled Q tile.
template <typename T, int D>
__device__ __forceinline__ void load_q_tile(unsigned char* q_s, const PrefillTcParams& p,
                                            const TileCoords& c) {
  using Tr = Traits<D>;
  load_q_rows<T, Tr::kBlockM, Tr::kChunks, Tr::kThreads>(q_s, p, c, [](int r, int chunk) {
    return wgmma::swizzled_offset(Tr::kBlockM, r, chunk);
  });
}

// This warp's rows of the tile at `first` of one cache into a swizzled stage.
template <typename T, int D>
__device__ __forceinline__ void load_kv(unsigned char* dst, const void* cache, int64_t offset,
                                        int first, int kv_end) {
  using Tr = Traits<D>;
  copy_rows<Tr::kRowsPerWarp, Tr::kChunks>(
      dst, static_cast<const T*>(cache), offset, first, kv_end,
      [](int row, int chunk) { return wgmma::swizzled_offset(Tr::kBlockN, row, chunk); });
}

// Issues S = Q K^T (unscaled) for this warpgroup's 64 rows against one key
// tile. Both operands are K-major: a k16 step is 32 bytes into a panel row.
template <typename T, int D>
__device__ __forceinline__ void issue_qk(Scores<D>& s, uint32_t q_addr, uint32_t k_addr) {
  using Tr = Traits<D>;
  const uint32_t rows = (threadIdx.x / 128) * 64 * 128;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const uint32_t panel = kk / 4, col = (kk % 4) * 32;
    const uint64_t a = wgmma::descriptor(q_addr + panel * Tr::kBlockM * 128 + rows + col, 16, 1024);
    const uint64_t b = wgmma::descriptor(k_addr + panel * Tr::kBlockN * 128 + col, 16, 1024);
    wgmma::mma_ss_n128<T>(s[0], a, b, kk > 0);
  }
}

// Issues o += P V for one key tile. V is MN-major (the head dimension is
// contiguous): a k16 step is 16 rows down, and the panels of the head
// dimension are kBlockN rows apart.
template <typename T, int D>
__device__ __forceinline__ void issue_pv(Accum<D>& o, const Probs<D>& pr, uint32_t v_addr) {
  using Tr = Traits<D>;
#pragma unroll
  for (int kk = 0; kk < Tr::kBlockN / 16; ++kk) {
    const uint64_t b = wgmma::descriptor(v_addr + kk * 16 * 128, Tr::kBlockN * 128, 1024);
    wgmma::mma_rs<T, D>(o[0], pr[kk], b, 1);
  }
}

template <typename T, int D>
__device__ __forceinline__ void to_probs(Probs<D>& pr, const Scores<D>& s) {
#pragma unroll
  for (int kk = 0; kk < Traits<D>::kBlockN / 16; ++kk) probs_to_a<T>(pr[kk], s, 0, kk);
}

// Key tiles go from the last (masked) one down. Iteration j computes S_j and
// P_{j+1} V_{j+1} while K_{j-1} and V_j are copied in.
template <typename T, int D>
__global__ void __launch_bounds__(Traits<D>::kThreads, 1)
    prefill_wgmma_kernel(const PrefillTcParams p) {
#ifdef MPA_WGMMA_ENABLED
  using Tr = Traits<D>;
  constexpr int BN = Tr::kBlockN;
  extern __shared__ unsigned char smem_raw[];
  unsigned char* q_s = smem_raw + (1024 - smem_addr(smem_raw) % 1024) % 1024;
  unsigned char* k_s = q_s + Tr::kQBytes;         // [2][kTileBytes]
  unsigned char* v_s = k_s + 2 * Tr::kTileBytes;  // [2][kTileBytes]
  const auto k_stage = [&](int j) { return k_s + (j & 1) * Tr::kTileBytes; };
  const auto v_stage = [&](int j) { return v_s + (j & 1) * Tr::kTileBytes; };

  TileCoords c;
  if (!find_tile(p, blockIdx.x, c)) return;  // the grid is an upper bound on the tiles
  const int32_t* table = p.kv.block_tables + c.seq * p.kv.block_table_stride;
  int row_pos[2];  // positions of this thread's rows
#pragma unroll
  for (int rr = 0; rr < 2; ++rr) row_pos[rr] = c.first_pos + fragment_row<1>(rr) / p.heads_per_cta;
  const int n = (c.kv_end + BN - 1) / BN;
  const int first_masked = (c.first_pos + 1) / BN;  // tiles from here reach past row 0

  constexpr int RW = Tr::kRowsPerWarp;
  const KVRows kv = kv_rows(p, c.kv_head);
  const void* kc = p.kv.key_cache;
  const void* vc = p.kv.value_cache;
  // Group 1: Q and K_{n-1}. Group 2: V_{n-1} and K_{n-2}. Then off_v is the
  // row offset of the tile whose V is copied next, page the next K tile's.
  load_q_tile<T, D>(q_s, p, c);
  int64_t off_v =
      row_offset<RW>(p, kv, lookup_page<RW>(p, table, (n - 1) * BN, c.kv_end), (n - 1) * BN,
                     c.kv_end);
  load_kv<T, D>(k_stage(n - 1), kc, off_v, (n - 1) * BN, c.kv_end);
  cp_async_commit();
  load_kv<T, D>(v_stage(n - 1), vc, off_v, (n - 1) * BN, c.kv_end);
  if (n > 1) {
    off_v = row_offset<RW>(p, kv, lookup_page<RW>(p, table, (n - 2) * BN, c.kv_end), (n - 2) * BN,
                           c.kv_end);
    load_kv<T, D>(k_stage(n - 2), kc, off_v, (n - 2) * BN, c.kv_end);
  }
  cp_async_commit();
  int page = lookup_page<RW>(p, table, (n - 3) * BN, c.kv_end);
  cp_async_wait<1>();
  fence_proxy_async_shared();  // the copies' writes, before the wgmmas (another proxy) read them
  __syncthreads();

  Scores<D> s;
  Accum<D> o = {};
  Probs<D> pr;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f}, alpha[2];
  const uint32_t q_addr = smem_addr(q_s);
  wgmma::fence();
  issue_qk<T, D>(s, q_addr, smem_addr(k_stage(n - 1)));
  wgmma::commit_group();
  wgmma::wait_group<0>();
  wgmma::fence_operand(s[0]);
  if (n - 1 >= first_masked) mask_tile(s, (n - 1) * BN, row_pos, c.kv_end);
  softmax_tile(s, m, l, alpha, p.scale_log2);  // o is still zero: nothing to rescale
  to_probs<T, D>(pr, s);

  for (int j = n - 2; j >= 0; --j) {
    cp_async_wait<0>();
    fence_proxy_async_shared();
    __syncthreads();  // K_j and V_{j+1} are in; no warp still reads K_{j+1} or V_{j+2}
    wgmma::fence_operand(o[0]);
    wgmma::fence();
    issue_qk<T, D>(s, q_addr, smem_addr(k_stage(j)));
    wgmma::commit_group();
    issue_pv<T, D>(o, pr, smem_addr(v_stage(j + 1)));
    wgmma::commit_group();
    load_kv<T, D>(v_stage(j), vc, off_v, j * BN, c.kv_end);
    if (j > 0) {
      off_v = row_offset<RW>(p, kv, page, (j - 1) * BN, c.kv_end);
      page = lookup_page<RW>(p, table, (j - 2) * BN, c.kv_end);
      load_kv<T, D>(k_stage(j - 1), kc, off_v, (j - 1) * BN, c.kv_end);
    }
    cp_async_commit();
    wgmma::wait_group<1>();  // S_j
    wgmma::fence_operand(s[0]);
    if (j >= first_masked) mask_tile(s, j * BN, row_pos, c.kv_end);
    const bool moved = softmax_tile(s, m, l, alpha, p.scale_log2);
    wgmma::wait_group<0>();  // P_{j+1} V_{j+1}: pr and o are free again
    wgmma::fence_operand(o[0]);
    if (moved) rescale_rows(o, alpha);
    to_probs<T, D>(pr, s);
  }
  cp_async_wait<0>();
  fence_proxy_async_shared();
  __syncthreads();  // V_0
  wgmma::fence_operand(o[0]);
  wgmma::fence();
  issue_pv<T, D>(o, pr, smem_addr(v_stage(0)));
  wgmma::commit_group();
  wgmma::wait_group<0>();
  wgmma::fence_operand(o[0]);
  store_out<T>(o, l, p, c);
#endif
}

}  // namespace prefill_wgmma

template <typename T>
void launch_prefill_wgmma(const PrefillTcParams& p, int64_t head_size, int64_t num_tokens,
                          int64_t num_kv_heads, cudaStream_t stream) {
  dispatch_head_size<64, 128>("wgmma paged_prefill_attention", head_size, [&](auto d) {
    using Tr = prefill_wgmma::Traits<decltype(d)::value>;
    prefill_tiles::launch_tiles(prefill_wgmma::prefill_wgmma_kernel<T, decltype(d)::value>, p,
                                Tr::kBlockM, Tr::kThreads, Tr::kSmemBytes, num_tokens,
                                num_kv_heads, stream);
  });
}

}  // namespace mini_paged_attn::cuda
