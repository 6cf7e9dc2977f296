// CPU paged prefill attention: causal attention of each sequence's new tokens
// over its cached prefix and themselves, read through the block table. The
// new tokens' K/V must already be in the cache (reshape_and_cache).
//
// Work items are (sequence, tile of query tokens, KV head): the query heads
// of a group and the tokens of a tile share every K/V row they read, so a
// row is loaded once per item. Each item is one pass over the keys with an
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

// Query tokens per item: enough rows to amortise gathering each key chunk,
// few enough that a sequence's prompt still splits into several items.
constexpr int64_t kTileTokens = 16;
// Keys per chunk: two vectors of scores (the widest variant's 2 x 16).
constexpr int64_t kMaxChunk = 32;

// Rows are (token, head of the group), token-major: row r is token r / G of
// the tile, head kv_head * G + r % G. Strides are in elements.
struct PrefillTask {
  const float* q;              // [rows, head_size], pre-multiplied by scale
  float* acc;                  // [rows, head_size], unnormalised output
  float* max;                  // [rows], running max of the scores
  float* sum;                  // [rows], running sum of exp(score - max)
  float* scores;               // [rows, chunk] scratch
  float* k_t;                  // [head_size, chunk] scratch: a key chunk, transposed
  float* v_f;                  // [chunk, head_size] scratch: a value chunk
  const int32_t* block_table;  // [max_blocks_per_seq]
  const void* k;               // key_cache data, offset to the KV head
  const void* v;               // value_cache data, offset to the KV head
  int64_t k_block_stride, k_token_stride;
  int64_t v_block_stride, v_token_stride;
  int64_t group, head_size, block_size;
  int64_t num_tokens;  // query tokens in the tile
  int64_t first_pos;   // position of the tile's first token in its sequence
};

// The kernel works on chunks of C = 2W keys gathered through the block table
// (any block size): K widened to float and transposed, V widened, once per
// chunk for all the item's rows. Then S = Q K^T and O += P V are register
// tiles of RT rows x two vectors, a broadcast and two FMAs per step with no
// horizontal sums: the FMA units, not the loads, set the pace.

// s[j][0, C) = q[j] . k_t[:, c] for the RT rows at q (row stride D).
template <int W, int RT>
MPA_INLINE void qk_rows(const float* q, int64_t D, const float* k_t, float* s) {
  using V = typename Vec<W>::f32;
  constexpr int C = 2 * W;
  V a[RT][2] = {};
  for (int64_t d = 0; d < D; ++d) {
    const V k0 = vload<W>(k_t + d * C), k1 = vload<W>(k_t + d * C + W);
    for (int j = 0; j < RT; ++j) {
      const float qj = q[j * D + d];
      a[j][0] += qj * k0;
      a[j][1] += qj * k1;
    }
  }
  for (int j = 0; j < RT; ++j) {
    vstore<W>(s + j * C, a[j][0]);
    vstore<W>(s + j * C + W, a[j][1]);
  }
}

// acc[j] += sum_{i < n} p[j][i] * v_f[i] for the RT rows at p (row stride C)
// and acc (row stride D).
template <int W, int RT>
MPA_INLINE void pv_rows(const float* p, const float* v_f, int64_t D, int64_t n, float* acc) {
  using V = typename Vec<W>::f32;
  constexpr int C = 2 * W;
  int64_t d0 = 0;
  for (; d0 + 2 * W <= D; d0 += 2 * W) {
    V a[RT][2];
    for (int j = 0; j < RT; ++j) {
      a[j][0] = vload<W>(acc + j * D + d0);
      a[j][1] = vload<W>(acc + j * D + d0 + W);
    }
    for (int64_t i = 0; i < n; ++i) {
      const V v0 = vload<W>(v_f + i * D + d0), v1 = vload<W>(v_f + i * D + d0 + W);
      for (int j = 0; j < RT; ++j) {
        const float pj = p[j * C + i];
        a[j][0] += pj * v0;
        a[j][1] += pj * v1;
      }
    }
    for (int j = 0; j < RT; ++j) {
      vstore<W>(acc + j * D + d0, a[j][0]);
      vstore<W>(acc + j * D + d0 + W, a[j][1]);
    }
  }
  for (; d0 < D; ++d0) {  // head sizes that are not a multiple of 2W
    for (int j = 0; j < RT; ++j) {
      float a = acc[j * D + d0];
      for (int64_t i = 0; i < n; ++i) a += p[j * C + i] * v_f[i * D + d0];
      acc[j * D + d0] = a;
    }
  }
}

