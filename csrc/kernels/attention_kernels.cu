// Host side of the CUDA paged_attention_out op: checks, dtype and head-size
// dispatch, the choice of context splits, and the launches. Kernels live in
// mini_paged_attn/attention_kernels.cuh.
//
// Nothing here reads device data or synchronises, and temporary buffers depend
// on shapes only, so the op can be captured in a CUDA graph.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <type_traits>

#include "mini_paged_attn/attention_kernels.cuh"
#include "mini_paged_attn/checks.h"
#include "mini_paged_attn/dispatch.h"

namespace mini_paged_attn::cuda {
namespace {

constexpr int kMinSplitTokens = 256;  // shorter splits cost more in prologue and merge than they gain

int ceil_div(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }

// Rows are copied with 16-byte cp.async, so they must start on 16 bytes.
void check_cache_alignment(const char* op, const char* name, const at::Tensor& cache) {
  const int64_t elem = cache.element_size();
  const bool aligned = reinterpret_cast<uintptr_t>(cache.data_ptr()) % 16 == 0 &&
                       (cache.stride(0) * elem) % 16 == 0 && (cache.stride(1) * elem) % 16 == 0 &&
                       (cache.stride(2) * elem) % 16 == 0;
  TORCH_CHECK_VALUE(aligned, op, ": ", name,
                    " rows must start on 16-byte boundaries (data pointer and strides), got "
                    "strides ",
                    cache.strides(), " for dtype ", cache.scalar_type());
}

// Splits the context when the (sequence, kv head) blocks cannot fill the GPU.
// Decided from shapes only (max_context is the block-table capacity), never
// from context_lens, so nothing synchronises. A split launch needs one arrival
// counter per block row.
struct SplitPlan {
  int split_len;
  int num_splits;
};

SplitPlan plan_splits(int64_t blocks_per_split, int max_context, int slots, int block_tokens) {
  const int whole = std::max(block_tokens, ceil_div(std::max(max_context, 1), block_tokens) *
                                               block_tokens);
  if (blocks_per_split >= std::min(slots, kSplitCounters)) return {whole, 1};
  // Splits that make about one full wave.
  const int64_t want = slots / blocks_per_split;
  int split_len = ceil_div(ceil_div(max_context, want), block_tokens) * block_tokens;
  split_len = std::min(whole, std::max(split_len, kMinSplitTokens));
  return {split_len, ceil_div(std::max(max_context, 1), split_len)};
}

// The first of n arrival counters for one split launch. Launches take their
// ranges round robin, so launches in flight together (on different streams) do
// not share counters unless kSplitCounters are taken in between.
int take_split_counters(int n) {
  static std::atomic<int64_t> next{0};
  const int base = static_cast<int>(next.fetch_add(n) % kSplitCounters);
  return base + n <= kSplitCounters ? base : 0;
}

template <typename query_t, typename cache_t, int HEAD_SIZE>
void launch_attention(PagedAttentionParams p, const at::Tensor& out, int num_seqs, int device,
                      cudaStream_t stream) {
  using Tr = AttnTraits<cache_t, HEAD_SIZE>;
  auto kernel = paged_attention_kernel<query_t, cache_t, HEAD_SIZE>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      Tr::kSmemBytes));
  static const int blocks_per_sm = [&] {
    int n = 0;
    C10_CUDA_CHECK(
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, Tr::kThreads, Tr::kSmemBytes));
    return std::max(n, 1);
  }();

  const int64_t blocks = static_cast<int64_t>(num_seqs) * p.num_kv_heads * p.head_chunks;
  TORCH_CHECK(blocks < (int64_t{1} << 31), "paged_attention: too many sequences and heads");
  const SplitPlan plan =
      plan_splits(blocks, p.max_context, num_sms(device) * blocks_per_sm, Tr::kBlockTokens);
  p.split_len = plan.split_len;
  p.num_splits = plan.num_splits;
  // Evict-first copies, measured on H100: -4 us (-6%) on one-wave split
  // launches; +2% on multi-wave launches; +15-17% with 128-byte rows (likely
  // because the 256-byte L2 fetch also brings a sibling head's row, evicted
  // before that block reads it). So only split launches with whole-line rows.
  p.evict_first = plan.num_splits > 1 && HEAD_SIZE * sizeof(cache_t) % 256 == 0;

  at::Tensor tmp_out;
  if (plan.num_splits > 1) {
    tmp_out = at::empty({num_seqs, p.num_heads, plan.num_splits, HEAD_SIZE + 4},
                        out.options().dtype(at::kFloat));
    p.tmp_out = tmp_out.data_ptr<float>();
    p.counter_base = take_split_counters(static_cast<int>(blocks));
  }

  const dim3 grid(static_cast<unsigned>(blocks), plan.num_splits);
  kernel<<<grid, Tr::kThreads, Tr::kSmemBytes, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Head pairing for head size 64 with a 16-bit cache: when the KV heads of a
