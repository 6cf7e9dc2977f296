// paged_prefill_attention on CUDA. fp16 / bf16 queries on a cache of the same
// type go to a tensor-core kernel when rows are 16-byte aligned: the wgmma one
// (prefill_wgmma_kernel.cuh; compute capability 9.0, head sizes 64 and 128),
// else the mma.sync one (prefill_tc_kernel.cuh).
// Everything else (float32, a float32 query on a 16-bit
// cache, odd head sizes or strides) takes the simple tiled kernel below, with
// float32 math on the CUDA cores.
//
// One thread block per (tile of kBlockQ query tokens of one sequence, query
// head). It walks the sequence's keys in tiles of kBlockK: K and V tiles are
// staged in shared memory, read once for all the tile's queries, and an online
// softmax keeps one pass. kThreadsPerRow threads share a query row, each
// holding a slice of its scores and of its output.
//
// Nothing here reads device data on the host, so the op can be captured in a
// CUDA graph: the grid is sized from num_tokens and num_seqs, and each block
// finds its (sequence, tile) from query_start_loc.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <cstdlib>
#include <cstring>

#include "mini_paged_attn/checks.h"
#include "mini_paged_attn/cuda_utils.cuh"
#include "mini_paged_attn/dispatch.h"
#include "mini_paged_attn/prefill_tc.cuh"

namespace mini_paged_attn::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kBlockK = 32;

// Query rows per block: 64, or 32 for head sizes above 128 to fit shared memory.
template <int HEAD_SIZE>
struct PrefillTraits {
  static constexpr int kBlockQ = HEAD_SIZE <= 128 ? 64 : 32;
  static constexpr int kThreadsPerRow = kThreads / kBlockQ;
  static constexpr int kColsPerThread = kBlockK / kThreadsPerRow;
  static constexpr int kDimsPerThread = HEAD_SIZE / kThreadsPerRow;
  // Rows of Q, K and P are padded by one float so that threads reading
  // different rows at the same column hit different banks.
  static constexpr int kQStride = HEAD_SIZE + 1;
  static constexpr int kKStride = HEAD_SIZE + 1;
  static constexpr int kPStride = kBlockK + 1;
  static constexpr int kSmemFloats =
      kBlockQ * kQStride + kBlockK * kKStride + kBlockK * HEAD_SIZE + kBlockQ * kPStride;
  static constexpr int kSmemBytes = kSmemFloats * sizeof(float);
};

struct PrefillParams : PrefillArgs {
  float scale;
};

PrefillArgs make_prefill_args(const PagedAttentionDims& d, const at::Tensor& out,
                              const at::Tensor& query, const at::Tensor& key_cache,
                              const at::Tensor& value_cache, const at::Tensor& block_tables,
                              const at::Tensor& context_lens, const at::Tensor& query_start_loc) {
  PrefillArgs a{};
  a.out = out.data_ptr();
  a.query = query.data_ptr();
  a.kv = make_paged_kv(key_cache, value_cache, block_tables, context_lens);
  a.query_start_loc = query_start_loc.data_ptr<int32_t>();
  a.out_token_stride = out.stride(0);
  a.out_head_stride = out.stride(1);
  a.q_token_stride = query.stride(0);
  a.q_head_stride = query.stride(1);
  a.num_seqs = static_cast<int>(d.num_seqs);
  a.group_size = static_cast<int>(d.num_heads / d.num_kv_heads);
  a.block_size = static_cast<int>(d.block_size);
  return a;
}