// The last rows % RT rows, as RT' = 1 .. RT - 1 row tiles.
template <int W, int RT>
MPA_INLINE void qk_tail(int rows, const float* q, int64_t D, const float* k_t, float* s) {
  if constexpr (RT > 0) {
    if (rows == RT) return qk_rows<W, RT>(q, D, k_t, s);
    qk_tail<W, RT - 1>(rows, q, D, k_t, s);
  }
}

template <int W, int RT>
MPA_INLINE void pv_tail(int rows, const float* p, const float* v_f, int64_t D, int64_t n,
                        float* acc) {
  if constexpr (RT > 0) {
    if (rows == RT) return pv_rows<W, RT>(p, v_f, D, n, acc);
    pv_tail<W, RT - 1>(rows, p, v_f, D, n, acc);
  }
}

// Keys [start, start + n) into k_t (transposed; keys n..C are zeros) and v_f.
template <typename T, int W>
MPA_INLINE void gather_chunk(const PrefillTask& t, int64_t start, int64_t n) {
  constexpr int C = 2 * W;
  const int64_t D = t.head_size, B = t.block_size;
  const T* kc = static_cast<const T*>(t.k);
  const T* vc = static_cast<const T*>(t.v);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t pos = start + i, block = t.block_table[pos / B], slot = pos % B;
    const T* k = kc + block * t.k_block_stride + slot * t.k_token_stride;
    const T* v = vc + block * t.v_block_stride + slot * t.v_token_stride;
    float* vf = t.v_f + i * D;
    int64_t d = 0;
    for (; d + W <= D; d += W) {
      const typename Vec<W>::f32 x = vload<W>(k + d);
      for (int l = 0; l < W; ++l) t.k_t[(d + l) * C + i] = x[l];
      vstore<W>(vf + d, vload<W>(v + d));
    }
    for (; d < D; ++d) {
      t.k_t[d * C + i] = static_cast<float>(k[d]);
      vf[d] = static_cast<float>(v[d]);
    }
  }
  for (int64_t d = 0; d < D; ++d) std::fill(t.k_t + d * C + n, t.k_t + d * C + C, 0.f);
}

template <typename T, int W>
MPA_INLINE void prefill_impl(const PrefillTask& t) {
  constexpr int C = 2 * W;
  constexpr int RT = 6;  // 12 accumulators + 2 K/V vectors + a broadcast: 15 AVX2 registers
  const int64_t G = t.group, D = t.head_size;
  const int64_t R = t.num_tokens * G;
  const int64_t end = t.first_pos + t.num_tokens;  // the last token sees [0, end)
  std::fill(t.acc, t.acc + R * D, 0.f);
  std::fill(t.max, t.max + R, -std::numeric_limits<float>::infinity());
  std::fill(t.sum, t.sum + R, 0.f);

  for (int64_t start = 0; start < end; start += C) {
    // Slots past `end` are not read: they may be unwritten (NaN).
    const int64_t n = std::min<int64_t>(C, end - start);
    gather_chunk<T, W>(t, start, n);
    int64_t r = 0;
    for (; r + RT <= R; r += RT) qk_rows<W, RT>(t.q + r * D, D, t.k_t, t.scores + r * C);
    qk_tail<W, RT - 1>(static_cast<int>(R - r), t.q + r * D, D, t.k_t, t.scores + r * C);

    for (r = 0; r < R; ++r) {
      float* p = t.scores + r * C;
      // Causal: the row's token (position first_pos + r / G) sees keys up to itself.
      const int64_t visible = std::clamp<int64_t>(t.first_pos + r / G - start + 1, 0, n);
      if (visible > 0) online_softmax<W>(p, visible, t.max[r], t.sum[r], t.acc + r * D, D);
      std::fill(p + visible, p + C, 0.f);
    }
    for (r = 0; r + RT <= R; r += RT) pv_rows<W, RT>(t.scores + r * C, t.v_f, D, n, t.acc + r * D);
    pv_tail<W, RT - 1>(static_cast<int>(R - r), t.scores + r * C, t.v_f, D, n, t.acc + r * D);
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
    std::vector<float> q(R * D), acc(R * D), max(R), sum(R), scores(R * kMaxChunk),
        k_t(D * kMaxChunk), v_f(kMaxChunk * D);
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
      t.k_t = k_t.data();
      t.v_f = v_f.data();
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
