// The decode kernel's math on one 16-token tile (attention_kernels.cuh), on
// mma.sync m16n8k16 with fp32 accumulators. A warp's fragments: gid = lane / 4
// is the query head (row gid holds its 16-bit part, row gid + 8 the rounding
// residue), tig = lane % 4 picks the thread's columns.
#pragma once

#include "mini_paged_attn/decode_traits.cuh"

namespace mini_paged_attn::cuda {

// A thread's share of the online softmax of its head (gid): the output
// accumulator tiles (rows gid (hi) and gid + 8 (lo)), the running max in the
// log2 domain, and this lane's part of the running sum of exp2.
template <typename Tr>
struct HeadState {
  float o[Tr::kHeadSize / 8][4];
  float m;
  float l;
};

// Where this thread's query element k sits in the sequence's query (head
// head0 + i / D), or -1 past num_q and in the sibling half of a paired row.
template <typename Tr>
constexpr int kQueryPerThread = Tr::kHeads * Tr::kHeadSize / Tr::kThreads;

template <typename Tr>
__device__ __forceinline__ int64_t query_offset(const PagedAttentionParams& p, int head0,
                                                int num_q, int k) {
  constexpr int D = Tr::kHeadSize;
  static_assert(Tr::kHeads * D % Tr::kThreads == 0, "query rows must split evenly");
  const int i = threadIdx.x + k * Tr::kThreads, g = i / D;
  const int e = g < num_q ? head_elem<D>(p, head0 + g, i % D) : -1;
  return e >= 0 ? (head0 + g) * p.q_head_stride + e : -1;
}

// The query rows, pre-scaled, as hi and lo 16-bit parts into shared memory
// (rows g and g + 8); rows past num_q are zero.
template <typename Tr, typename query_t>
__device__ __forceinline__ void store_query(const PagedAttentionParams& p, unsigned char* q_smem,
                                            const query_t (&q_raw)[kQueryPerThread<Tr>],
                                            int head0, int num_q) {
  using mma_t = typename Tr::mma_t;
  constexpr int D = Tr::kHeadSize;
#pragma unroll
  for (int k = 0; k < kQueryPerThread<Tr>; ++k) {
    const int i = threadIdx.x + k * Tr::kThreads, g = i / D, d = i % D;
    float hi, lo;
    const float q_val =
        query_offset<Tr>(p, head0, num_q, k) >= 0 ? Convert<query_t>::to_float(q_raw[k]) : 0.f;
    split_hi_lo<mma_t>(q_val * p.scale_log2, hi, lo);
    reinterpret_cast<mma_t*>(q_smem + g * Tr::kQRowBytes)[d] = Convert<mma_t>::from_float(hi);
    reinterpret_cast<mma_t*>(q_smem + (g + 8) * Tr::kQRowBytes)[d] =
        Convert<mma_t>::from_float(lo);
  }
}

// The query as the A operand of S = Q K^T: rows 0-7 hi parts, 8-15 lo parts,
// pre-scaled. Every tile multiplies by it, so its fragments are loaded once
// when they fit in registers (head size <= 128), else once per tile.
template <typename Tr>
struct QueryOperand {
  static constexpr bool kInRegs = Tr::kHeadSize <= 128;
  const unsigned char* smem;  // [16][kQRowBytes]
  uint32_t frags[kInRegs ? Tr::kHeadSize / 16 : 1][4];

