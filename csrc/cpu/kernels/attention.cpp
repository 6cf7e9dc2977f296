// CPU paged decode attention: one pass over each sequence's blocks with an
// online softmax, parallel over (sequence, context partition) pairs, then a
// merge of the partitions. The query heads sharing a KV head are served
// together, so each K/V row is read once.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "mini_paged_attn/checks.h"
#include "mini_paged_attn/cpu_isa.h"
#include "mini_paged_attn/cpu_vec.h"
#include "mini_paged_attn/dispatch.h"
#include "mini_paged_attn/fp8.h"

namespace mini_paged_attn::cpu {

// One partition of one sequence: tokens [first_token, end_token) for every
// head, a block at a time. Strides are in elements.
struct PartitionTask {
  const float* q;              // [num_heads, head_size], pre-multiplied by scale
  float* acc;                  // [num_heads, head_size], unnormalised output
  float* max;                  // [num_heads], running max of the scores
  float* sum;                  // [num_heads], running sum of exp(score - max)
  float* scores;               // [block_size, num_heads] scratch
  const int32_t* block_table;  // [max_blocks_per_seq]
  const void* k;               // key_cache data
  const void* v;               // value_cache data
  int64_t k_block_stride, k_token_stride, k_head_stride;
  int64_t v_block_stride, v_token_stride, v_head_stride;
  int64_t num_heads, num_kv_heads, head_size, block_size;
  int64_t first_token, end_token;  // first_token is a multiple of block_size
};

template <typename T, int W>
MPA_INLINE void attend_impl(const PartitionTask& t) {
  const int64_t H = t.num_heads, KVH = t.num_kv_heads, G = H / KVH;
  const int64_t D = t.head_size, B = t.block_size;
  std::fill(t.acc, t.acc + H * D, 0.f);
  std::fill(t.max, t.max + H, -std::numeric_limits<float>::infinity());
  std::fill(t.sum, t.sum + H, 0.f);

  const T* kc = static_cast<const T*>(t.k);
  const T* vc = static_cast<const T*>(t.v);
  for (int64_t b = t.first_token / B; b * B < t.end_token; ++b) {
    const int64_t block = t.block_table[b];
    // Only the first n slots of the last block are read: the rest may be NaN.
    const int64_t n = std::min(B, t.end_token - b * B);
    const T* kb = kc + block * t.k_block_stride;
    const T* vb = vc + block * t.v_block_stride;
    auto krow = [&](int64_t i, int64_t h) { return kb + i * t.k_token_stride + h * t.k_head_stride; };
    // Scores s[i * H + head], all heads of a token side by side, so that the
    // softmax below runs across heads. Groups of four or more share each K
    // row between four query heads; smaller groups batch four tokens per head.
    float* const sc = t.scores;
    for (int64_t i = 0; G >= 4 && i < n; ++i) {
      for (int64_t h = 0; h < KVH; ++h) {
        const T* k = krow(i, h);
        const float* qh = t.q + h * G * D;
        float* s = sc + i * H + h * G;
        for (int64_t g = 0; g + 4 <= G; g += 4) {
          const float* q = qh + g * D;
          vstore<4>(s + g, dot4<W>(q, q + D, q + 2 * D, q + 3 * D, k, k, k, k, D));
        }
        for (int64_t g = G / 4 * 4; g < G; ++g) s[g] = dot<W>(qh + g * D, k, D);
      }
    }
    if (G < 4) {
      for (int64_t i = 0; i < n; i += 4) {
        for (int64_t h = 0; h < KVH; ++h) {
          for (int64_t g = 0; g < G; ++g) {
            const int64_t head = h * G + g;
            const float* q = t.q + head * D;
            if (i + 4 <= n) {
              const typename Vec<4>::f32 r =
                  dot4<W>(q, q, q, q, krow(i, h), krow(i + 1, h), krow(i + 2, h), krow(i + 3, h), D);
              for (int j = 0; j < 4; ++j) sc[(i + j) * H + head] = r[j];
            } else {
              for (int64_t j = i; j < n; ++j) sc[j * H + head] = dot<W>(q, krow(j, h), D);
            }
          }
        }
      }
    }

    online_softmax_columns<W>(sc, n, H, t.max, t.sum, t.acc, D);
    for (int64_t h = 0; h < KVH; ++h) {
      weighted_rows_sum<W>(vb + h * t.v_head_stride, t.v_token_stride, sc + h * G, H, G, n,
                           t.acc + h * G * D, D);
    }
  }
}

// W: floats per vector register of the variant.
template <int W>
MPA_INLINE void attend_any(const PartitionTask& t, at::ScalarType cache_dtype) {
  switch (cache_dtype) {
    case at::kFloat: attend_impl<float, W>(t); break;
    case at::kHalf: attend_impl<c10::Half, W>(t); break;
    case at::kBFloat16: attend_impl<c10::BFloat16, W>(t); break;
    case at::kFloat8_e4m3fn: attend_impl<c10::Float8_e4m3fn, W>(t); break;
    case at::kFloat8_e5m2: attend_impl<c10::Float8_e5m2, W>(t); break;
    default: TORCH_CHECK(false, "Unsupported cache dtype ", cache_dtype);
  }
}

// One variant per instruction-set level (cpu_isa.h).
#if MPA_CPU_VARIANTS
MPA_TARGET_V4 void attend_v4(const PartitionTask& t, at::ScalarType dt) {
  attend_any<16>(t, dt);
}
MPA_TARGET_V3 void attend_v3(const PartitionTask& t, at::ScalarType dt) {
  attend_any<8>(t, dt);
}
#endif
void attend_baseline(const PartitionTask& t, at::ScalarType dt) {
  attend_any<4>(t, dt);
}

namespace {

using AttendFn = void (*)(const PartitionTask&, at::ScalarType);

AttendFn select_attend() {
#if MPA_CPU_VARIANTS
  return pick_variant<AttendFn>(attend_v4, attend_v3, attend_baseline);
#else
  return attend_baseline;
#endif
}

// Sequences are cut into partitions of whole blocks so that even one long
// sequence keeps every thread busy (flash-decoding); partial results are then
// merged per head with their softmax statistics.
int64_t partition_tokens(const int32_t* lens, int64_t num_seqs, int64_t block_size) {
  int64_t total = 0;
  for (int64_t s = 0; s < num_seqs; ++s) total += lens[s];
  const int64_t target_tasks = 4 * at::get_num_threads();
  const int64_t tokens = std::max<int64_t>(512, (total + target_tasks - 1) / target_tasks);
  return (tokens + block_size - 1) / block_size * block_size;
}

template <typename query_t>
void run_attention(const PagedAttentionDims& d, const at::Tensor& out, const at::Tensor& query,
                   const at::Tensor& key_cache, const at::Tensor& value_cache,
                   const at::Tensor& block_tables, const at::Tensor& context_lens,
                   float scale, float k_scale, float v_scale) {
  const AttendFn attend = select_attend();
  const at::ScalarType cache_dtype = key_cache.scalar_type();
  const int64_t H = d.num_heads, D = d.head_size;
  const int32_t* lens = context_lens.data_ptr<int32_t>();
  const int64_t part_len = partition_tokens(lens, d.num_seqs, d.block_size);
  // first_task[s] .. first_task[s + 1] are the partitions of sequence s.
  std::vector<int64_t> first_task(d.num_seqs + 1, 0);
  for (int64_t s = 0; s < d.num_seqs; ++s) {
    first_task[s + 1] = first_task[s] + (lens[s] + part_len - 1) / part_len;
  }
  const int64_t num_tasks = first_task[d.num_seqs];
  std::vector<float> q(d.num_seqs * H * D), acc(num_tasks * H * D), max(num_tasks * H),
      sum(num_tasks * H);
  const query_t* q_ptr = query.data_ptr<query_t>();
  // The key scale is folded into the query and the value scale into the
  // output's normalisation, so the inner loops read the raw fp8 values.
  const float q_scale = scale * k_scale;
  for (int64_t s = 0; s < d.num_seqs; ++s)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < D; ++i)
        q[(s * H + h) * D + i] =
            static_cast<float>(q_ptr[s * query.stride(0) + h * query.stride(1) + i]) * q_scale;

