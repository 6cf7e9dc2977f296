// The tensor-core prefill kernel (declared in prefill_tc.cuh). Included by one
// .cu file per 16-bit type, so the two sets of head sizes compile in parallel.
#pragma once

#include <ATen/ATen.h>

#include <cmath>

#include "mini_paged_attn/dispatch.h"
#include "mini_paged_attn/prefill_tc.cuh"
#include "mini_paged_attn/prefill_tiles.cuh"

namespace mini_paged_attn::cuda {
namespace prefill_tc {

using namespace prefill_tiles;

template <int D>
struct Traits {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  // Each warp owns kMTiles x 16 rows and reuses every K and V fragment it reads
  // for all of them; at head size 256 the accumulators of two would not fit.
  static constexpr int kMTiles = D <= 128 ? 2 : 1;
  static constexpr int kBlockM = 16 * kMTiles * kWarps;
  static constexpr int kBlockN = D <= 128 ? 64 : 32;
  // Rows padded by 16 bytes: the 8 rows one ldmatrix reads start in distinct
  // bank groups for every head size here (row pitch = 4 banks mod 32, times odd).
  static constexpr int kStride = D + 8;
  static constexpr int kChunks = D / 8;  // 16-byte chunks per row
  // Q fragments stay in registers for the whole key loop where they are few
  // (kMTiles x head size <= 64); otherwise they are read again from shared
  // memory. Up to head size 64 that leaves room for three CTAs per SM.
  static constexpr bool kQInRegs = kMTiles * D <= 64;
  static constexpr int kMinCtasPerSm = D <= 64 ? 3 : 1;
  static constexpr int kSmemBytes = (kBlockM + 4 * kBlockN) * kStride * 2;  // Q, 2 x (K, V)
  static_assert(D % 16 == 0 && kBlockN % 16 == 0);
};

// Q rows into shared memory, rows kStride apart.
template <typename T, int D>
__device__ __forceinline__ void load_q_tile(T* q_s, const PrefillTcParams& p, const TileCoords& c) {
  using Tr = Traits<D>;
  load_q_rows<T, Tr::kBlockM, Tr::kChunks, Tr::kThreads>(
      reinterpret_cast<unsigned char*>(q_s), p, c, [](int r, int chunk) {
        return static_cast<int>(sizeof(T)) * (r * Tr::kStride + chunk * 8);
      });
}

// Keys and values [k0, k0 + kBlockN) of the CTA's KV head into a stage; each
// warp copies kBlockN / kWarps rows, at the offsets its lanes hold.
template <typename T, int D>
__device__ __forceinline__ void load_kv_tile(T* k_s, T* v_s, const PrefillTcParams& p,
                                             int64_t offset, int k0, int kv_end) {
  using Tr = Traits<D>;
  constexpr int RW = Tr::kBlockN / Tr::kWarps;
  const auto dst_offset = [](int row, int chunk) {
    return static_cast<int>(sizeof(T)) * (row * Tr::kStride + chunk * 8);
  };
  copy_rows<RW, Tr::kChunks>(reinterpret_cast<unsigned char*>(k_s),
                             static_cast<const T*>(p.kv.key_cache), offset, k0, kv_end, dst_offset);
  copy_rows<RW, Tr::kChunks>(reinterpret_cast<unsigned char*>(v_s),
                             static_cast<const T*>(p.kv.value_cache), offset, k0, kv_end,
                             dst_offset);
}

// Per-thread fragments: scores / probabilities of this warp's rows against a
// key tile, and the output accumulators.
template <int D>
using Scores = float[Traits<D>::kMTiles][Traits<D>::kBlockN / 8][4];
template <int D>
using Accum = float[Traits<D>::kMTiles][D / 8][4];
template <int D>
using QFrags = uint32_t[Traits<D>::kQInRegs ? Traits<D>::kMTiles * D / 16 : 1][4];

// The A fragment of m-tile mt, dims kk*16 + [0, 16), from this warp's Q rows.
template <typename T, int D>
__device__ __forceinline__ void load_q_frag(uint32_t (&a)[4], const T* q_s, int mt, int kk) {
  using Tr = Traits<D>;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int row = (warp * Tr::kMTiles + mt) * 16 + lane % 16;
  ldmatrix_x4(a, q_s + row * Tr::kStride + kk * 16 + (lane / 16) * 8);
}

// This warp's scores S = Q K^T against one key tile (unscaled).
template <typename T, int D>
__device__ __forceinline__ void qk_tile(Scores<D>& s, const QFrags<D>& q_frag, const T* q_s,
                                        const T* k_s) {
  using Tr = Traits<D>;
  constexpr int MT = Tr::kMTiles;
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int j = 0; j < Tr::kBlockN / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[mt][j][e] = 0.f;
    }
  }
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t a[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      if constexpr (Tr::kQInRegs) {
#pragma unroll
        for (int e = 0; e < 4; ++e) a[mt][e] = q_frag[mt * (D / 16) + kk][e];
      } else {
        load_q_frag<T, D>(a[mt], q_s, mt, kk);
      }
    }
#pragma unroll
    for (int np = 0; np < Tr::kBlockN / 16; ++np) {
      uint32_t b[4];  // keys np*16 + [0, 8) then [8, 16), dims kk*16 + [0, 16)
      ldmatrix_x4(b, k_s + (np * 16 + lane % 8 + (lane / 16) * 8) * Tr::kStride + kk * 16 +
                         ((lane / 8) % 2) * 8);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        mma_16816<T>(s[mt][2 * np], a[mt], b[0], b[1]);
        mma_16816<T>(s[mt][2 * np + 1], a[mt], b[2], b[3]);
      }
    }
  }
}

