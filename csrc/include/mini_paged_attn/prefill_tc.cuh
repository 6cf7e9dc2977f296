// Paged prefill attention on tensor cores (fp16 / bf16), FlashAttention-2
// style: one CTA owns a tile of kBlockM query rows and walks the keys in tiles
// of kBlockN, gathered through the block table with cp.async. S = Q K^T and
// O += P V run on mma.sync m16n8k16 with fp32 accumulators; the online softmax
// stays in registers; only tiles that reach past the first row's position are
// masked.
//
// GQA: a CTA's rows are (token, head) pairs of one KV head's group, so the
// group's query heads share every K/V tile a CTA loads. Row r is token
// r / heads_per_cta, head r % heads_per_cta of the CTA's head chunk.
//
// Nothing is read back on the host: the grid is an upper bound on the tiles
// and each CTA finds its (sequence, tile) from query_start_loc, so the launch
// can be captured in a CUDA graph.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "mini_paged_attn/cuda_utils.cuh"

namespace mini_paged_attn::cuda {

// What both CUDA prefill kernels are given.
struct PrefillArgs {
  void* out;
  const void* query;
  PagedKV kv;
  const int32_t* query_start_loc;
  int64_t out_token_stride, out_head_stride;  // elements
  int64_t q_token_stride, q_head_stride;
  int num_seqs, group_size, block_size;
};

struct PrefillTcParams : PrefillArgs {
  int block_shift;      // log2(block_size), or -1 when it is not a power of two
  // The CTA's rows, set by the launcher for its head size:
  int heads_per_cta;    // query heads of one group in a CTA's rows
  int head_chunks;      // CTAs along one group's heads: ceil(group_size / heads_per_cta)
  int tokens_per_tile;  // rows / heads_per_cta
  float scale_log2;     // softmax scale * log2(e) > 0: scores go through exp2
};

// Head sizes with a tensor-core kernel; others take the float32 CUDA-core path.
inline bool prefill_tc_head_size(int64_t d) {
  return d == 32 || d == 64 || d == 80 || d == 96 || d == 128 || d == 256;
}

template <typename T>
void launch_prefill_tc(const PrefillTcParams& p, int64_t head_size, int64_t num_tokens,
                       int64_t num_kv_heads, cudaStream_t stream);

extern template void launch_prefill_tc<__half>(const PrefillTcParams&, int64_t, int64_t, int64_t,
                                               cudaStream_t);
extern template void launch_prefill_tc<__nv_bfloat16>(const PrefillTcParams&, int64_t, int64_t,
                                                      int64_t, cudaStream_t);

// The wgmma kernel (sm_90a, head sizes 64 and 128): whether this build has it
// for the device, and its launcher.
bool prefill_wgmma_usable(int64_t head_size, int device);

template <typename T>
void launch_prefill_wgmma(const PrefillTcParams& p, int64_t head_size, int64_t num_tokens,
                          int64_t num_kv_heads, cudaStream_t stream);

extern template void launch_prefill_wgmma<__half>(const PrefillTcParams&, int64_t, int64_t,
                                                  int64_t, cudaStream_t);
extern template void launch_prefill_wgmma<__nv_bfloat16>(const PrefillTcParams&, int64_t,
                                                         int64_t, int64_t, cudaStream_t);

}  // namespace mini_paged_attn::cuda
