// The tensor-core prefill kernel (declared in prefill_tc.cuh). Included by one
// .cu file per 16-bit type, so the two sets of head sizes compile in parallel.
#pragma once

#include <ATen/ATen.h>

#include <cmath>

#include "mini_paged_attn/dispatch.h"
#include "mini_paged_attn/prefill_tc.cuh"

namespace mini_paged_attn::cuda {
namespace prefill_tc {

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

// Where a CTA's rows are: which sequence and query tile, which heads.
struct TileCoords {
  int seq, first_token, tokens;  // query rows [first_token, first_token + tokens) of query
  int first_pos;                 // position of the tile's first token in its sequence
  int kv_end;                    // the tile's keys: positions [0, kv_end)
  int kv_head, first_head, heads;
};

// Tile `idx` of the launch in sequence order; each warp scans 32 sequences at
// a time. Tiles of one sequence are handed out last first: the ones with the
// most keys start earliest. False when idx is past the last tile.
__device__ __forceinline__ bool find_tile(const PrefillTcParams& p, int idx, TileCoords& c) {
  const int lane = threadIdx.x % 32;
  const int tpt = p.tokens_per_tile;
  int before = 0;  // tiles of the sequences already scanned
  for (int s0 = 0; s0 < p.num_seqs; s0 += 32) {
    const int s = s0 + lane;
    const int len = s < p.num_seqs ? p.query_start_loc[s + 1] - p.query_start_loc[s] : 0;
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
      c.first_token = p.query_start_loc[c.seq] + tile * tpt;
      c.tokens = min(tpt, q_len - tile * tpt);
      c.first_pos = p.kv.context_lens[c.seq] - q_len + tile * tpt;
      c.kv_end = c.first_pos + c.tokens;
      c.kv_head = blockIdx.y / p.head_chunks;
      c.first_head = c.kv_head * p.group_size + (blockIdx.y % p.head_chunks) * p.heads_per_cta;
      c.heads = min(p.heads_per_cta, (c.kv_head + 1) * p.group_size - c.first_head);
      return true;
    }
    before += total;
  }
  return false;
}

// Q rows into shared memory; rows past the tile's tokens or heads are zeros.
template <typename T, int D>
__device__ __forceinline__ void load_q_tile(T* q_s, const PrefillTcParams& p, const TileCoords& c) {
  using Tr = Traits<D>;
  const T* query = static_cast<const T*>(p.query);
  for (int i = threadIdx.x; i < Tr::kBlockM * Tr::kChunks; i += Tr::kThreads) {
    const int r = i / Tr::kChunks, chunk = i % Tr::kChunks;
    const int t = r / p.heads_per_cta, h = r % p.heads_per_cta;
    const bool valid = t < c.tokens && h < c.heads;
    const T* src = valid ? query + (c.first_token + t) * p.q_token_stride +
                               (c.first_head + h) * p.q_head_stride + chunk * 8
                         : query;
    cp_async_16(q_s + r * Tr::kStride + chunk * 8, src, valid);
  }
}

__device__ __forceinline__ int64_t shfl_i64(int64_t v, int lane) {
  const int lo = __shfl_sync(0xffffffffu, static_cast<int>(v), lane);
  const int hi = __shfl_sync(0xffffffffu, static_cast<int>(v >> 32), lane);
  return (static_cast<int64_t>(hi) << 32) | static_cast<uint32_t>(lo);
}

// Keys and values [k0, k0 + kBlockN) of the CTA's KV head, through the block
// table; each warp copies its own kBlockN / kWarps rows. One lane per row
// looks the row up (lanes 0-15 for K, 16-31 for V) and the copying lanes take
// the offsets by shuffle, so the table and the divisions cost one pass per
// tile, not one per 16-byte chunk. Positions at or past kv_end are zeros:
// those slots may be unwritten (NaN).
template <typename T, int D>
__device__ __forceinline__ void load_kv_tile(T* k_s, T* v_s, const PrefillTcParams& p,
                                             const int32_t* table, int kv_head, int k0,
                                             int kv_end) {
  using Tr = Traits<D>;
  constexpr int RW = Tr::kBlockN / Tr::kWarps;
  static_assert(RW <= 16 && (RW * Tr::kChunks) % 32 == 0);
  const PagedKV& kv = p.kv;
  const int lane = threadIdx.x % 32, first_row = (threadIdx.x / 32) * RW;
  int64_t off = 0;
  {
    const int r = lane % 16, pos = k0 + first_row + r;
    if (r < RW && pos < kv_end) {
      const int idx = p.block_shift >= 0 ? pos >> p.block_shift : pos / p.block_size;
      const int slot = pos - idx * p.block_size;
      const int64_t block = table[idx];
      off = lane < 16 ? block * kv.k_block_stride + slot * kv.k_token_stride +
                            kv_head * kv.k_head_stride
                      : block * kv.v_block_stride + slot * kv.v_token_stride +
                            kv_head * kv.v_head_stride;
    }
  }
  const T* kc = static_cast<const T*>(kv.key_cache);
  const T* vc = static_cast<const T*>(kv.value_cache);
#pragma unroll
  for (int it = 0; it < RW * Tr::kChunks / 32; ++it) {
    const int item = it * 32 + lane, row = item / Tr::kChunks, chunk = item % Tr::kChunks;
    const int64_t k_off = shfl_i64(off, row), v_off = shfl_i64(off, 16 + row);
    const bool valid = k0 + first_row + row < kv_end;
    const int dst = (first_row + row) * Tr::kStride + chunk * 8;
    cp_async_16(k_s + dst, valid ? kc + k_off + chunk * 8 : kc, valid);
    cp_async_16(v_s + dst, valid ? vc + v_off + chunk * 8 : vc, valid);
  }
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

// Keys a row must not see get score -inf: past the row's own position
// (causal) and past the tile's keys. Only tiles that reach past the CTA's
// first row need this. Row rr of this thread is m-tile rr / 2, half rr % 2.
template <int D>
__device__ __forceinline__ void mask_tile(Scores<D>& s, int k0,
                                          const int (&row_pos)[2 * Traits<D>::kMTiles],
                                          int kv_end) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int mt = 0; mt < Traits<D>::kMTiles; ++mt) {
#pragma unroll
    for (int j = 0; j < Traits<D>::kBlockN / 8; ++j) {
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

// Online softmax over one tile of raw scores for this thread's rows (lane / 4
// and lane / 4 + 8 of each m-tile). m is each row's reference max in the log2
// domain (scores times scale_log2; needs scale_log2 > 0, the launcher's rule,
// so the raw max is the scaled max). s becomes exp2(s * scale_log2 - m): one
// FFMA and one MUFU per score. The reference moves only when a score exceeds
// it by more than kLazyRescale, so probabilities stay below 2^kLazyRescale and
// o is rescaled (a multiply per accumulator) only on the rare tiles where some
// row of the warp moved.
constexpr float kLazyRescale = 8.f;

template <int D>
__device__ __forceinline__ void softmax_tile(Scores<D>& s, Accum<D>& o,
                                             float (&m)[2 * Traits<D>::kMTiles],
                                             float (&l)[2 * Traits<D>::kMTiles],
                                             float scale_log2) {
  constexpr int NT = Traits<D>::kBlockN / 8, RR = 2 * Traits<D>::kMTiles;
  float alpha[RR];
  bool moved = false;
#pragma unroll
  for (int rr = 0; rr < RR; ++rr) {
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
  if (__any_sync(0xffffffffu, moved)) {
#pragma unroll
    for (int rr = 0; rr < RR; ++rr) {
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        o[rr / 2][j][2 * (rr % 2)] *= alpha[rr];
        o[rr / 2][j][2 * (rr % 2) + 1] *= alpha[rr];
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
    for (int mt = 0; mt < MT; ++mt) {
      a[mt][0] = Convert<T>::pack2(s[mt][2 * kk][0], s[mt][2 * kk][1]);
      a[mt][1] = Convert<T>::pack2(s[mt][2 * kk][2], s[mt][2 * kk][3]);
      a[mt][2] = Convert<T>::pack2(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
      a[mt][3] = Convert<T>::pack2(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
    }
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

// o / l into this thread's rows of the output.
template <typename T, int D>
__device__ __forceinline__ void store_out(const Accum<D>& o, float (&l)[2 * Traits<D>::kMTiles],
                                          const PrefillTcParams& p, const TileCoords& c) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int rr = 0; rr < 2 * Traits<D>::kMTiles; ++rr) {
    const int mt = rr / 2, r = rr % 2;
    l[rr] += __shfl_xor_sync(0xffffffffu, l[rr], 1);
    l[rr] += __shfl_xor_sync(0xffffffffu, l[rr], 2);
    const int row = (warp * Traits<D>::kMTiles + mt) * 16 + lane / 4 + 8 * r;
    const int t = row / p.heads_per_cta, h = row % p.heads_per_cta;
    if (t >= c.tokens || h >= c.heads) continue;
    // A real row always sees key 0, so l > 0.
    const float inv = 1.f / l[rr];
    T* out = static_cast<T*>(p.out) + (c.first_token + t) * p.out_token_stride +
             (c.first_head + h) * p.out_head_stride + (lane % 4) * 2;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      const uint32_t v = Convert<T>::pack2(o[mt][j][2 * r] * inv, o[mt][j][2 * r + 1] * inv);
      *reinterpret_cast<uint32_t*>(out + j * 8) = v;
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
  if (!find_tile(p, blockIdx.x, c)) return;  // the grid is an upper bound on the tiles
  const int32_t* table = p.kv.block_tables + c.seq * p.kv.block_table_stride;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  constexpr int MT = Tr::kMTiles;
  int row_pos[2 * MT];  // positions of this thread's rows
#pragma unroll
  for (int rr = 0; rr < 2 * MT; ++rr) {
    const int row = (warp * MT + rr / 2) * 16 + lane / 4 + 8 * (rr % 2);
    row_pos[rr] = c.first_pos + row / p.heads_per_cta;
  }

  const int num_kv_tiles = (c.kv_end + BN - 1) / BN;
  const int first_masked = (c.first_pos + 1) / BN;  // tiles from here reach past row 0
  load_q_tile<T, D>(q_s, p, c);
  load_kv_tile<T, D>(k_s + ((num_kv_tiles - 1) & 1) * kTile,
                     v_s + ((num_kv_tiles - 1) & 1) * kTile, p, table, c.kv_head,
                     (num_kv_tiles - 1) * BN, c.kv_end);
  cp_async_commit();

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
      load_kv_tile<T, D>(k_s + ((j - 1) & 1) * kTile, v_s + ((j - 1) & 1) * kTile, p, table,
                         c.kv_head, (j - 1) * BN, c.kv_end);
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
    if (j >= first_masked) mask_tile<D>(s, j * BN, row_pos, c.kv_end);
    softmax_tile<D>(s, o, m, l, p.scale_log2);
    pv_tile<T, D>(o, s, v_s + (j & 1) * kTile);
    __syncthreads();  // every warp is done with stage j & 1 before tile j - 2 lands there
  }
  store_out<T, D>(o, l, p, c);
}

template <typename T, int D>
void launch(PrefillTcParams p, int64_t num_tokens, int64_t num_kv_heads, cudaStream_t stream) {
  using Tr = Traits<D>;
  p.heads_per_cta = std::min(p.group_size, Tr::kBlockM);
  p.head_chunks = (p.group_size + p.heads_per_cta - 1) / p.heads_per_cta;
  p.tokens_per_tile = Tr::kBlockM / p.heads_per_cta;
  auto kernel = prefill_tc_kernel<T, D>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      Tr::kSmemBytes));
  // Every sequence wastes at most one partial tile.
  const int64_t max_tiles = (num_tokens + p.tokens_per_tile - 1) / p.tokens_per_tile + p.num_seqs;
  const int64_t grid_y = num_kv_heads * p.head_chunks;
  TORCH_CHECK(max_tiles < (int64_t{1} << 31) && grid_y < 65536,
              "paged_prefill_attention: too many tokens or heads");
  kernel<<<dim3(static_cast<unsigned>(max_tiles), static_cast<unsigned>(grid_y)), Tr::kThreads,
           Tr::kSmemBytes, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace prefill_tc

template <typename T>
void launch_prefill_tc(const PrefillTcParams& p, int64_t head_size, int64_t num_tokens,
                       int64_t num_kv_heads, cudaStream_t stream) {
  dispatch_head_size<32, 64, 80, 96, 128, 256>(
      "tensor-core paged_prefill_attention", head_size, [&](auto d) {
        prefill_tc::launch<T, decltype(d)::value>(p, num_tokens, num_kv_heads, stream);
      });
}

}  // namespace mini_paged_attn::cuda
