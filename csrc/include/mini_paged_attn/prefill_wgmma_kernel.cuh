// Paged prefill attention on Hopper's warpgroup tensor cores (wgmma, sm_90a),
// for head sizes 64 and 128, FlashAttention-3 style. A producer warpgroup
// gathers the tiles (prefill_wgmma_pipeline.cuh); each of two math
// warpgroups owns 64 of a tile's 128 query rows. S = Q K^T reads Q and K from
// shared memory, O += P V takes P from registers.
//
// Two overlaps keep the tensor cores busy through the softmax. Within a
// warpgroup, the multiplies of neighbouring key tiles: while the tensor cores
// compute S_j and P_{j+1} V_{j+1}, the threads wait only for S_j, take its
// softmax, and wait for the second only before rescaling O. Between the two
// warpgroups, ping-pong: they take turns to issue a key tile's multiplies
// (named barriers 1 and 2), so one's softmax runs during the other's
// multiplies; a tile's first S takes its turn too (FlashAttention-3's
// order), so one warpgroup's first softmax overlaps the other's first S.
// Tiles, GQA rows and masking are as in the mma.sync kernel
// (prefill_tiles.cuh), which serves the other head sizes and GPUs.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>

#include "mini_paged_attn/dispatch.h"
#include "mini_paged_attn/prefill_tc.cuh"
#include "mini_paged_attn/prefill_tiles.cuh"
#include "mini_paged_attn/prefill_wgmma_pipeline.cuh"
#include "mini_paged_attn/wgmma.cuh"

