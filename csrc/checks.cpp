#include "mini_paged_attn/checks.h"

#include <c10/util/Exception.h>

#include <cmath>
#include <tuple>

#include "mini_paged_attn/fp8.h"

namespace mini_paged_attn {
namespace {

bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

void check_float(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_TYPE(is_float_dtype(t.scalar_type()), op, ": ", name,
                   " must be float32, float16 or bfloat16, got ", t.scalar_type());
}

void check_int(const char* op, const char* name, const at::Tensor& t, at::ScalarType dtype) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, op, ": ", name, " must be ", dtype, ", got ",
                   t.scalar_type());
}

void check_dim(const char* op, const char* name, const at::Tensor& t, int64_t dim,
               const char* layout) {
  TORCH_CHECK_VALUE(t.dim() == dim, op, ": ", name, " must be ", dim, "-D ", layout,
                    ", got shape ", t.sizes());
}

void check_last_dim_contiguous(const char* op, const char* name, const at::Tensor& t) {
  // An empty tensor has no layout to speak of (expanded ones have stride 0).
  TORCH_CHECK_VALUE(t.numel() == 0 || t.size(-1) <= 1 || t.stride(-1) == 1, op, ": ", name,
                    " must be contiguous in its last dimension, got strides ", t.strides());
}

void check_same_device(const char* op, const char* name, const at::Tensor& t,
                       const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, " is on ", t.device(),
                    " but ", ref_name, " is on ", ref.device());
}

void check_cache(const char* op, const char* name, const at::Tensor& cache) {
  check_dim(op, name, cache, 4, "[num_blocks, block_size, num_kv_heads, head_size]");
  TORCH_CHECK_TYPE(is_float_dtype(cache.scalar_type()) || is_fp8(cache.scalar_type()), op, ": ",
                   name, " must be float32, float16, bfloat16, float8_e4m3fn or float8_e5m2, got ",
                   cache.scalar_type());
  // Checked here, before any CUDA launcher dispatches on the dtype.
  TORCH_CHECK_NOT_IMPLEMENTED(!(is_fp8(cache.scalar_type()) && cache.is_cuda()), op, ": ", name,
                              " is ", cache.scalar_type(),
                              ": fp8 KV cache is not implemented on CUDA yet");
  check_last_dim_contiguous(op, name, cache);
  TORCH_CHECK_VALUE(cache.size(0) > 0 && cache.size(1) > 0 && cache.size(2) > 0, op, ": ",
                    name, " has an empty dimension, shape ", cache.sizes());
}

void check_cache_pair(const char* op, const at::Tensor& key_cache,
                      const at::Tensor& value_cache) {
  check_cache(op, "key_cache", key_cache);
  check_cache(op, "value_cache", value_cache);
  TORCH_CHECK_VALUE(key_cache.sizes() == value_cache.sizes(), op,
                    ": value_cache shape ", value_cache.sizes(),
                    " differs from key_cache shape ", key_cache.sizes());
  TORCH_CHECK_TYPE(key_cache.scalar_type() == value_cache.scalar_type(), op,
                   ": value_cache dtype ", value_cache.scalar_type(),
                   " differs from key_cache dtype ", key_cache.scalar_type());
  check_same_device(op, "value_cache", value_cache, key_cache, "key_cache");
}

void check_metadata_layout(const char* op, const at::Tensor& block_tables,
                           const at::Tensor& context_lens) {
  check_dim(op, "block_tables", block_tables, 2, "[num_seqs, max_blocks_per_seq]");
  check_int(op, "block_tables", block_tables, at::kInt);
  check_last_dim_contiguous(op, "block_tables", block_tables);
  check_dim(op, "context_lens", context_lens, 1, "[num_seqs]");
  check_int(op, "context_lens", context_lens, at::kInt);
  TORCH_CHECK_VALUE(context_lens.is_contiguous(), op, ": context_lens must be contiguous");
  TORCH_CHECK_VALUE(block_tables.size(0) == context_lens.size(0), op, ": block_tables has ",
                    block_tables.size(0), " rows but context_lens has ", context_lens.size(0),
                    " entries");
}

