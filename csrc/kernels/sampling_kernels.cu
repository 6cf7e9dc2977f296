// CUDA sample_tokens: one thread block per row reads the logits once and
// returns the row's token (argmax for greedy rows, Gumbel-max over the tokens
// at or above the row's threshold otherwise) with its log-probability under
// the unscaled logits. One launch for the whole batch, no sort, no generator:
// the noise is counter-based (sampling.h), the same function as on the CPU.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cfloat>
#include <tuple>

#include "mini_paged_attn/checks.h"
#include "mini_paged_attn/cuda_utils.cuh"
#include "mini_paged_attn/sampling.h"

namespace mini_paged_attn::cuda {
namespace {

constexpr int kSampleThreads = 512;

// Running state of one thread (then of the block): the row's max logit and
// sum of exp(logit - max), and the best score with its token.
struct SampleState {
  float max_logit, sum, best;
  int64_t index;
};

__device__ __forceinline__ void merge(SampleState& a, const SampleState& b) {
  const float m = fmaxf(a.max_logit, b.max_logit);
  if (m != -INFINITY) {
    a.sum = a.sum * __expf(a.max_logit - m) + b.sum * __expf(b.max_logit - m);
  }
  a.max_logit = m;
  // The lowest index wins a tie, as torch.argmax.
  if (b.best > a.best || (b.best == a.best && b.index < a.index)) {
    a.best = b.best;
    a.index = b.index;
  }
}

__device__ __forceinline__ SampleState warp_merge(SampleState s) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    SampleState o;
    o.max_logit = __shfl_xor_sync(0xffffffffu, s.max_logit, offset);
    o.sum = __shfl_xor_sync(0xffffffffu, s.sum, offset);
    o.best = __shfl_xor_sync(0xffffffffu, s.best, offset);
    o.index = __shfl_xor_sync(0xffffffffu, s.index, offset);
    merge(s, o);
  }
  return s;
}

// Folds token i (logit v) into the thread's state.
__device__ __forceinline__ void visit(SampleState& s, float v, int64_t i, bool greedy,
                                      float inv_temperature, float min_scaled, uint64_t key) {
  if (v > s.max_logit) {
    s.sum = s.sum * __expf(s.max_logit - v) + 1.0f;
    s.max_logit = v;
  } else if (v != -INFINITY) {
    s.sum += __expf(v - s.max_logit);
  }
  float score = v;
  if (!greedy) {
    const float scaled = v * inv_temperature;
    score = scaled >= min_scaled ? scaled + gumbel_noise(key, i) : -INFINITY;
  }
  if (score > s.best) {  // i only grows within a thread: strict keeps the lowest
    s.best = score;
    s.index = i;
  }
}

// kVec logits per load: 16 bytes when the row allows it, else one.
template <typename scalar_t, int kVec>
__global__ void __launch_bounds__(kSampleThreads)
    sample_tokens_kernel(const scalar_t* __restrict__ logits, int64_t row_stride, int64_t vocab,
                         const float* __restrict__ temperatures,
                         const float* __restrict__ min_scaled_logits,
                         const int64_t* __restrict__ seeds, const int64_t* __restrict__ positions,
                         int64_t* __restrict__ tokens, float* __restrict__ logprobs) {
  const int64_t row = blockIdx.x;
  const scalar_t* x = logits + row * row_stride;
  const float temperature = temperatures[row];
  const bool greedy = !(temperature > 0.0f);
  const float inv_temperature = 1.0f / temperature;  // as the Python thresholds scale
  const float min_scaled = min_scaled_logits[row];
  const uint64_t key = noise_key(seeds[row], positions[row]);

  // -FLT_MAX, not -inf, as the first best: a row whose every score is -inf
  // (or NaN) still names a token.
  SampleState s{-INFINITY, 0.0f, -FLT_MAX, vocab};
  for (int64_t base = threadIdx.x * kVec; base < vocab; base += kSampleThreads * kVec) {
    scalar_t v[kVec];
    if constexpr (kVec == 1) {
      v[0] = x[base];
    } else {
      *reinterpret_cast<uint4*>(v) = *reinterpret_cast<const uint4*>(x + base);
    }
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      visit(s, Convert<scalar_t>::to_float(v[j]), base + j, greedy, inv_temperature, min_scaled,
            key);
    }
  }
  s = warp_merge(s);
  __shared__ SampleState warps[kSampleThreads / 32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warps[warp] = s;
  __syncthreads();
  if (warp == 0) {
    s = lane < kSampleThreads / 32 ? warps[lane] : SampleState{-INFINITY, 0.0f, -FLT_MAX, vocab};
    s = warp_merge(s);
    if (lane == 0) {
      const int64_t token = s.index < vocab ? s.index : 0;
      tokens[row] = token;
      logprobs[row] = Convert<scalar_t>::to_float(x[token]) - s.max_logit - logf(s.sum);
    }
  }
}

std::tuple<at::Tensor, at::Tensor> sample_tokens(const at::Tensor& logits,
                                                 const at::Tensor& temperatures,
                                                 const at::Tensor& min_scaled_logits,
                                                 const at::Tensor& seeds,
                                                 const at::Tensor& positions) {
  check_sample_tokens(logits, temperatures, min_scaled_logits, seeds, positions);
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  at::Tensor tokens = at::empty({rows}, logits.options().dtype(at::kLong));
  at::Tensor logprobs = at::empty({rows}, logits.options().dtype(at::kFloat));
  if (rows == 0) return {tokens, logprobs};
  TORCH_CHECK_VALUE(rows < (int64_t{1} << 31), "sample_tokens: too many rows (", rows, ")");
  const c10::cuda::CUDAGuard guard(logits.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto launch = [&](auto tag) {
    using scalar_t = decltype(tag);
    constexpr int kVec = 16 / sizeof(scalar_t);
    const bool vectorized = vocab % kVec == 0 && logits.stride(0) % kVec == 0 &&
                            reinterpret_cast<uintptr_t>(logits.data_ptr()) % 16 == 0;
    const auto kernel = vectorized ? sample_tokens_kernel<scalar_t, kVec>
                                   : sample_tokens_kernel<scalar_t, 1>;
    kernel<<<static_cast<unsigned>(rows), kSampleThreads, 0, stream>>>(
        static_cast<const scalar_t*>(logits.data_ptr()), logits.stride(0), vocab,
        temperatures.data_ptr<float>(), min_scaled_logits.data_ptr<float>(),
        seeds.data_ptr<int64_t>(), positions.data_ptr<int64_t>(), tokens.data_ptr<int64_t>(),
        logprobs.data_ptr<float>());
  };
  switch (logits.scalar_type()) {
    case at::kFloat: launch(float{}); break;
    case at::kHalf: launch(__half{}); break;
    case at::kBFloat16: launch(__nv_bfloat16{}); break;
    default: TORCH_CHECK(false, "sample_tokens: unsupported dtype ", logits.scalar_type());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {tokens, logprobs};
}

}  // namespace

TORCH_LIBRARY_IMPL(mini_paged_attn, CUDA, m) { m.impl("sample_tokens", &sample_tokens); }

}  // namespace mini_paged_attn::cuda
