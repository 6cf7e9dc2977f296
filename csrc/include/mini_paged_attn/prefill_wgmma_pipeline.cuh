// The producer side of the wgmma prefill kernel (prefill_wgmma_kernel.cuh):
// its tile shapes, the shared-memory rings, and the warpgroup that fills them.
//
// Warpgroup 0 gathers Q, K and V tiles through the block table with cp.async
// (a page can hold as few as 8 keys, too small a unit for TMA) into 128-byte
// swizzled panels; warpgroups 1 and 2 multiply. A ring slot passes between
// the two sides through two mbarriers: full (the producer's 128 threads'
// copies have landed: cp.async.mbarrier.arrive) and empty (the 256 math
// threads' wgmmas that read it are done). The CTA is persistent: it walks
// tiles blockIdx.x, blockIdx.x + gridDim.x, ..., so the producer loads the
// next tile's Q and first K while the math warpgroups finish the last. The
// producer also finds each tile (global loads whose latency would stall the
// math warpgroups between tiles) and hands its coordinates over in shared
// memory, two slots deep.
#pragma once

#include <cstdint>

#include "mini_paged_attn/prefill_tc.cuh"
#include "mini_paged_attn/prefill_tiles.cuh"
#include "mini_paged_attn/wgmma.cuh"

namespace mini_paged_attn::cuda::prefill_wgmma {

using namespace prefill_tiles;

constexpr int kRingSlots = 2;

template <int D>
struct Traits {
  static constexpr int kProducerThreads = 128;
  static constexpr int kMathThreads = 256;  // two warpgroups of 64 query rows
  static constexpr int kThreads = kProducerThreads + kMathThreads;
  static constexpr int kBlockM = 128;  // rows: (token, head) pairs
  static constexpr int kBlockN = 128;  // keys a tile
  static constexpr int kStages = kRingSlots;  // of K and of V
  static constexpr int kChunks = D / 8;  // 16-byte chunks a row
  static constexpr int kRowsPerWarp = kBlockN / (kProducerThreads / 32);  // per producer warp
  static constexpr int kQBytes = kBlockM * D * 2;
  static constexpr int kTileBytes = kBlockN * D * 2;  // one slot of K or of V
  // Registers a thread: 128 x 72 + 256 x 216 = 384 x 168, the launch's budget.
  static constexpr int kProducerRegisters = 72;
  static constexpr int kMathRegisters = 216;
  // Q, the K and V rings, room to align the base to 1024 bytes, the barriers
  // and the tile coordinates.
  static constexpr int kSmemBytes = kQBytes + 2 * kStages * kTileBytes + 1024 + 256;
  static_assert(D == 64 || D == 128);
};

struct Barriers {
  uint64_t q_full, q_empty;
  uint64_t k_full[kRingSlots], k_empty[kRingSlots], v_full[kRingSlots], v_empty[kRingSlots];
  uint64_t item_full[2];  // tile coordinates written (item % 2)
};

// Shared memory: Q, then the K ring, the V ring, the barriers and the
// coordinates of the CTA's next tiles (seq < 0: no more tiles).
template <int D>
struct SharedTiles {
  unsigned char *q, *k, *v;
  Barriers* bar;
  TileCoords* items;  // [2]

  __device__ __forceinline__ explicit SharedTiles(unsigned char* raw) {
    using Tr = Traits<D>;
    q = raw + (1024 - smem_addr(raw) % 1024) % 1024;
    k = q + Tr::kQBytes;
    v = k + Tr::kStages * Tr::kTileBytes;
    bar = reinterpret_cast<Barriers*>(v + Tr::kStages * Tr::kTileBytes);
    items = reinterpret_cast<TileCoords*>(bar + 1);
    static_assert(sizeof(Barriers) + 2 * sizeof(TileCoords) <= 256);
  }