template <typename query_t, typename cache_t, int HEAD_SIZE>
__global__ void __launch_bounds__(kThreads) paged_prefill_kernel(const PrefillParams p) {
  using Tr = PrefillTraits<HEAD_SIZE>;
  constexpr int BQ = Tr::kBlockQ, TPR = Tr::kThreadsPerRow;
  extern __shared__ float smem[];
  float* q_s = smem;                            // [BQ][kQStride]
  float* k_s = q_s + BQ * Tr::kQStride;         // [kBlockK][kKStride]
  float* v_s = k_s + kBlockK * Tr::kKStride;    // [kBlockK][HEAD_SIZE]
  float* p_s = v_s + kBlockK * HEAD_SIZE;       // [BQ][kPStride]

  // This block's (sequence, tile): tiles are numbered sequence by sequence.
  int seq = 0, tile = blockIdx.x;
  for (; seq < p.num_seqs; ++seq) {
    const int q_len = p.query_start_loc[seq + 1] - p.query_start_loc[seq];
    const int tiles = (q_len + BQ - 1) / BQ;
    if (tile < tiles) break;
    tile -= tiles;
  }
  if (seq == p.num_seqs) return;  // the grid is an upper bound on the tiles

  const int head = blockIdx.y, kv_head = head / p.group_size;
  const int first_token = p.query_start_loc[seq] + tile * BQ;
  const int q_len = p.query_start_loc[seq + 1] - p.query_start_loc[seq];
  const int context_len = p.kv.context_lens[seq];
  const int rows = min(BQ, q_len - tile * BQ);
  const int first_pos = context_len - q_len + tile * BQ;  // position of row 0
  const int32_t* table = p.kv.block_tables + seq * p.kv.block_table_stride;

  const query_t* query = static_cast<const query_t*>(p.query);
  for (int i = threadIdx.x; i < BQ * HEAD_SIZE; i += kThreads) {
    const int r = i / HEAD_SIZE, d = i % HEAD_SIZE;
    q_s[r * Tr::kQStride + d] =
        r < rows ? Convert<query_t>::to_float(query[(first_token + r) * p.q_token_stride +
                                                    head * p.q_head_stride + d]) *
                       p.scale
                 : 0.f;
  }

  const int row = threadIdx.x / TPR, part = threadIdx.x % TPR;
  const int row_pos = first_pos + row;
  float m = -INFINITY, l = 0.f;
  float o[Tr::kDimsPerThread];
#pragma unroll
  for (int j = 0; j < Tr::kDimsPerThread; ++j) o[j] = 0.f;

  const cache_t* kc = static_cast<const cache_t*>(p.kv.key_cache);
  const cache_t* vc = static_cast<const cache_t*>(p.kv.value_cache);
  const int end = first_pos + rows;  // the last row sees keys [0, end)
  for (int k0 = 0; k0 < end; k0 += kBlockK) {
    __syncthreads();  // the previous tile's K, V and P are consumed
    for (int i = threadIdx.x; i < kBlockK * HEAD_SIZE; i += kThreads) {
      const int c = i / HEAD_SIZE, d = i % HEAD_SIZE, pos = k0 + c;
      float kv = 0.f, vv = 0.f;
      // Slots at or past `end` are not read: they may be unwritten (NaN).
      if (pos < end) {
        const int64_t block = table[pos / p.block_size], off = pos % p.block_size;
        const PagedKV& c = p.kv;
        kv = Convert<cache_t>::to_float(
            kc[block * c.k_block_stride + off * c.k_token_stride + kv_head * c.k_head_stride + d]);
        vv = Convert<cache_t>::to_float(
            vc[block * c.v_block_stride + off * c.v_token_stride + kv_head * c.v_head_stride + d]);
      }
      k_s[c * Tr::kKStride + d] = kv;
      v_s[c * HEAD_SIZE + d] = vv;
    }
    __syncthreads();

    // Scores of this thread's columns; causal mask against the row's position.
    float s[Tr::kColsPerThread];
    float tile_max = -INFINITY;
#pragma unroll
    for (int j = 0; j < Tr::kColsPerThread; ++j) {
      const int c = part * Tr::kColsPerThread + j;
      float dot = 0.f;
#pragma unroll 8
      for (int d = 0; d < HEAD_SIZE; ++d) {
        dot += q_s[row * Tr::kQStride + d] * k_s[c * Tr::kKStride + d];
      }
      s[j] = (row < rows && k0 + c <= row_pos) ? dot : -INFINITY;
      tile_max = fmaxf(tile_max, s[j]);
    }
#pragma unroll
    for (int mask = 1; mask < TPR; mask *= 2) {
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, mask));
    }
    const float m_new = fmaxf(m, tile_max);
    // A row that sees nothing yet (or a padding row) keeps m = -inf: its
    // probabilities are 0, not exp(-inf + inf).
    const float alpha = m_new == -INFINITY ? 1.f : __expf(m - m_new);
    float tile_sum = 0.f;
#pragma unroll
    for (int j = 0; j < Tr::kColsPerThread; ++j) {
      const float e = s[j] == -INFINITY ? 0.f : __expf(s[j] - m_new);
      p_s[row * Tr::kPStride + part * Tr::kColsPerThread + j] = e;
      tile_sum += e;
    }