// Everything paged decode and prefill have in common; num_seqs is read from
// block_tables, query rows are sequences (decode) or tokens (prefill).
PagedAttentionDims check_attention_args(const char* op, const at::Tensor& out,
                                        const at::Tensor& query, const char* query_layout,
                                        const at::Tensor& key_cache,
                                        const at::Tensor& value_cache,
                                        const at::Tensor& block_tables,
                                        const at::Tensor& context_lens) {
  check_dim(op, "query", query, 3, query_layout);
  check_float(op, "query", query);
  check_last_dim_contiguous(op, "query", query);
  check_cache_pair(op, key_cache, value_cache);
  check_metadata_layout(op, block_tables, context_lens);
  check_same_device(op, "key_cache", key_cache, query, "query");
  check_same_device(op, "block_tables", block_tables, query, "query");
  check_same_device(op, "context_lens", context_lens, query, "query");
  check_same_device(op, "out", out, query, "query");

  PagedAttentionDims d;
  d.num_seqs = block_tables.size(0);
  d.num_heads = query.size(1);
  d.head_size = query.size(2);
  d.num_blocks = key_cache.size(0);
  d.block_size = key_cache.size(1);
  d.num_kv_heads = key_cache.size(2);
  d.max_blocks_per_seq = block_tables.size(1);

  TORCH_CHECK_VALUE(key_cache.size(3) == d.head_size, op, ": key_cache head_size ",
                    key_cache.size(3), " differs from query head_size ", d.head_size);
  TORCH_CHECK_VALUE(d.num_heads > 0 && d.head_size > 0, op, ": query has an empty dimension, shape ",
                    query.sizes());
  TORCH_CHECK_VALUE(d.num_heads % d.num_kv_heads == 0, op, ": query num_heads (", d.num_heads,
                    ") must be a multiple of key_cache num_kv_heads (", d.num_kv_heads, ")");
  TORCH_CHECK_TYPE(query.scalar_type() == key_cache.scalar_type() ||
                       query.scalar_type() == at::kFloat || is_fp8(key_cache.scalar_type()),
                   op, ": query dtype ", query.scalar_type(),
                   " must match key_cache dtype ", key_cache.scalar_type(), " or be float32");
  TORCH_CHECK_VALUE(out.sizes() == query.sizes(), op, ": out shape ", out.sizes(),
                    " differs from query shape ", query.sizes());
  TORCH_CHECK_TYPE(out.scalar_type() == query.scalar_type(), op, ": out dtype ",
                   out.scalar_type(), " differs from query dtype ", query.scalar_type());
  check_last_dim_contiguous(op, "out", out);
  return d;
}

}  // namespace

PagedAttentionDims check_paged_attention(const char* op, const at::Tensor& out,
                                         const at::Tensor& query, const at::Tensor& key_cache,
                                         const at::Tensor& value_cache,
                                         const at::Tensor& block_tables,
                                         const at::Tensor& context_lens) {
  const PagedAttentionDims d =
      check_attention_args(op, out, query, "[num_seqs, num_heads, head_size]", key_cache,
                           value_cache, block_tables, context_lens);
  TORCH_CHECK_VALUE(block_tables.size(0) == query.size(0), op, ": block_tables has ",
                    block_tables.size(0), " rows but query has ", query.size(0), " sequences");
  return d;
}