  const int32_t* tables = block_tables.data_ptr<int32_t>();
  at::parallel_for(0, num_tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(H * d.block_size);
    int64_t s = std::upper_bound(first_task.begin(), first_task.end(), begin) -
                first_task.begin() - 1;
    for (int64_t task = begin; task < end; ++task) {
      while (task >= first_task[s + 1]) ++s;
      PartitionTask t;
      t.q = q.data() + s * H * D;
      t.acc = acc.data() + task * H * D;
      t.max = max.data() + task * H;
      t.sum = sum.data() + task * H;
      t.scores = scores.data();
      t.block_table = tables + s * block_tables.stride(0);
      t.k = key_cache.data_ptr();
      t.v = value_cache.data_ptr();
      t.k_block_stride = key_cache.stride(0);
      t.k_token_stride = key_cache.stride(1);
      t.k_head_stride = key_cache.stride(2);
      t.v_block_stride = value_cache.stride(0);
      t.v_token_stride = value_cache.stride(1);
      t.v_head_stride = value_cache.stride(2);
      t.num_heads = H;
      t.num_kv_heads = d.num_kv_heads;
      t.head_size = D;
      t.block_size = d.block_size;
      t.first_token = (task - first_task[s]) * part_len;
      t.end_token = std::min<int64_t>(lens[s], t.first_token + part_len);
      attend(t, cache_dtype);
    }
  });