  __device__ __forceinline__ void init_barriers() const {
    using Tr = Traits<D>;
    mbarrier_init(&bar->q_full, Tr::kProducerThreads);
    mbarrier_init(&bar->q_empty, Tr::kMathThreads);
    for (int i = 0; i < Tr::kStages; ++i) {
      mbarrier_init(&bar->k_full[i], Tr::kProducerThreads);
      mbarrier_init(&bar->v_full[i], Tr::kProducerThreads);
      mbarrier_init(&bar->k_empty[i], Tr::kMathThreads);
      mbarrier_init(&bar->v_empty[i], Tr::kMathThreads);
    }
    for (uint64_t& item : bar->item_full) mbarrier_init(&item, 1);
  }
};

// A position in a ring of S slots, counted over the CTA's whole life; both
// sides walk the same sequence of tiles, so their counts agree.
template <int S>
struct Ring {
  int count = 0;
  __device__ __forceinline__ int slot() const { return count % S; }
  __device__ __forceinline__ int parity() const { return (count / S) & 1; }
};

// The tile of work item w: head chunk w % head_chunks of query tile
// w / head_chunks (heads vary fastest, so neighbouring CTAs share K/V rows).
__device__ __forceinline__ bool find_item(const PrefillTcParams& p, int w, int head_chunks,
                                          TileCoords& c) {
  return find_tile(p, w / head_chunks, w % head_chunks, c);
}

// Copies one K or V tile into the next slot of its ring once that slot is empty.
template <typename T, int D>
__device__ __forceinline__ void fill_slot(Ring<Traits<D>::kStages>& r, unsigned char* ring,
                                          uint64_t* full, uint64_t* empty, const void* cache,
                                          int64_t offset, int first, int kv_end) {
  using Tr = Traits<D>;
  mbarrier_wait(&empty[r.slot()], r.parity() ^ 1);
  copy_rows<Tr::kRowsPerWarp, Tr::kChunks>(
      ring + r.slot() * Tr::kTileBytes, static_cast<const T*>(cache), offset, first, kv_end,
      [](int row, int chunk) { return wgmma::swizzled_offset(Tr::kBlockN, row, chunk); });
  cp_async_mbarrier_arrive(&full[r.slot()]);
  ++r.count;
}

// The producer warpgroup: for each tile, Q, then K and V in the order the
// math warpgroups use them (K_{n-1}, then K_{j-1} and V_j for j = n-1..0).
// Each page is looked up a tile ahead of its copy.
template <typename T, int D>
__device__ __forceinline__ void produce(const PrefillTcParams& p, const SharedTiles<D>& sm,
                                        int num_items, int head_chunks) {
  using Tr = Traits<D>;
  constexpr int BN = Tr::kBlockN, RW = Tr::kRowsPerWarp;
  Barriers& b = *sm.bar;
  Ring<Tr::kStages> kr, vr;
  for (int w = blockIdx.x, item = 0;; w += gridDim.x, ++item) {
    TileCoords c;
    const bool valid = w < num_items && find_item(p, w, head_chunks, c);
    if (!valid) {  // tell the math warpgroups, once they are done with the last Q
      mbarrier_wait(&b.q_empty, (item & 1) ^ 1);
      if (threadIdx.x == 0) {
        sm.items[item & 1].seq = -1;
        mbarrier_arrive(&b.item_full[item & 1]);
      }
      break;
    }
    const int32_t* table = p.kv.block_tables + c.seq * p.kv.block_table_stride;
    const KVRows kv = kv_rows(p, c.kv_head);
    const int n = (c.kv_end + BN - 1) / BN;
    int64_t off = row_offset<RW>(p, kv, lookup_page<RW>(p, table, (n - 1) * BN, c.kv_end),
                                 (n - 1) * BN, c.kv_end);
    int page = lookup_page<RW>(p, table, (n - 2) * BN, c.kv_end);
    mbarrier_wait(&b.q_empty, (item & 1) ^ 1);
    if (threadIdx.x == 0) {
      sm.items[item & 1] = c;
      mbarrier_arrive(&b.item_full[item & 1]);  // releases the store
    }
    load_q_rows<T, Tr::kBlockM, Tr::kChunks, Tr::kProducerThreads>(
        sm.q, p, c, [](int r, int chunk) { return wgmma::swizzled_offset(Tr::kBlockM, r, chunk); });
    cp_async_mbarrier_arrive(&b.q_full);
    fill_slot<T, D>(kr, sm.k, b.k_full, b.k_empty, p.kv.key_cache, off, (n - 1) * BN, c.kv_end);
    for (int j = n - 1; j >= 0; --j) {
      int64_t next = 0;
      if (j > 0) {
        next = row_offset<RW>(p, kv, page, (j - 1) * BN, c.kv_end);
        page = lookup_page<RW>(p, table, (j - 2) * BN, c.kv_end);
        fill_slot<T, D>(kr, sm.k, b.k_full, b.k_empty, p.kv.key_cache, next, (j - 1) * BN,
                        c.kv_end);
      }
      fill_slot<T, D>(vr, sm.v, b.v_full, b.v_empty, p.kv.value_cache, off, j * BN, c.kv_end);
      off = next;
    }
  }
  cp_async_commit();
  cp_async_wait<0>();  // nothing in flight into shared memory when the warps exit
}

}  // namespace mini_paged_attn::cuda::prefill_wgmma
