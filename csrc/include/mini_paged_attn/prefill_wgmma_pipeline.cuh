// The producer side of the wgmma prefill kernel (prefill_wgmma_kernel.cuh):
// its tile shapes, the shared-memory rings, and the warpgroup that fills them.
//
// Warpgroup 0 gathers Q, K and V tiles through the block table with cp.async
// (a page can hold as few as 8 keys, too small a unit for TMA) into 128-byte
// swizzled panels; warpgroups 1 and 2 multiply. A ring slot passes between
// the two sides through two mbarriers: full (the producer's 128 threads'
// copies have landed: cp.async.mbarrier.arrive) and empty (the 256 math
// threads' wgmmas that read it are done). The CTA is persistent: it starts on
// tile blockIdx.x and then claims the next unclaimed tile from a counter in
// global memory, so CTAs that drew short tiles take more of them; each tile
// is still computed whole by one CTA, so results do not depend on the
// schedule. The producer loads the next tile's Q and first K while the math
// warpgroups finish the last multiplies of the current one. It also finds
// each tile (global loads whose latency would stall the math warpgroups
// between tiles) and hands its coordinates over in shared memory, in the slot
// of the tile's Q.
#pragma once

#include <cstdint>

#include "mini_paged_attn/prefill_tc.cuh"
#include "mini_paged_attn/prefill_tiles.cuh"
#include "mini_paged_attn/wgmma.cuh"

namespace mini_paged_attn::cuda::prefill_wgmma {

using namespace prefill_tiles;

constexpr int kRingSlots = 2;
constexpr int kQSlots = 1;  // two were slower on short tiles (perf-notes.md)
constexpr int kProducerBarrier = 3;  // named barrier of the producer warpgroup (math: 1 and 2)

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
  // The Q slots, the K and V rings, room to align the base to 1024 bytes, the
  // barriers, the tile coordinates and the claimed tiles.
  static constexpr int kSmemBytes = kQSlots * kQBytes + 2 * kStages * kTileBytes + 1024 + 256;
  static_assert(D == 64 || D == 128);
};

struct Barriers {
  uint64_t q_full[kQSlots], q_empty[kQSlots];
  uint64_t k_full[kRingSlots], k_empty[kRingSlots], v_full[kRingSlots], v_empty[kRingSlots];
  uint64_t item_full[kQSlots];  // tile coordinates written
};

// Shared memory: the Q slots, then the K ring, the V ring, the barriers, the
// coordinates of the tiles in the Q slots (seq < 0: no more tiles), and the
// tiles the producer claimed.
template <int D>
struct SharedTiles {
  unsigned char *q, *k, *v;
  Barriers* bar;
  TileCoords* items;  // [kQSlots]
  int* claimed;       // [2], by the parity of the producer's tile count

  __device__ __forceinline__ explicit SharedTiles(unsigned char* raw) {
    using Tr = Traits<D>;
    q = raw + (1024 - smem_addr(raw) % 1024) % 1024;
    k = q + kQSlots * Tr::kQBytes;
    v = k + Tr::kStages * Tr::kTileBytes;
    bar = reinterpret_cast<Barriers*>(v + Tr::kStages * Tr::kTileBytes);
    items = reinterpret_cast<TileCoords*>(bar + 1);
    claimed = reinterpret_cast<int*>(items + kQSlots);
    static_assert(sizeof(Barriers) + kQSlots * sizeof(TileCoords) + 2 * sizeof(int) <= 256);
  }

  __device__ __forceinline__ void init_barriers() const {
    using Tr = Traits<D>;
    for (int i = 0; i < kQSlots; ++i) {
      mbarrier_init(&bar->q_full[i], Tr::kProducerThreads);
      mbarrier_init(&bar->q_empty[i], Tr::kMathThreads);
      mbarrier_init(&bar->item_full[i], 1);
    }
    for (int i = 0; i < Tr::kStages; ++i) {
      mbarrier_init(&bar->k_full[i], Tr::kProducerThreads);
      mbarrier_init(&bar->v_full[i], Tr::kProducerThreads);
      mbarrier_init(&bar->k_empty[i], Tr::kMathThreads);
      mbarrier_init(&bar->v_empty[i], Tr::kMathThreads);
    }
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
// Each page is looked up a tile ahead of its copy. next_item counts the tiles
// claimed after the first gridDim.x (zero at launch).
template <typename T, int D>
__device__ __forceinline__ void produce(const PrefillTcParams& p, const SharedTiles<D>& sm,
                                        int num_items, int head_chunks, int* next_item) {
  using Tr = Traits<D>;
  constexpr int BN = Tr::kBlockN, RW = Tr::kRowsPerWarp;
  Barriers& b = *sm.bar;
  Ring<Tr::kStages> kr, vr;
  Ring<kQSlots> qr;  // one count a tile
  for (int w = blockIdx.x;; ++qr.count) {
    // The tile after this one, claimed now: the atomic's latency passes during this one.
    int claimed = 0;
    if (threadIdx.x == 0) claimed = atomicAdd(next_item, 1);
    TileCoords c;
    const bool valid = w < num_items && find_item(p, w, head_chunks, c);
    if (!valid) {  // tell the math warpgroups, once they are done with the Q of this slot
      mbarrier_wait(&b.q_empty[qr.slot()], qr.parity() ^ 1);
      if (threadIdx.x == 0) {
        sm.items[qr.slot()].seq = -1;
        mbarrier_arrive(&b.item_full[qr.slot()]);
      }
      break;
    }
    const int32_t* table = p.kv.block_tables + c.seq * p.kv.block_table_stride;
    const KVRows kv = kv_rows(p, c.kv_head);
    const int n = (c.kv_end + BN - 1) / BN;
    int64_t off = row_offset<RW>(p, kv, lookup_page<RW>(p, table, (n - 1) * BN, c.kv_end),
                                 (n - 1) * BN, c.kv_end);
    int page = lookup_page<RW>(p, table, (n - 2) * BN, c.kv_end);
    // The slot's last tile is done with Q, so its coordinates have been read too.
    mbarrier_wait(&b.q_empty[qr.slot()], qr.parity() ^ 1);
    if (threadIdx.x == 0) {
      sm.items[qr.slot()] = c;
      mbarrier_arrive(&b.item_full[qr.slot()]);  // releases the store
    }
    load_q_rows<T, Tr::kBlockM, Tr::kChunks, Tr::kProducerThreads>(
        sm.q + qr.slot() * Tr::kQBytes, p, c,
        [](int r, int chunk) { return wgmma::swizzled_offset(Tr::kBlockM, r, chunk); });
    cp_async_mbarrier_arrive(&b.q_full[qr.slot()]);
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
    // Each slot is rewritten two tiles on, after the barrier of the next.
    if (threadIdx.x == 0) sm.claimed[qr.count & 1] = gridDim.x + claimed;
    named_barrier_sync(kProducerBarrier, Tr::kProducerThreads);
    w = sm.claimed[qr.count & 1];
  }
  cp_async_commit();
  cp_async_wait<0>();  // nothing in flight into shared memory when the warps exit
}

}  // namespace mini_paged_attn::cuda::prefill_wgmma
