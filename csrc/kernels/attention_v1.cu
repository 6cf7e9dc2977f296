// paged_attention_v1 on CUDA: the seed's simple kernel, kept as the benchmark
// baseline. One block per (query head, sequence): pass 1 writes every score of
// the sequence to shared memory, then a block-wide softmax, then pass 2 sums V
// weighted by the probabilities. K and V are each read once per query head
// (not once per KV head), and the context is bounded by shared memory.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>

#include "mini_paged_attn/checks.h"
#include "mini_paged_attn/cuda_utils.cuh"
#include "mini_paged_attn/dispatch.h"

namespace mini_paged_attn::cuda {
namespace {

constexpr int kV1Threads = 256;
constexpr int kV1Warps = kV1Threads / 32;
// Scores are float32 in shared memory: 128 KB, within the opt-in limit of
// sm_80 and sm_90.
constexpr int kV1MaxContext = 32768;

// Strides in elements.
struct V1Strides {
  int64_t out_seq, out_head;
  int64_t q_seq, q_head;
  int64_t k_block, k_token, k_head;
  int64_t v_block, v_token, v_head;
  int64_t block_table;
};

template <bool kMax>
__device__ float block_reduce(float x, float* scratch) {
  for (int mask = 16; mask > 0; mask /= 2) {
    const float y = __shfl_xor_sync(0xffffffffu, x, mask);
    x = kMax ? fmaxf(x, y) : x + y;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  x = scratch[0];
  for (int w = 1; w < kV1Warps; ++w) x = kMax ? fmaxf(x, scratch[w]) : x + scratch[w];
  __syncthreads();  // scratch is reused by the next reduction
  return x;
}

template <typename query_t, typename cache_t>
__global__ void __launch_bounds__(kV1Threads) paged_attention_v1_kernel(
    query_t* __restrict__ out,                // [num_seqs, num_heads, head_size]
    const query_t* __restrict__ query,        // [num_seqs, num_heads, head_size]
    const cache_t* __restrict__ key_cache,    // [num_blocks, block_size, num_kv_heads, head_size]
    const cache_t* __restrict__ value_cache,  // [num_blocks, block_size, num_kv_heads, head_size]
    const int32_t* __restrict__ block_tables,  // [num_seqs, max_blocks_per_seq]
    const int32_t* __restrict__ context_lens,  // [num_seqs]
    const V1Strides st, int head_size, int group_size, int block_size, int max_context,
    float scale) {
  extern __shared__ float smem[];
  float* q_s = smem;                          // [head_size]
  float* scores = q_s + head_size;            // [max_context]
  float* scratch = scores + max_context;      // [kV1Warps]
  float* partial = scratch + kV1Warps;        // [kV1Threads]: V sums of the token groups

  const int head = blockIdx.x, seq = blockIdx.y;
  const int kv_head = head / group_size;
  const int context_len = min(context_lens[seq], max_context);
  query_t* o = out + seq * st.out_seq + head * st.out_head;
  if (context_len <= 0) {
    for (int d = threadIdx.x; d < head_size; d += kV1Threads) o[d] = Convert<query_t>::from_float(0.f);
    return;
  }
  const query_t* q = query + seq * st.q_seq + head * st.q_head;
  for (int d = threadIdx.x; d < head_size; d += kV1Threads) {
    q_s[d] = Convert<query_t>::to_float(q[d]) * scale;
  }
  __syncthreads();

  // Pass 1: a warp per token, lanes across the head dimension.
  const int32_t* table = block_tables + seq * st.block_table;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int t = warp; t < context_len; t += kV1Warps) {
    const cache_t* k = key_cache + table[t / block_size] * st.k_block +
                       (t % block_size) * st.k_token + kv_head * st.k_head;
    float dot = 0.f;
    for (int d = lane; d < head_size; d += 32) dot += q_s[d] * Convert<cache_t>::to_float(k[d]);
    for (int mask = 16; mask > 0; mask /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, mask);
    if (lane == 0) scores[t] = dot;
  }
  __syncthreads();

  // Softmax over the scores in shared memory.
  float local_max = -INFINITY;
  for (int t = threadIdx.x; t < context_len; t += kV1Threads) local_max = fmaxf(local_max, scores[t]);
  const float max_score = block_reduce<true>(local_max, scratch);
  float local_sum = 0.f;
  for (int t = threadIdx.x; t < context_len; t += kV1Threads) {
    const float e = __expf(scores[t] - max_score);
    scores[t] = e;
    local_sum += e;
  }
  const float inv_sum = 1.f / block_reduce<false>(local_sum, scratch);

  // Pass 2: thread (group, d) sums every groups-th token of dimension d.
  const int groups = kV1Threads / head_size;
  const int group = threadIdx.x / head_size, d = threadIdx.x % head_size;
  if (group < groups) {
    float acc = 0.f;
    for (int t = group; t < context_len; t += groups) {
      const cache_t* v = value_cache + table[t / block_size] * st.v_block +
                         (t % block_size) * st.v_token + kv_head * st.v_head;
      acc += scores[t] * Convert<cache_t>::to_float(v[d]);
    }
    partial[threadIdx.x] = acc;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < head_size; i += kV1Threads) {
    float acc = 0.f;
    for (int g = 0; g < groups; ++g) acc += partial[g * head_size + i];
    o[i] = Convert<query_t>::from_float(acc * inv_sum);
  }
}

template <typename query_t, typename cache_t>
void launch_v1(const at::Tensor& out, const at::Tensor& query, const at::Tensor& key_cache,
               const at::Tensor& value_cache, const at::Tensor& block_tables,
               const at::Tensor& context_lens, const PagedAttentionDims& d, int max_context,
               cudaStream_t stream) {
  const V1Strides st{out.stride(0),       out.stride(1),       query.stride(0),
                     query.stride(1),     key_cache.stride(0), key_cache.stride(1),
                     key_cache.stride(2), value_cache.stride(0), value_cache.stride(1),
                     value_cache.stride(2), block_tables.stride(0)};
  const int smem = static_cast<int>((d.head_size + max_context + kV1Warps + kV1Threads) *
                                    sizeof(float));
  auto kernel = paged_attention_v1_kernel<query_t, cache_t>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  const dim3 grid(static_cast<unsigned>(d.num_heads), static_cast<unsigned>(d.num_seqs));
  kernel<<<grid, kV1Threads, smem, stream>>>(
      static_cast<query_t*>(out.data_ptr()), static_cast<const query_t*>(query.data_ptr()),
      static_cast<const cache_t*>(key_cache.data_ptr()),
      static_cast<const cache_t*>(value_cache.data_ptr()), block_tables.data_ptr<int32_t>(),
      context_lens.data_ptr<int32_t>(), st, static_cast<int>(d.head_size),
      static_cast<int>(d.num_heads / d.num_kv_heads), static_cast<int>(d.block_size),
      max_context, static_cast<float>(default_scale(d.head_size)));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void paged_attention_v1(const at::Tensor& out, const at::Tensor& query,
                        const at::Tensor& key_cache, const at::Tensor& value_cache,
                        const at::Tensor& block_table, const at::Tensor& context_lens) {
  const char* op = "paged_attention_v1";
  const PagedAttentionDims d =
      check_paged_attention(op, out, query, key_cache, value_cache, block_table, context_lens);
  // Without reading context_lens (which would synchronise) the longest
  // possible context is what block_table has room for.
  const int64_t max_context = d.max_blocks_per_seq * d.block_size;
  TORCH_CHECK_VALUE(max_context <= kV1MaxContext, op,
                    " keeps every score of a sequence in shared memory and supports up to ",
                    kV1MaxContext, " tokens a sequence, but block_table has room for ",
                    max_context, " (max_blocks_per_seq * block_size); use paged_attention");
  TORCH_CHECK_VALUE(d.head_size <= kV1Threads, op, ": head_size ", d.head_size,
                    " is larger than the ", kV1Threads, " threads of a block");
  if (d.num_seqs == 0) return;

  const c10::cuda::CUDAGuard guard(query.device());
  const int device = query.get_device();
  const int64_t smem = (d.head_size + max_context + kV1Warps + kV1Threads) * sizeof(float);
  TORCH_CHECK_VALUE(smem <= max_optin_smem(device), op, ": ", max_context,
                    " tokens of scores do not fit in the shared memory of device ", device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  const int ctx = static_cast<int>(max_context);
  dispatch_query_cache<__half, __nv_bfloat16>(
      op, query.scalar_type(), key_cache.scalar_type(), [&](auto q, auto c) {
        launch_v1<typename decltype(q)::type, typename decltype(c)::type>(
            out, query, key_cache, value_cache, block_table, context_lens, d, ctx, stream);
      });
}

}  // namespace

TORCH_LIBRARY_IMPL(mini_paged_attn, CUDA, m) { m.impl("paged_attention_v1", &paged_attention_v1); }

}  // namespace mini_paged_attn::cuda
