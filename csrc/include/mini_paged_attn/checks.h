// Argument validation shared by every backend of every op. Each check names
// the offending argument; the exception type maps to Python as
// TypeError (dtype), ValueError (shape, device, layout) or IndexError.
#pragma once

#include <ATen/core/Tensor.h>

#include <cmath>
#include <vector>

namespace mini_paged_attn {

// The softmax scale when none is given (ops.default_scale in Python).
inline double default_scale(int64_t head_size) {
  return 1.0 / std::sqrt(static_cast<double>(head_size));
}

// Sizes of one paged-attention call, read from validated tensors.
struct PagedAttentionDims {
  int64_t num_seqs;
  int64_t num_heads;
  int64_t num_kv_heads;
  int64_t head_size;
  int64_t num_blocks;
  int64_t block_size;
  int64_t max_blocks_per_seq;
};

// out, query:             [num_seqs, num_heads, head_size], last dim contiguous;
//                         query of key_cache's dtype, float32, or any float dtype
//                         for an fp8 cache (fp8 caches: CPU only for now)
// key_cache, value_cache: [num_blocks, block_size, num_kv_heads, head_size],
//                         any strides with a contiguous last dim
// block_tables:           int32 [num_seqs, max_blocks_per_seq], last dim contiguous
// context_lens:           int32 [num_seqs], contiguous
PagedAttentionDims check_paged_attention(const char* op, const at::Tensor& out,
                                         const at::Tensor& query, const at::Tensor& key_cache,
                                         const at::Tensor& value_cache,
                                         const at::Tensor& block_tables,
                                         const at::Tensor& context_lens);

// Paged prefill: the queries of all sequences are concatenated.
// out, query:      [num_tokens, num_heads, head_size], last dim contiguous
// key_cache, value_cache, block_tables, context_lens: as for paged attention,
//                  one row per sequence; context_lens counts the new tokens too
// query_start_loc: int32 [num_seqs + 1], contiguous; sequence s owns query rows
//                  query_start_loc[s] .. query_start_loc[s + 1] - 1
PagedAttentionDims check_paged_prefill_attention(
    const char* op, const at::Tensor& out, const at::Tensor& query, const at::Tensor& key_cache,
    const at::Tensor& value_cache, const at::Tensor& block_tables,
    const at::Tensor& context_lens, const at::Tensor& query_start_loc);

// key, value:             [num_tokens, num_kv_heads, head_size], last dim contiguous,
//                         of key_cache's dtype (any float dtype for an fp8 cache)
// key_cache, value_cache: [num_blocks, block_size, num_kv_heads, head_size]
// slot_mapping:           int64 [num_tokens], contiguous
void check_reshape_and_cache(const at::Tensor& key, const at::Tensor& value,
                             const at::Tensor& key_cache, const at::Tensor& value_cache,
                             const at::Tensor& slot_mapping);

// key_caches, value_caches: one [num_blocks, block_size, num_kv_heads, head_size]
//                           cache per layer, all alike
// block_mapping:            int64 [num_pairs, 2] of (src, dst) block ids, contiguous
void check_copy_blocks(const std::vector<at::Tensor>& key_caches,
                       const std::vector<at::Tensor>& value_caches,
                       const at::Tensor& block_mapping);

}  // namespace mini_paged_attn

namespace mini_paged_attn {

// Data checks on CPU tensors (the CPU kernels run them always; for other
// devices the Python wrappers copy the metadata to the host when check=True):
// every context_len fits its block_tables row and every block id it uses is
// in [0, num_blocks).
void check_block_tables(const char* op, const at::Tensor& block_tables,
                        const at::Tensor& context_lens, int64_t num_blocks, int64_t block_size);
// query_start_loc starts at 0, never decreases, ends at num_tokens, and no
// sequence has more new tokens than its context_len.
void check_query_start_loc(const char* op, const at::Tensor& query_start_loc,
                           const at::Tensor& context_lens, int64_t num_tokens);
// Every slot is negative (skipped) or in [0, num_slots).
void check_slot_mapping(const char* op, const at::Tensor& slot_mapping, int64_t num_slots);
// Every (src, dst) id is in [0, num_blocks); a dst is never another pair's
// src or dst.
void check_block_mapping(const char* op, const at::Tensor& block_mapping, int64_t num_blocks);
// The fp8 KV-cache scales are finite and > 0 (checked for every cache dtype,
// though only fp8 caches use them).
void check_kv_scales(const char* op, double k_scale, double v_scale);

}  // namespace mini_paged_attn

namespace mini_paged_attn {

// logits:            [num_rows, vocab] float32/float16/bfloat16, last dim contiguous
// temperatures:      float32 [num_rows] (<= 0: greedy)
// min_scaled_logits: float32 [num_rows]; only tokens with logit * (1 / T) >= it are drawn
// seeds, positions:  int64 [num_rows], the counter of each row's noise
// All contiguous and on the device of logits.
void check_sample_tokens(const at::Tensor& logits, const at::Tensor& temperatures,
                         const at::Tensor& min_scaled_logits, const at::Tensor& seeds,
                         const at::Tensor& positions);

}  // namespace mini_paged_attn