  query_t* out_ptr = out.data_ptr<query_t>();
  at::parallel_for(0, d.num_seqs * H, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> row(D);
    for (int64_t sh = begin; sh < end; ++sh) {
      const int64_t s = sh / H, h = sh % H;
      float global_max = -std::numeric_limits<float>::infinity();
      for (int64_t task = first_task[s]; task < first_task[s + 1]; ++task)
        global_max = std::max(global_max, max[task * H + h]);
      std::fill(row.begin(), row.end(), 0.f);
      float total = 0.f;
      for (int64_t task = first_task[s]; task < first_task[s + 1]; ++task) {
        const float w = std::exp(max[task * H + h] - global_max);
        total += w * sum[task * H + h];
        const float* a = acc.data() + (task * H + h) * D;
        for (int64_t i = 0; i < D; ++i) row[i] += w * a[i];
      }
      // An empty context (no partitions) yields zeros, not 0/0.
      const float inv = total > 0.f ? v_scale / total : 0.f;
      query_t* o = out_ptr + s * out.stride(0) + h * out.stride(1);
      for (int64_t i = 0; i < D; ++i) o[i] = static_cast<query_t>(row[i] * inv);
    }
  });
}

void paged_attention_cpu(const char* op, const at::Tensor& out, const at::Tensor& query,
                         const at::Tensor& key_cache, const at::Tensor& value_cache,
                         const at::Tensor& block_tables, const at::Tensor& context_lens,
                         std::optional<double> maybe_scale, double k_scale, double v_scale) {
  const PagedAttentionDims d =
      check_paged_attention(op, out, query, key_cache, value_cache, block_tables, context_lens);
  check_block_tables(op, block_tables, context_lens, d.num_blocks, d.block_size);
  check_kv_scales(op, k_scale, v_scale);
  const float scale = static_cast<float>(
      maybe_scale.value_or(default_scale(d.head_size)));
  const at::ScalarType cache = key_cache.scalar_type();
  dispatch_float_type<c10::Half, c10::BFloat16>(op, "query", query.scalar_type(), [&](auto q) {
    run_attention<typename decltype(q)::type>(d, out, query, key_cache, value_cache,
                                              block_tables, context_lens, scale,
                                              effective_kv_scale(cache, k_scale),
                                              effective_kv_scale(cache, v_scale));
  });
}

void paged_attention_out(const at::Tensor& out, const at::Tensor& query,
                         const at::Tensor& key_cache, const at::Tensor& value_cache,
                         const at::Tensor& block_tables, const at::Tensor& context_lens,
                         double scale, double k_scale, double v_scale) {
  paged_attention_cpu("paged_attention", out, query, key_cache, value_cache, block_tables,
                      context_lens, scale, k_scale, v_scale);
}

void paged_attention_v1(const at::Tensor& out, const at::Tensor& query,
                        const at::Tensor& key_cache, const at::Tensor& value_cache,
                        const at::Tensor& block_table, const at::Tensor& context_lens) {
  // The seed's signature has no scale: it is always 1/sqrt(head_size).
  paged_attention_cpu("paged_attention_v1", out, query, key_cache, value_cache, block_table,
                      context_lens, std::nullopt, 1.0, 1.0);
}

}  // namespace

TORCH_LIBRARY_IMPL(mini_paged_attn, CPU, m) {
  m.impl("paged_attention_out", &paged_attention_out);
  m.impl("paged_attention_v1", &paged_attention_v1);
}

}  // namespace mini_paged_attn::cpu
