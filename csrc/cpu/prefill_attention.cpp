// CPU paged prefill attention: causal attention of each sequence's new tokens
// over its cached prefix and themselves, read through the block table. The
// new tokens' K/V must already be in the cache (reshape_and_cache).
//
// Work items are (sequence, tile of query tokens, KV head): the query heads
// of a group and the tokens of a tile share every K/V row they read, so a
// row is loaded once per item. Each item is one pass over the blocks with an
// online softmax, parallel over items.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "mini_paged_attn/checks.h"
#include "mini_paged_attn/cpu_isa.h"
#include "mini_paged_attn/cpu_vec.h"
#include "mini_paged_attn/dispatch.h"
#include "mini_paged_attn/fp8.h"

namespace mini_paged_attn::cpu {

// Query tokens per item: enough rows to amortise each K/V load, few enough
// that a sequence's prompt still splits into several items.
constexpr int64_t kTileTokens = 16;

// Rows are (token, head of the group), token-major: row r is token r / G of
// the tile, head kv_head * G + r % G. Strides are in elements.
struct PrefillTask {
  const float* q;              // [rows, head_size], pre-multiplied by scale
  float* acc;                  // [rows, head_size], unnormalised output
  float* max;                  // [rows], running max of the scores
  float* sum;                  // [rows], running sum of exp(score - max)
  float* scores;               // [rows, block_size] scratch
  const void** v_rows;         // [block_size] scratch
  const int32_t* block_table;  // [max_blocks_per_seq]
  const void* k;               // key_cache data, offset to the KV head
  const void* v;               // value_cache data, offset to the KV head
  int64_t k_block_stride, k_token_stride;
  int64_t v_block_stride, v_token_stride;
  int64_t group, head_size, block_size;
  int64_t num_tokens;  // query tokens in the tile
  int64_t first_pos;   // position of the tile's first token in its sequence
};

template <typename T, int W>
MPA_INLINE void prefill_impl(const PrefillTask& t) {
  const int64_t G = t.group, D = t.head_size, B = t.block_size;
  const int64_t R = t.num_tokens * G;
  const int64_t end = t.first_pos + t.num_tokens;  // the last token sees [0, end)
  const T** v_rows = reinterpret_cast<const T**>(t.v_rows);
  const T* kc = static_cast<const T*>(t.k);
  const T* vc = static_cast<const T*>(t.v);
  std::fill(t.acc, t.acc + R * D, 0.f);
  std::fill(t.max, t.max + R, -std::numeric_limits<float>::infinity());
  std::fill(t.sum, t.sum + R, 0.f);

  for (int64_t b = 0; b * B < end; ++b) {
    const int64_t start = b * B;
    // Slots past `end` are not read: they may be unwritten (NaN).
    const int64_t n = std::min(B, end - start);
    const T* kb = kc + t.block_table[b] * t.k_block_stride;
    const T* vb = vc + t.block_table[b] * t.v_block_stride;
    for (int64_t i = 0; i < n; ++i) {
      const T* k = kb + i * t.k_token_stride;
      int64_t r = 0;
      for (; r + 4 <= R; r += 4) {
        const float* q = t.q + r * D;
        float s[4];
        dot4<W>(q, q + D, q + 2 * D, q + 3 * D, k, k, k, k, D, s);
        for (int64_t j = 0; j < 4; ++j) t.scores[(r + j) * B + i] = s[j];
      }
      for (; r < R; ++r) t.scores[r * B + i] = dot<W>(t.q + r * D, k, D);
    }

    for (int64_t r = 0; r < R; ++r) {
      float* p = t.scores + r * B;
      // Causal: the row's token (position first_pos + r / G) sees keys up to itself.
      const int64_t visible = std::clamp<int64_t>(t.first_pos + r / G - start + 1, 0, n);
      if (visible > 0) {
        const float block_max = std::max(t.max[r], *std::max_element(p, p + visible));
        if (block_max != t.max[r]) {
          const float alpha = std::exp(t.max[r] - block_max);
          scale(alpha, t.acc + r * D, D);
          t.sum[r] *= alpha;
          t.max[r] = block_max;
        }
        exp_shifted(p, block_max, p, visible);
        t.sum[r] += sum(p, visible);
      }
      std::fill(p + visible, p + n, 0.f);
    }
    for (int64_t i = 0; i < n; ++i) v_rows[i] = vb + i * t.v_token_stride;
    weighted_rows_sum<W>(v_rows, t.scores, B, R, n, t.acc, D);
  }
}

// W: floats per vector register of the variant.
template <int W>
MPA_INLINE void prefill_any(const PrefillTask& t, at::ScalarType cache_dtype) {
  switch (cache_dtype) {
    case at::kFloat: prefill_impl<float, W>(t); break;
    case at::kHalf: prefill_impl<c10::Half, W>(t); break;
    case at::kBFloat16: prefill_impl<c10::BFloat16, W>(t); break;
    case at::kFloat8_e4m3fn: prefill_impl<c10::Float8_e4m3fn, W>(t); break;
    case at::kFloat8_e5m2: prefill_impl<c10::Float8_e5m2, W>(t); break;
    default: TORCH_CHECK(false, "Unsupported cache dtype ", cache_dtype);
  }
}

// One variant per instruction-set level (cpu_isa.h).
#if MPA_CPU_VARIANTS
MPA_TARGET_V4 void prefill_v4(const PrefillTask& t, at::ScalarType dt) {
  prefill_any<16>(t, dt);
}
MPA_TARGET_V3 void prefill_v3(const PrefillTask& t, at::ScalarType dt) {
  prefill_any<8>(t, dt);
}
#endif
void prefill_baseline(const PrefillTask& t, at::ScalarType dt) {
  prefill_any<4>(t, dt);
}

namespace {

using PrefillFn = void (*)(const PrefillTask&, at::ScalarType);

PrefillFn select_prefill() {
#if MPA_CPU_VARIANTS
  return pick_variant<PrefillFn>(prefill_v4, prefill_v3, prefill_baseline);
#else
  return prefill_baseline;
#endif
}

struct Item {
  int64_t seq, first_token, num_tokens, kv_head;
};

template <typename query_t>
void run_prefill(const PagedAttentionDims& d, const at::Tensor& out, const at::Tensor& query,
                 const at::Tensor& key_cache, const at::Tensor& value_cache,
                 const at::Tensor& block_tables, const at::Tensor& context_lens,
                 const at::Tensor& query_start_loc, float scale, float k_scale,
                 float v_scale) {
  const PrefillFn prefill = select_prefill();
  const at::ScalarType cache_dtype = key_cache.scalar_type();
  const int64_t KVH = d.num_kv_heads, G = d.num_heads / KVH, D = d.head_size;
  const int32_t* lens = context_lens.data_ptr<int32_t>();
  const int32_t* loc = query_start_loc.data_ptr<int32_t>();
  std::vector<Item> items;
  for (int64_t s = 0; s < d.num_seqs; ++s) {
    for (int64_t tok = loc[s]; tok < loc[s + 1]; tok += kTileTokens) {
      const int64_t n = std::min<int64_t>(kTileTokens, loc[s + 1] - tok);
      for (int64_t h = 0; h < KVH; ++h) items.push_back({s, tok, n, h});
    }
  }

  const query_t* q_ptr = query.data_ptr<query_t>();
  query_t* out_ptr = out.data_ptr<query_t>();
  const int32_t* tables = block_tables.data_ptr<int32_t>();
  const auto elem = key_cache.element_size();
  // The key scale is folded into the query and the value scale into the
  // output's normalisation, so the inner loops read the raw fp8 values.
  const float q_scale = scale * k_scale;
  at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t begin, int64_t end) {
    const int64_t R = kTileTokens * G;
    std::vector<float> q(R * D), acc(R * D), max(R), sum(R), scores(R * d.block_size);
    std::vector<const void*> v_rows(d.block_size);
    for (int64_t i = begin; i < end; ++i) {
      const Item& it = items[i];
      const int64_t rows = it.num_tokens * G;
      for (int64_t r = 0; r < rows; ++r) {
        const query_t* src =
            q_ptr + (it.first_token + r / G) * query.stride(0) + (it.kv_head * G + r % G) * query.stride(1);
        for (int64_t j = 0; j < D; ++j) q[r * D + j] = static_cast<float>(src[j]) * q_scale;
      }
      PrefillTask t;
      t.q = q.data();
      t.acc = acc.data();
      t.max = max.data();
      t.sum = sum.data();
      t.scores = scores.data();
      t.v_rows = v_rows.data();
      t.block_table = tables + it.seq * block_tables.stride(0);
      t.k = static_cast<const char*>(key_cache.data_ptr()) + it.kv_head * key_cache.stride(2) * elem;
      t.v = static_cast<const char*>(value_cache.data_ptr()) +
            it.kv_head * value_cache.stride(2) * elem;
      t.k_block_stride = key_cache.stride(0);
      t.k_token_stride = key_cache.stride(1);
      t.v_block_stride = value_cache.stride(0);
      t.v_token_stride = value_cache.stride(1);
      t.group = G;
      t.head_size = D;
      t.block_size = d.block_size;
      t.num_tokens = it.num_tokens;
      // The new tokens are the last q_len of the sequence's context_len.
      t.first_pos = lens[it.seq] - (loc[it.seq + 1] - loc[it.seq]) + (it.first_token - loc[it.seq]);
      prefill(t, cache_dtype);
      for (int64_t r = 0; r < rows; ++r) {
        // Every row sees at least key 0, so sum > 0.
        const float inv = v_scale / sum[r];
        query_t* dst = out_ptr + (it.first_token + r / G) * out.stride(0) +
                       (it.kv_head * G + r % G) * out.stride(1);
        for (int64_t j = 0; j < D; ++j) dst[j] = static_cast<query_t>(acc[r * D + j] * inv);
      }
    }
  });
}