#pragma unroll
    for (int mask = 1; mask < TPR; mask *= 2) {
      tile_sum += __shfl_xor_sync(0xffffffffu, tile_sum, mask);
    }
    l = l * alpha + tile_sum;
    m = m_new;
    __syncthreads();  // P of the whole row is written by its TPR threads

    // O += P V over this thread's slice of dimensions.
#pragma unroll
    for (int j = 0; j < Tr::kDimsPerThread; ++j) o[j] *= alpha;
    for (int c = 0; c < kBlockK; ++c) {
      const float pc = p_s[row * Tr::kPStride + c];
      const float* v = v_s + c * HEAD_SIZE + part * Tr::kDimsPerThread;
#pragma unroll
      for (int j = 0; j < Tr::kDimsPerThread; ++j) o[j] += pc * v[j];
    }
  }

  if (row < rows) {
    // Every real row sees key 0, so l > 0.
    const float inv = 1.f / l;
    query_t* out = static_cast<query_t*>(p.out) + (first_token + row) * p.out_token_stride +
                   head * p.out_head_stride + part * Tr::kDimsPerThread;
#pragma unroll
    for (int j = 0; j < Tr::kDimsPerThread; ++j) {
      out[j] = Convert<query_t>::from_float(o[j] * inv);
    }
  }
}

template <typename query_t, typename cache_t, int HEAD_SIZE>
void launch_prefill(const PrefillParams& p, int64_t num_tokens, int64_t num_heads,
                    cudaStream_t stream) {
  using Tr = PrefillTraits<HEAD_SIZE>;
  auto kernel = paged_prefill_kernel<query_t, cache_t, HEAD_SIZE>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      Tr::kSmemBytes));
  // Every sequence wastes at most one partial tile.
  const int64_t max_tiles = (num_tokens + Tr::kBlockQ - 1) / Tr::kBlockQ + p.num_seqs;
  TORCH_CHECK(max_tiles < (int64_t{1} << 31) && num_heads < 65536,
              "paged_prefill_attention: too many tokens or heads");
  const dim3 grid(static_cast<unsigned>(max_tiles), static_cast<unsigned>(num_heads));
  kernel<<<grid, kThreads, Tr::kSmemBytes, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}


// The tensor-core kernel copies rows with 16-byte cp.async and stores pairs.
bool tc_aligned(const at::Tensor& t, int64_t dims) {
  if (reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 != 0) return false;
  for (int64_t i = 0; i < dims; ++i) {
    if (t.stride(i) % 8 != 0) return false;
  }
  return true;
}

// The tensor-core kernels find a K row and its V row at one offset, and
// multiply 32-bit block and token strides (the offsets themselves are 64-bit).
bool tc_cache_layout(const at::Tensor& key_cache, const at::Tensor& value_cache) {
  return key_cache.strides() == value_cache.strides() && key_cache.stride(0) <= INT32_MAX &&
         key_cache.stride(1) <= INT32_MAX;
}

// MINI_PAGED_ATTN_CUDA_PREFILL picks the kernel. auto (or unset) sends
// eligible calls to a tensor-core kernel: the wgmma one where it exists
// (sm_90a, head sizes 64 and 128; on an H200 it beat mma.sync on every
// measured shape, docs/BENCHMARKS.md), else mma.sync. tensor-core and wgmma
// force one of the two (where eligible), cuda-core sends every call to the
// CUDA-core kernel.
enum class PrefillKernel { kAuto, kTensorCore, kWgmma, kCudaCore };

PrefillKernel requested_kernel() {
  const char* env = std::getenv("MINI_PAGED_ATTN_CUDA_PREFILL");
  if (env == nullptr || *env == 0 || std::strcmp(env, "auto") == 0) return PrefillKernel::kAuto;
  if (std::strcmp(env, "tensor-core") == 0) return PrefillKernel::kTensorCore;
  if (std::strcmp(env, "wgmma") == 0) return PrefillKernel::kWgmma;
  TORCH_CHECK_VALUE(std::strcmp(env, "cuda-core") == 0,
                    "MINI_PAGED_ATTN_CUDA_PREFILL must be auto, tensor-core, wgmma or cuda-core, "
                    "got '",
                    env, "'");
  return PrefillKernel::kCudaCore;
}

