// The decode kernel's K/V copy pipeline (attention_kernels.cuh): each warp
// streams its own 16-token tiles of K and V into kStages stages of shared
// memory with cp.async, gathered through the block table.
//
// Warp w takes tiles w, w + kWarps, ... of the split. Tiles start on multiples
// of 16 tokens, so with blocks of 16 tokens or more a tile lies in one page
// (the tile path): every lane looks up the page of the tile's first token, and
// row r is r token strides further: no shuffles and one 64-bit multiply a
// tile. Otherwise (and in evict-first launches, see issue) lanes l and l + 16
// look up the page of token l, and each row takes its page from that lane (the
// row path).
//
// Lookups are speculative (bounded by the block-table row, not yet by the
// context): a page is used only for tokens before `end`; later tokens are
// zero-filled, never read (they may be NaN).
#pragma once

#include "mini_paged_attn/decode_traits.cuh"

namespace mini_paged_attn::cuda {

template <typename Tr, typename cache_t>
struct KVStream {
  const PagedKV& kv;
  unsigned char* smem;  // this warp's [kStages][K|V][16][kRowBytes]
  const int32_t* block_table;
  const cache_t* k_base;
  const cache_t* v_base;
  int start;       // the split's first token
  int end;         // one past its last token; set once the context length is known
  int lookup_end;  // lookups stop here: the split's end within the block-table row
  int offset_mask, log2_block_size, warp, lane;
  bool tile_path;
  uint64_t policy;

  __device__ __forceinline__ int tile_start(int j) const {
    return start + (warp + j * Tr::kWarps) * Tr::kTileTokens;
  }

  // The page (0 past lookup_end) and in-page offset of tile j's token for this lane.
  __device__ __forceinline__ void lookup(int j, int& page, int& offset) const {
    const int tok = tile_start(j) + (tile_path ? 0 : lane & 15);
    page = 0;
    offset = tok & offset_mask;
    if (tok < lookup_end) page = __ldg(block_table + (tok >> log2_block_size));
  }

  // Copies tile j into `stage`. Consecutive lanes copy consecutive 16-byte
  // pieces of a row: coalesced. The tile path copies without a policy operand,
  // so evict-first launches take the row path: with a cache-hint operand,
  // ptxas 13.0 (V13.0.88) turned the tile path's copies into LDGSTS
  // instructions that read the policy from an odd uniform register, which the
  // GPU stops as an illegal instruction (docs/archive/perf-notes-2026-11.md).
  template <bool kTilePath>
  __device__ __forceinline__ void issue(int stage, int j, int page, int offset) const {
    constexpr int kTile = Tr::kTileTokens;
    unsigned char* ks = smem + stage * Tr::kStageBytes;
    unsigned char* vs = ks + kTile * Tr::kRowBytes;
    const int valid_rows = end - tile_start(j);
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
        const int pg = __shfl_sync(0xffffffffu, page, row);
        const int off = __shfl_sync(0xffffffffu, offset, row);
        const int64_t blk = valid ? pg : 0;  // rows past the context may hold garbage ids
        cp_async_16(ks + dst, k_base + blk * kv.k_block_stride + off * kv.k_token_stride + elem,
                    valid, policy);
        cp_async_16(vs + dst, v_base + blk * kv.v_block_stride + off * kv.v_token_stride + elem,
                    valid, policy);
      }
    }
  }

  // The pipeline's first kStages - 1 tiles (of my_tiles), one commit group each.
  template <bool kTilePath>
  __device__ __forceinline__ void fill(const int (&pages)[Tr::kStages],
                                       const int (&offsets)[Tr::kStages], int my_tiles) const {
#pragma unroll
    for (int st = 0; st < Tr::kStages - 1; ++st) {
      if (st < my_tiles) issue<kTilePath>(st, st, pages[st], offsets[st]);
      cp_async_commit();
    }
  }
};

}  // namespace mini_paged_attn::cuda