// o += P V for this warp's rows; P comes from the score accumulators, whose
// layout is the A-operand layout of m16n8k16 two key columns at a time.
template <typename T, int D>
__device__ __forceinline__ void pv_tile(Accum<D>& o, const Scores<D>& s, const T* v_s) {
  using Tr = Traits<D>;
  constexpr int MT = Tr::kMTiles;
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int kk = 0; kk < Tr::kBlockN / 16; ++kk) {
    uint32_t a[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) probs_to_a<T>(a[mt], s, mt, kk);
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      uint32_t b[4];  // keys kk*16 + [0, 16), dims dp*16 + [0, 8) then [8, 16)
      ldmatrix_x4_trans(b, v_s + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * Tr::kStride +
                               dp * 16 + (lane / 16) * 8);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        mma_16816<T>(o[mt][2 * dp], a[mt], b[0], b[1]);
        mma_16816<T>(o[mt][2 * dp + 1], a[mt], b[2], b[3]);
      }
    }
  }
}

// Two stages of K and V: tile j - 1 is in flight while tile j is computed.
// Key tiles go from the last (masked) one down.
template <typename T, int D>
__global__ void __launch_bounds__(Traits<D>::kThreads, Traits<D>::kMinCtasPerSm)
    prefill_tc_kernel(const PrefillTcParams p) {
  using Tr = Traits<D>;
  constexpr int BN = Tr::kBlockN, kTile = BN * Tr::kStride;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* q_s = reinterpret_cast<T*>(smem_raw);
  T* k_s = q_s + Tr::kBlockM * Tr::kStride;  // [2][BN][kStride]
  T* v_s = k_s + 2 * kTile;                  // [2][BN][kStride]

  TileCoords c;
  if (!find_tile(p, blockIdx.x, blockIdx.y, c)) return;  // the grid is an upper bound on the tiles
  const int32_t* table = p.kv.block_tables + c.seq * p.kv.block_table_stride;
  const KVRows kv = kv_rows(p, c.kv_head);
  constexpr int MT = Tr::kMTiles;
  constexpr int RW = BN / Tr::kWarps;
  int row_pos[2 * MT];  // positions of this thread's rows
#pragma unroll
  for (int rr = 0; rr < 2 * MT; ++rr) {
    row_pos[rr] = c.first_pos + fragment_row<MT>(rr) / p.heads_per_cta;
  }

  const int num_kv_tiles = (c.kv_end + BN - 1) / BN;
  const int first_masked = (c.first_pos + 1) / BN;  // tiles from here reach past row 0
  load_q_tile<T, D>(q_s, p, c);
  {
    const int first = (num_kv_tiles - 1) * BN;
    const int64_t off =
        row_offset<RW>(p, kv, lookup_page<RW>(p, table, first, c.kv_end), first, c.kv_end);
    load_kv_tile<T, D>(k_s + ((num_kv_tiles - 1) & 1) * kTile,
                       v_s + ((num_kv_tiles - 1) & 1) * kTile, p, off, first, c.kv_end);
  }
  cp_async_commit();
  int page = lookup_page<RW>(p, table, (num_kv_tiles - 2) * BN, c.kv_end);  // of tile j - 1

  QFrags<D> q_frag;
  Accum<D> o = {};
  float m[2 * MT], l[2 * MT];
#pragma unroll
  for (int rr = 0; rr < 2 * MT; ++rr) {
    m[rr] = -INFINITY;
    l[rr] = 0.f;
  }
  for (int j = num_kv_tiles - 1; j >= 0; --j) {
    if (j > 0) {
      const int64_t off = row_offset<RW>(p, kv, page, (j - 1) * BN, c.kv_end);
      page = lookup_page<RW>(p, table, (j - 2) * BN, c.kv_end);
      load_kv_tile<T, D>(k_s + ((j - 1) & 1) * kTile, v_s + ((j - 1) & 1) * kTile, p, off,
                         (j - 1) * BN, c.kv_end);
    }
    cp_async_commit();  // possibly empty: keeps the group count uniform
    cp_async_wait<1>();  // tile j (and Q)
    __syncthreads();
    if constexpr (Tr::kQInRegs) {
      if (j == num_kv_tiles - 1) {
#pragma unroll
        for (int f = 0; f < MT * D / 16; ++f) {
          load_q_frag<T, D>(q_frag[f], q_s, f / (D / 16), f % (D / 16));
        }
      }
    }
    Scores<D> s;
    qk_tile<T, D>(s, q_frag, q_s, k_s + (j & 1) * kTile);
    if (j >= first_masked) mask_tile(s, j * BN, row_pos, c.kv_end);
    float alpha[2 * MT];
    if (softmax_tile(s, m, l, alpha, p.scale_log2)) rescale_rows(o, alpha);
    pv_tile<T, D>(o, s, v_s + (j & 1) * kTile);
    __syncthreads();  // every warp is done with stage j & 1 before tile j - 2 lands there
  }
  store_out<T>(o, l, p, c);
}

}  // namespace prefill_tc

template <typename T>
void launch_prefill_tc(const PrefillTcParams& p, int64_t head_size, int64_t num_tokens,
                       int64_t num_kv_heads, cudaStream_t stream) {
  dispatch_head_size<32, 64, 80, 96, 128, 256>(
      "tensor-core paged_prefill_attention", head_size, [&](auto d) {
        using Tr = prefill_tc::Traits<decltype(d)::value>;
        prefill_tiles::launch_tiles(prefill_tc::prefill_tc_kernel<T, decltype(d)::value>, p,
                                    Tr::kBlockM, Tr::kThreads, Tr::kSmemBytes, num_tokens,
                                    num_kv_heads, stream);
      });
}

}  // namespace mini_paged_attn::cuda