// token are adjacent, heads 2j and 2j + 1 form one 256-byte row, read as one
// head of size 128 with each query in its own half and zeros in the other.
// Every copy then fills whole 256-byte lines (a 128-byte row leaves half of
// each line to the sibling head's block) and there are half as many blocks.
// Only when one block still holds both heads' queries (group size <= 4). A
// score sums 0 * K over the sibling head's elements, so an inf or NaN in its
// K (at a valid token) would reach this head too.
template <typename cache_t>
bool can_pair_heads(const PagedAttentionParams& p) {
  return sizeof(cache_t) == 2 && p.num_kv_heads % 2 == 0 && p.kv.k_head_stride == 64 &&
         p.kv.v_head_stride == 64 && 2 * p.group_size <= kHeadsPerBlock;
}

PagedAttentionParams pair_heads(PagedAttentionParams p) {
  p.paired_group = p.group_size;
  p.num_kv_heads /= 2;
  p.group_size *= 2;
  p.head_chunks = 1;
  p.kv.k_head_stride *= 2;
  p.kv.v_head_stride *= 2;
  return p;
}

template <typename query_t, typename cache_t>
void launch_for_head_size(int64_t head_size, const PagedAttentionParams& p, const at::Tensor& out,
                          int num_seqs, int device, cudaStream_t stream) {
  dispatch_head_size<32, 64, 80, 96, 128, 256>("CUDA paged_attention", head_size, [&](auto d) {
    constexpr int D = decltype(d)::value;
    if constexpr (D == 64) {
      if (can_pair_heads<cache_t>(p)) {
        launch_attention<query_t, cache_t, 128>(pair_heads(p), out, num_seqs, device, stream);
        return;
      }
    }
    launch_attention<query_t, cache_t, D>(p, out, num_seqs, device, stream);
  });
}

void paged_attention_out(const at::Tensor& out, const at::Tensor& query,
                         const at::Tensor& key_cache, const at::Tensor& value_cache,
                         const at::Tensor& block_tables, const at::Tensor& context_lens,
                         double scale, double k_scale, double v_scale) {
  const char* op = "paged_attention";
  // Rejects fp8 caches (not on CUDA yet): the scales of other caches are unused.
  const PagedAttentionDims d =
      check_paged_attention(op, out, query, key_cache, value_cache, block_tables, context_lens);
  check_kv_scales(op, k_scale, v_scale);
  check_cache_alignment(op, "key_cache", key_cache);
  check_cache_alignment(op, "value_cache", value_cache);
  const int64_t block_size = d.block_size;
  TORCH_CHECK_VALUE(block_size >= 1 && block_size <= 256 && (block_size & (block_size - 1)) == 0,
                    op, ": CUDA block_size must be a power of two from 1 to 256, got ",
                    block_size);
  const int64_t max_context = d.max_blocks_per_seq * block_size;
  TORCH_CHECK_VALUE(max_context < (int64_t{1} << 30), op, ": block_tables allows ", max_context,
                    " tokens a sequence, more than supported");
  if (d.num_seqs == 0) return;

  const c10::cuda::CUDAGuard guard(query.device());
  const int device = query.get_device();
  check_compute_capability(op, device);

  PagedAttentionParams p{};
  p.out = out.data_ptr();
  p.query = query.data_ptr();
  p.kv = make_paged_kv(key_cache, value_cache, block_tables, context_lens);
  p.out_seq_stride = out.stride(0);
  p.out_head_stride = out.stride(1);
  p.q_seq_stride = query.stride(0);
  p.q_head_stride = query.stride(1);
  p.num_heads = static_cast<int>(d.num_heads);
  p.num_kv_heads = static_cast<int>(d.num_kv_heads);
  p.group_size = static_cast<int>(d.num_heads / d.num_kv_heads);
  p.head_chunks = ceil_div(p.group_size, kHeadsPerBlock);
  p.log2_block_size = 0;
  while ((int64_t{1} << p.log2_block_size) < block_size) ++p.log2_block_size;
  p.max_context = static_cast<int>(max_context);
  p.scale_log2 = static_cast<float>(scale * M_LOG2E);

  const int num_seqs = static_cast<int>(d.num_seqs);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  dispatch_query_cache<__half, __nv_bfloat16>(
      op, query.scalar_type(), key_cache.scalar_type(), [&](auto q, auto c) {
        launch_for_head_size<typename decltype(q)::type, typename decltype(c)::type>(
            d.head_size, p, out, num_seqs, device, stream);
      });
}

}  // namespace

TORCH_LIBRARY_IMPL(mini_paged_attn, CUDA, m) {
  m.impl("paged_attention_out", &paged_attention_out);
}

}  // namespace mini_paged_attn::cuda