namespace mini_paged_attn::cuda {
namespace prefill_wgmma {

template <int D>
using Scores = float[1][Traits<D>::kBlockN / 8][4];
template <int D>
using Accum = float[1][D / 8][4];
template <int D>
using Probs = uint32_t[Traits<D>::kBlockN / 16][4];  // P as wgmma A fragments, 16 keys each

// Issues S = Q K^T (unscaled) for this warpgroup's 64 rows against one key
// tile. Both operands are K-major: a k16 step is 32 bytes into a panel row.
template <typename T, int D>
__device__ __forceinline__ void issue_qk(Scores<D>& s, uint32_t q_addr, uint32_t k_addr, int wg) {
  using Tr = Traits<D>;
  const uint32_t rows = wg * 64 * 128;
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

// Waits for a ring slot's tile and orders the cp.async writes (generic proxy)
// before the wgmma reads (async proxy); returns the slot.
template <int S>
__device__ __forceinline__ int acquire(const Ring<S>& r, uint64_t* full) {
  mbarrier_wait(&full[r.slot()], r.parity());
  fence_proxy_async_shared();
  return r.slot();
}

// Frees a tile's Q slot (and its coordinates) after its last S = Q K^T.
__device__ __forceinline__ void release_q(Barriers& b, Ring<kQSlots>& qr) {
  mbarrier_arrive(&b.q_empty[qr.slot()]);
  ++qr.count;
}

// One math warpgroup (wg 0 or 1; tid counts the math threads) over the CTA's
// tiles. Key tiles go from the last (masked) one down; step j computes S_j
// and P_{j+1} V_{j+1}.
template <typename T, int D>
__device__ __forceinline__ void consume(const PrefillTcParams& p, const SharedTiles<D>& sm) {
  using Tr = Traits<D>;
  constexpr int BN = Tr::kBlockN;
  const int tid = threadIdx.x - Tr::kProducerThreads, wg = tid / 128;
  const uint32_t q_addr = smem_addr(sm.q), k_addr = smem_addr(sm.k), v_addr = smem_addr(sm.v);
  Barriers& b = *sm.bar;
  Ring<Tr::kStages> kr, vr;
  Ring<kQSlots> qr;  // one count a tile, as the producer's
  if (wg == 0) named_barrier_arrive(1, Tr::kMathThreads);  // warpgroup 0 has the first turn
  for (;;) {
    mbarrier_wait(&b.item_full[qr.slot()], qr.parity());
    const TileCoords c = sm.items[qr.slot()];
    if (c.seq < 0) break;
    int row_pos[2];  // positions of this thread's rows
#pragma unroll
    for (int rr = 0; rr < 2; ++rr)
      row_pos[rr] = c.first_pos + fragment_row<1>(rr, tid) / p.heads_per_cta;
    const int n = (c.kv_end + BN - 1) / BN;
    const int first_masked = (c.first_pos + 1) / BN;  // tiles from here reach past row 0

    Scores<D> s;
    Accum<D> o = {};
    Probs<D> pr;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f}, alpha[2];
    const uint32_t q_slot = q_addr + qr.slot() * Tr::kQBytes;
    mbarrier_wait(&b.q_full[qr.slot()], qr.parity());
    int ks = acquire(kr, b.k_full);
    named_barrier_sync(1 + wg, Tr::kMathThreads);  // the first S takes turns too
    wgmma::fence();
    issue_qk<T, D>(s, q_slot, k_addr + ks * Tr::kTileBytes, wg);
    wgmma::commit_group();
    named_barrier_arrive(2 - wg, Tr::kMathThreads);
    wgmma::wait_group<0>();
    wgmma::fence_operand(s[0]);
    mbarrier_arrive(&b.k_empty[ks]);
    ++kr.count;
    if (n == 1) release_q(b, qr);
    if (n - 1 >= first_masked) mask_tile(s, (n - 1) * BN, row_pos, c.kv_end);
    softmax_tile(s, m, l, alpha, p.scale_log2);  // o is still zero: nothing to rescale
    to_probs<T, D>(pr, s);
    for (int j = n - 2; j >= 0; --j) {
      ks = acquire(kr, b.k_full);
      named_barrier_sync(1 + wg, Tr::kMathThreads);  // this warpgroup's turn
      wgmma::fence_operand(o[0]);
      wgmma::fence();
      issue_qk<T, D>(s, q_slot, k_addr + ks * Tr::kTileBytes, wg);
      wgmma::commit_group();
      const int vs = acquire(vr, b.v_full);
      issue_pv<T, D>(o, pr, v_addr + vs * Tr::kTileBytes);
      wgmma::commit_group();
      named_barrier_arrive(2 - wg, Tr::kMathThreads);  // the other's turn
      wgmma::wait_group<1>();  // S_j
      wgmma::fence_operand(s[0]);
      mbarrier_arrive(&b.k_empty[ks]);
      ++kr.count;
      if (j == 0) release_q(b, qr);
      if (j >= first_masked) mask_tile(s, j * BN, row_pos, c.kv_end);
      const bool moved = softmax_tile(s, m, l, alpha, p.scale_log2);
      wgmma::wait_group<0>();  // P_{j+1} V_{j+1}: pr and o are free again
      wgmma::fence_operand(o[0]);
      mbarrier_arrive(&b.v_empty[vs]);
      ++vr.count;
      if (moved) rescale_rows(o, alpha);
      to_probs<T, D>(pr, s);
    }
    const int vs = acquire(vr, b.v_full);
    wgmma::fence_operand(o[0]);
    wgmma::fence();
    issue_pv<T, D>(o, pr, v_addr + vs * Tr::kTileBytes);
    wgmma::commit_group();
    wgmma::wait_group<0>();
    wgmma::fence_operand(o[0]);
    mbarrier_arrive(&b.v_empty[vs]);
    ++vr.count;
    store_out<T>(o, l, p, c, tid);
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(Traits<D>::kThreads, 1)
    prefill_wgmma_kernel(const PrefillTcParams p, int num_items, int head_chunks, int* next_item) {
#ifdef MPA_WGMMA_ENABLED
  extern __shared__ unsigned char smem_raw[];
  const SharedTiles<D> sm(smem_raw);
  if (threadIdx.x == 0) sm.init_barriers();
  __syncthreads();
  if (threadIdx.x < Traits<D>::kProducerThreads) {
    wgmma::set_max_registers_dec<Traits<D>::kProducerRegisters>();
    produce<T, D>(p, sm, num_items, head_chunks, next_item);
  } else {
    wgmma::set_max_registers_inc<Traits<D>::kMathRegisters>();
    consume<T, D>(p, sm);
  }
#endif
}

}  // namespace prefill_wgmma

// One persistent CTA per SM (or per tile, when there are fewer tiles).
template <typename T>
void launch_prefill_wgmma(const PrefillTcParams& p, int64_t head_size, int64_t num_tokens,
                          int64_t num_kv_heads, cudaStream_t stream) {
  dispatch_head_size<64, 128>("wgmma paged_prefill_attention", head_size, [&](auto d) {
    constexpr int D = decltype(d)::value;
    using Tr = prefill_wgmma::Traits<D>;
    PrefillTcParams params = p;
    const prefill_tiles::TilePlan plan =
        prefill_tiles::plan_tiles(params, Tr::kBlockM, num_tokens, num_kv_heads);
    const int64_t items = plan.tiles * plan.head_chunks;
    int device = 0, sms = 0;
    C10_CUDA_CHECK(cudaGetDevice(&device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    auto kernel = prefill_wgmma::prefill_wgmma_kernel<T, D>;
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        Tr::kSmemBytes));
    // The tile counter, zeroed on the launch's stream (a memset node under graph capture).
    const at::Tensor next_item =
        at::zeros({1}, at::TensorOptions().dtype(at::kInt).device(at::kCUDA, device));
    kernel<<<static_cast<unsigned>(std::min<int64_t>(items, sms)), Tr::kThreads, Tr::kSmemBytes,
             stream>>>(params, static_cast<int>(items), static_cast<int>(plan.head_chunks),
                       next_item.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace mini_paged_attn::cuda