PagedAttentionDims check_paged_prefill_attention(
    const char* op, const at::Tensor& out, const at::Tensor& query, const at::Tensor& key_cache,
    const at::Tensor& value_cache, const at::Tensor& block_tables,
    const at::Tensor& context_lens, const at::Tensor& query_start_loc) {
  const PagedAttentionDims d =
      check_attention_args(op, out, query, "[num_tokens, num_heads, head_size]", key_cache,
                           value_cache, block_tables, context_lens);
  check_dim(op, "query_start_loc", query_start_loc, 1, "[num_seqs + 1]");
  check_int(op, "query_start_loc", query_start_loc, at::kInt);
  TORCH_CHECK_VALUE(query_start_loc.is_contiguous(), op,
                    ": query_start_loc must be contiguous");
  check_same_device(op, "query_start_loc", query_start_loc, query, "query");
  TORCH_CHECK_VALUE(query_start_loc.size(0) == d.num_seqs + 1, op, ": query_start_loc has ",
                    query_start_loc.size(0), " entries but block_tables has ", d.num_seqs,
                    " rows (needs num_seqs + 1)");
  return d;
}

void check_reshape_and_cache(const at::Tensor& key, const at::Tensor& value,
                             const at::Tensor& key_cache, const at::Tensor& value_cache,
                             const at::Tensor& slot_mapping) {
  const char* op = "reshape_and_cache";
  check_cache_pair(op, key_cache, value_cache);
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"key", key},
                                {"value", value}}) {
    check_dim(op, name, t, 3, "[num_tokens, num_kv_heads, head_size]");
    // An fp8 cache quantizes 16-bit or float32 tokens; other caches store them as they are.
    if (is_fp8(key_cache.scalar_type())) {
      check_float(op, name, t);
    } else {
      TORCH_CHECK_TYPE(t.scalar_type() == key_cache.scalar_type(), op, ": ", name, " dtype ",
                       t.scalar_type(), " differs from key_cache dtype ",
                       key_cache.scalar_type());
    }
    check_last_dim_contiguous(op, name, t);
    check_same_device(op, name, t, key_cache, "key_cache");
    TORCH_CHECK_VALUE(t.size(1) == key_cache.size(2) && t.size(2) == key_cache.size(3), op,
                      ": ", name, " shape ", t.sizes(),
                      " does not match [num_tokens, num_kv_heads, head_size] of key_cache ",
                      key_cache.sizes());
  }
  TORCH_CHECK_TYPE(value.scalar_type() == key.scalar_type(), op, ": value dtype ",
                   value.scalar_type(), " differs from key dtype ", key.scalar_type());
  TORCH_CHECK_VALUE(key.size(0) == value.size(0), op, ": key has ", key.size(0),
                    " tokens but value has ", value.size(0));
  check_dim(op, "slot_mapping", slot_mapping, 1, "[num_tokens]");
  check_int(op, "slot_mapping", slot_mapping, at::kLong);
  TORCH_CHECK_VALUE(slot_mapping.is_contiguous(), op, ": slot_mapping must be contiguous");
  check_same_device(op, "slot_mapping", slot_mapping, key_cache, "key_cache");
  TORCH_CHECK_VALUE(slot_mapping.size(0) == key.size(0), op, ": slot_mapping has ",
                    slot_mapping.size(0), " entries but key has ", key.size(0), " tokens");
}

void check_copy_blocks(const std::vector<at::Tensor>& key_caches,
                       const std::vector<at::Tensor>& value_caches,
                       const at::Tensor& block_mapping) {
  const char* op = "copy_blocks";
  TORCH_CHECK_VALUE(key_caches.size() == value_caches.size(), op, ": got ", key_caches.size(),
                    " key_caches but ", value_caches.size(), " value_caches");
  TORCH_CHECK_VALUE(!key_caches.empty(), op, ": key_caches is empty");
  const at::Tensor& ref = key_caches[0];
  for (size_t i = 0; i < key_caches.size(); ++i) {
    check_cache_pair(op, key_caches[i], value_caches[i]);
    TORCH_CHECK_VALUE(key_caches[i].sizes() == ref.sizes(), op, ": key_caches[", i,
                      "] shape ", key_caches[i].sizes(), " differs from key_caches[0] shape ",
                      ref.sizes());
    TORCH_CHECK_TYPE(key_caches[i].scalar_type() == ref.scalar_type(), op, ": key_caches[", i,
                     "] dtype differs from key_caches[0]");
    check_same_device(op, "key_caches[i]", key_caches[i], ref, "key_caches[0]");
  }
  check_dim(op, "block_mapping", block_mapping, 2, "[num_pairs, 2]");
  check_int(op, "block_mapping", block_mapping, at::kLong);
  TORCH_CHECK_VALUE(block_mapping.size(1) == 2 && block_mapping.is_contiguous(), op,
                    ": block_mapping must be a contiguous [num_pairs, 2] tensor, got shape ",
                    block_mapping.sizes());
  check_same_device(op, "block_mapping", block_mapping, ref, "key_caches[0]");
}