void paged_prefill_attention_out(const at::Tensor& out, const at::Tensor& query,
                                 const at::Tensor& key_cache, const at::Tensor& value_cache,
                                 const at::Tensor& block_tables, const at::Tensor& context_lens,
                                 const at::Tensor& query_start_loc, double scale,
                                 double k_scale, double v_scale) {
  const char* op = "paged_prefill_attention";
  const PagedAttentionDims d = check_paged_prefill_attention(
      op, out, query, key_cache, value_cache, block_tables, context_lens, query_start_loc);
  check_block_tables(op, block_tables, context_lens, d.num_blocks, d.block_size);
  check_query_start_loc(op, query_start_loc, context_lens, query.size(0));
  check_kv_scales(op, k_scale, v_scale);
  const at::ScalarType cache = key_cache.scalar_type();
  const float s = static_cast<float>(scale);
  dispatch_float_type<c10::Half, c10::BFloat16>(op, "query", query.scalar_type(), [&](auto q) {
    run_prefill<typename decltype(q)::type>(d, out, query, key_cache, value_cache, block_tables,
                                            context_lens, query_start_loc, s,
                                            effective_kv_scale(cache, k_scale),
                                            effective_kv_scale(cache, v_scale));
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mini_paged_attn, CPU, m) {
  m.impl("paged_prefill_attention_out", &paged_prefill_attention_out);
}

}  // namespace mini_paged_attn::cpu