  __device__ __forceinline__ void load_frag(int kk, uint32_t (&a)[4]) const {
    const int lane = threadIdx.x % 32;
    ldmatrix_x4(a, smem + ((lane & 7) + ((lane >> 3) & 1) * 8) * Tr::kQRowBytes +
                       (kk * 16 + (lane >> 4) * 8) * 2);
  }
  __device__ __forceinline__ void load() {
    if constexpr (kInRegs) {
#pragma unroll
      for (int kk = 0; kk < Tr::kHeadSize / 16; ++kk) load_frag(kk, frags[kk]);
    }
  }
  __device__ __forceinline__ void frag(int kk, uint32_t (&a)[4]) const {
    if constexpr (kInRegs) {
#pragma unroll
      for (int r = 0; r < 4; ++r) a[r] = frags[kk][r];
    } else {
      load_frag(kk, a);
    }
  }
};

// S = Q K^T for 16 tokens: s[n] holds tokens 8n + 2 tig + {0, 1}. fp32 caches
// are fed as hi + lo pairs (two MMAs).
template <typename Tr>
__device__ __forceinline__ void qk_tile(float (&s)[2][4], const QueryOperand<Tr>& q,
                                        const unsigned char* ks) {
  using mma_t = typename Tr::mma_t;
  const int lane = threadIdx.x % 32, gid = lane / 4, tig = lane % 4;
#pragma unroll
  for (int kk = 0; kk < Tr::kHeadSize / 16; ++kk) {
    uint32_t a[4];
    q.frag(kk, a);
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
}

// Online softmax of head gid over one tile of scores (tokens at or past
// valid_tokens are masked: exp2(-inf) = 0). Rescales the state when its max
// moves and returns P as the A operand: row gid = hi parts, gid + 8 = lo parts.
template <typename Tr>
__device__ __forceinline__ void softmax_tile(HeadState<Tr>& h, const float (&s)[2][4],
                                             int valid_tokens, uint32_t (&a)[4]) {
  using mma_t = typename Tr::mma_t;
  constexpr unsigned kFull = 0xffffffffu;
  const int tig = threadIdx.x % 4;
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
  const float m_new = fmaxf(h.m, tile_max);  // finite: token 0 of a tile is always valid
  const float alpha = exp2f(h.m - m_new);    // 0 on the first tile
  h.m = m_new;
  // Once the maxima settle, no head's max moves and alpha is exactly 1 in the
  // whole warp: skip the rescale then.
  if (__any_sync(kFull, alpha != 1.f)) {
    h.l *= alpha;
#pragma unroll
    for (int n = 0; n < Tr::kHeadSize / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) h.o[n][e] *= alpha;
    }
  }
#pragma unroll
  for (int n = 0; n < 2; ++n) {
    float hi[2], lo[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const float pr = exp2f(x[n][e] - m_new);
      h.l += pr;
      split_hi_lo<mma_t>(pr, hi[e], lo[e]);
    }
    a[2 * n] = Convert<mma_t>::pack2(hi[0], hi[1]);
    a[2 * n + 1] = Convert<mma_t>::pack2(lo[0], lo[1]);
  }
}

// O += P V for one tile.
template <typename Tr>
__device__ __forceinline__ void pv_tile(HeadState<Tr>& h, const uint32_t (&a)[4],
                                        const unsigned char* vs) {
  using mma_t = typename Tr::mma_t;
  constexpr int D = Tr::kHeadSize;
  const int lane = threadIdx.x % 32, gid = lane / 4, tig = lane % 4;
  if constexpr (!Tr::kFloatCache) {
#pragma unroll
    for (int n = 0; n < D / 8; n += 2) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, vs + Tr::offset((lane & 7) + ((lane >> 3) & 1) * 8, n + (lane >> 4)));
      mma_16816<mma_t>(h.o[n], a, b[0], b[1]);
      mma_16816<mma_t>(h.o[n + 1], a, b[2], b[3]);
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
      float hi[4], lo[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) split_hi_lo<mma_t>(v_rows[e], hi[e], lo[e]);
      mma_16816<mma_t>(h.o[n], a, Convert<mma_t>::pack2(hi[0], hi[1]),
                       Convert<mma_t>::pack2(hi[2], hi[3]));
      mma_16816<mma_t>(h.o[n], a, Convert<mma_t>::pack2(lo[0], lo[1]),
                       Convert<mma_t>::pack2(lo[2], lo[3]));
    }
  }
}

}  // namespace mini_paged_attn::cuda