void check_kv_scales(const char* op, double k_scale, double v_scale) {
  for (const auto& [name, s] : {std::pair<const char*, double>{"k_scale", k_scale},
                                {"v_scale", v_scale}}) {
    TORCH_CHECK_VALUE(std::isfinite(s) && s > 0, op, ": ", name,
                      " must be finite and > 0, got ", s);
  }
}

void check_block_tables(const char* op, const at::Tensor& block_tables,
                        const at::Tensor& context_lens, int64_t num_blocks, int64_t block_size) {
  check_metadata_layout(op, block_tables, context_lens);
  const int64_t num_seqs = context_lens.size(0);
  const int64_t max_blocks = block_tables.size(1);
  const int64_t row_stride = block_tables.stride(0);
  const int32_t* lens = context_lens.data_ptr<int32_t>();
  const int32_t* table = block_tables.data_ptr<int32_t>();
  for (int64_t s = 0; s < num_seqs; ++s) {
    const int64_t len = lens[s];
    TORCH_CHECK_VALUE(len >= 0 && len <= max_blocks * block_size, op, ": context_lens[", s,
                      "] = ", len, " does not fit its block_tables row of ", max_blocks,
                      " blocks of ", block_size, " tokens");
    const int64_t used = (len + block_size - 1) / block_size;
    for (int64_t b = 0; b < used; ++b) {
      const int64_t id = table[s * row_stride + b];
      TORCH_CHECK_INDEX(id >= 0 && id < num_blocks, op, ": block_tables[", s, ", ", b,
                        "] = ", id, " is out of range for a cache of ", num_blocks,
                        " blocks");
    }
  }
}

void check_query_start_loc(const char* op, const at::Tensor& query_start_loc,
                           const at::Tensor& context_lens, int64_t num_tokens) {
  check_dim(op, "query_start_loc", query_start_loc, 1, "[num_seqs + 1]");
  check_int(op, "query_start_loc", query_start_loc, at::kInt);
  TORCH_CHECK_VALUE(query_start_loc.is_contiguous() && context_lens.is_contiguous(), op,
                    ": query_start_loc and context_lens must be contiguous");
  TORCH_CHECK_VALUE(query_start_loc.size(0) == context_lens.size(0) + 1, op,
                    ": query_start_loc has ", query_start_loc.size(0),
                    " entries but context_lens has ", context_lens.size(0),
                    " (needs num_seqs + 1)");
  const int32_t* loc = query_start_loc.data_ptr<int32_t>();
  const int32_t* lens = context_lens.data_ptr<int32_t>();
  TORCH_CHECK_VALUE(loc[0] == 0, op, ": query_start_loc[0] must be 0, got ", loc[0]);
  for (int64_t s = 0; s < context_lens.size(0); ++s) {
    const int64_t q_len = static_cast<int64_t>(loc[s + 1]) - loc[s];
    TORCH_CHECK_VALUE(q_len >= 0, op, ": query_start_loc decreases at entry ", s + 1, " (",
                      loc[s], " then ", loc[s + 1], ")");
    TORCH_CHECK_VALUE(q_len <= lens[s], op, ": sequence ", s, " has ", q_len,
                      " query tokens (query_start_loc) but context_lens[", s, "] = ", lens[s],
                      "; context_lens must count the new tokens too");
  }
  TORCH_CHECK_VALUE(loc[context_lens.size(0)] == num_tokens, op,
                    ": query_start_loc ends at ", loc[context_lens.size(0)], " but query has ",
                    num_tokens, " tokens");
}