// The tensor-core softmax takes the max of raw scores, so it needs scale > 0.
bool use_tensor_cores(PrefillKernel kernel, const at::Tensor& out, const at::Tensor& query,
                      const at::Tensor& key_cache, const at::Tensor& value_cache,
                      int64_t head_size, double scale) {
  const at::ScalarType t = key_cache.scalar_type();
  return kernel != PrefillKernel::kCudaCore && (t == at::kHalf || t == at::kBFloat16) &&
         query.scalar_type() == t && scale > 0 && std::isfinite(scale) &&
         prefill_tc_head_size(head_size) && tc_aligned(query, 2) && tc_aligned(out, 2) &&
         tc_aligned(key_cache, 3) && tc_aligned(value_cache, 3) &&
         tc_cache_layout(key_cache, value_cache);
}

void launch_tensor_cores(PrefillKernel kernel, const PagedAttentionDims& d, const at::Tensor& out,
                         const at::Tensor& query, const at::Tensor& key_cache,
                         const at::Tensor& value_cache, const at::Tensor& block_tables,
                         const at::Tensor& context_lens, const at::Tensor& query_start_loc,
                         double scale, cudaStream_t stream) {
  PrefillTcParams p{};
  static_cast<PrefillArgs&>(p) = make_prefill_args(d, out, query, key_cache, value_cache,
                                                   block_tables, context_lens, query_start_loc);
  p.block_shift = (d.block_size & (d.block_size - 1)) == 0 ? __builtin_ctzll(d.block_size) : -1;
  p.scale_log2 = static_cast<float>(scale * M_LOG2E);
  const int64_t num_tokens = query.size(0);
  const bool wgmma = kernel != PrefillKernel::kTensorCore &&
                     prefill_wgmma_usable(d.head_size, query.get_device());
  if (key_cache.scalar_type() == at::kHalf) {
    (wgmma ? launch_prefill_wgmma<__half> : launch_prefill_tc<__half>)(p, d.head_size, num_tokens,
                                                                      d.num_kv_heads, stream);
  } else {
    (wgmma ? launch_prefill_wgmma<__nv_bfloat16> : launch_prefill_tc<__nv_bfloat16>)(
        p, d.head_size, num_tokens, d.num_kv_heads, stream);
  }
}

void paged_prefill_attention_out(const at::Tensor& out, const at::Tensor& query,
                                 const at::Tensor& key_cache, const at::Tensor& value_cache,
                                 const at::Tensor& block_tables, const at::Tensor& context_lens,
                                 const at::Tensor& query_start_loc, double scale,
                                 double k_scale, double v_scale) {
  const char* op = "paged_prefill_attention";
  // Rejects fp8 caches (not on CUDA yet): the scales of other caches are unused.
  const PagedAttentionDims d = check_paged_prefill_attention(
      op, out, query, key_cache, value_cache, block_tables, context_lens, query_start_loc);
  check_kv_scales(op, k_scale, v_scale);
  TORCH_CHECK_VALUE(d.max_blocks_per_seq * d.block_size < (int64_t{1} << 30), op,
                    ": block_tables allows more tokens a sequence than supported");
  const int64_t num_tokens = query.size(0);
  if (num_tokens == 0 || d.num_seqs == 0) return;

  const c10::cuda::CUDAGuard guard(query.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(query.get_device()).stream();
  const PrefillKernel kernel = requested_kernel();
  if (use_tensor_cores(kernel, out, query, key_cache, value_cache, d.head_size, scale)) {
    launch_tensor_cores(kernel, d, out, query, key_cache, value_cache, block_tables, context_lens,
                        query_start_loc, scale, stream);
    return;
  }
  PrefillParams p{};
  static_cast<PrefillArgs&>(p) = make_prefill_args(d, out, query, key_cache, value_cache,
                                                   block_tables, context_lens, query_start_loc);
  p.scale = static_cast<float>(scale);

  dispatch_query_cache<__half, __nv_bfloat16>(
      op, query.scalar_type(), key_cache.scalar_type(), [&](auto q, auto c) {
        using query_t = typename decltype(q)::type;
        using cache_t = typename decltype(c)::type;
        dispatch_head_size<64, 80, 96, 128, 256>(
            "CUDA paged_prefill_attention", d.head_size, [&](auto hs) {
              launch_prefill<query_t, cache_t, decltype(hs)::value>(p, num_tokens, d.num_heads,
                                                                    stream);
            });
      });
}

}  // namespace

TORCH_LIBRARY_IMPL(mini_paged_attn, CUDA, m) {
  m.impl("paged_prefill_attention_out", &paged_prefill_attention_out);
}

}  // namespace mini_paged_attn::cuda