void check_slot_mapping(const char* op, const at::Tensor& slot_mapping, int64_t num_slots) {
  check_dim(op, "slot_mapping", slot_mapping, 1, "[num_tokens]");
  check_int(op, "slot_mapping", slot_mapping, at::kLong);
  TORCH_CHECK_VALUE(slot_mapping.is_contiguous(), op, ": slot_mapping must be contiguous");
  const int64_t* slots = slot_mapping.data_ptr<int64_t>();
  for (int64_t i = 0; i < slot_mapping.numel(); ++i) {
    TORCH_CHECK_INDEX(slots[i] < num_slots, op, ": slot_mapping[", i, "] = ", slots[i],
                      " is out of range for a cache of ", num_slots, " slots");
  }
}

void check_block_mapping(const char* op, const at::Tensor& block_mapping, int64_t num_blocks) {
  check_dim(op, "block_mapping", block_mapping, 2, "[num_pairs, 2]");
  check_int(op, "block_mapping", block_mapping, at::kLong);
  TORCH_CHECK_VALUE(block_mapping.size(1) == 2 && block_mapping.is_contiguous(), op,
                    ": block_mapping must be a contiguous [num_pairs, 2] tensor, got shape ",
                    block_mapping.sizes());
  const int64_t* pairs = block_mapping.data_ptr<int64_t>();
  const int64_t num_pairs = block_mapping.size(0);
  // Pairs are copied in parallel, so a block written by one pair must not be
  // read or written by another.
  std::vector<bool> is_src(num_blocks, false), is_dst(num_blocks, false);
  for (int64_t i = 0; i < num_pairs; ++i) {
    for (int64_t j = 0; j < 2; ++j) {
      const int64_t id = pairs[2 * i + j];
      TORCH_CHECK_INDEX(id >= 0 && id < num_blocks, op, ": block_mapping[", i, ", ", j,
                        "] = ", id, " is out of range for a cache of ", num_blocks, " blocks");
    }
    is_src[pairs[2 * i]] = true;
  }
  for (int64_t i = 0; i < num_pairs; ++i) {
    const int64_t dst = pairs[2 * i + 1];
    TORCH_CHECK_VALUE(!is_dst[dst] && !is_src[dst], op, ": block ", dst,
                      " is written by block_mapping[", i,
                      "] and also read or written by another pair");
    is_dst[dst] = true;
  }
}

}  // namespace mini_paged_attn

namespace mini_paged_attn {

void check_sample_tokens(const at::Tensor& logits, const at::Tensor& temperatures,
                         const at::Tensor& min_scaled_logits, const at::Tensor& seeds,
                         const at::Tensor& positions) {
  const char* op = "sample_tokens";
  check_dim(op, "logits", logits, 2, "[num_rows, vocab]");
  check_float(op, "logits", logits);
  check_last_dim_contiguous(op, "logits", logits);
  TORCH_CHECK_VALUE(logits.size(1) > 0, op, ": logits has an empty vocabulary, shape ",
                    logits.sizes());
  for (const auto& [name, t, dtype] :
       {std::tuple<const char*, const at::Tensor&, at::ScalarType>{"temperatures", temperatures,
                                                                   at::kFloat},
        {"min_scaled_logits", min_scaled_logits, at::kFloat},
        {"seeds", seeds, at::kLong},
        {"positions", positions, at::kLong}}) {
    check_dim(op, name, t, 1, "[num_rows]");
    check_int(op, name, t, dtype);
    TORCH_CHECK_VALUE(t.is_contiguous(), op, ": ", name, " must be contiguous");
    check_same_device(op, name, t, logits, "logits");
    TORCH_CHECK_VALUE(t.size(0) == logits.size(0), op, ": ", name, " has ", t.size(0),
                      " entries but logits has ", logits.size(0), " rows");
  }
}

}  // namespace mini_paged_attn
