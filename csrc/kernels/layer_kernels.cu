// The small per-token kernels of a transformer layer, each one pass over its
// rows where eager PyTorch takes several: RMSNorm (alone, or fused with the
// residual add before it), SiLU-and-mul of the gated MLP, and rotary
// embeddings applied to queries and keys in place. Rounding follows the eager
// Llama code: the residual sum and the normalised row are rounded to the
// activation dtype before the weight multiplies them; the rest runs in fp32.
// No host reads of device data, so all of them can be captured in a graph.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "mini_paged_attn/cuda_utils.cuh"

namespace mini_paged_attn::cuda {
namespace {

constexpr int kRowThreads = 256;

template <typename T>
__device__ __forceinline__ float round_to(float x) {
  return Convert<T>::to_float(Convert<T>::from_float(x));
}

__device__ __forceinline__ float block_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  __shared__ float warps[kRowThreads / 32];
  __shared__ float total;
  if (threadIdx.x % 32 == 0) warps[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    v = threadIdx.x < kRowThreads / 32 ? warps[threadIdx.x] : 0.0f;
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    if (threadIdx.x == 0) total = v;
  }
  __syncthreads();
  return total;
}

// out = weight * round(x * rsqrt(mean(x^2) + eps)), with x = input, or with
// x = residual + input (then also stored in residual and written to `out`,
// which is `input` itself for the fused op).
template <typename T, bool kAddResidual>
__global__ void __launch_bounds__(kRowThreads)
    rms_norm_kernel(T* out, int64_t out_stride, const T* input, int64_t in_stride,
                    T* __restrict__ residual, int64_t res_stride, const T* __restrict__ weight,
                    int hidden, float eps) {
  const int64_t row = blockIdx.x;
  const T* x = input + row * in_stride;
  float sum_sq = 0.0f;
  for (int i = threadIdx.x; i < hidden; i += kRowThreads) {
    float v = Convert<T>::to_float(x[i]);
    if constexpr (kAddResidual) {
      T* r = residual + row * res_stride;
      v = round_to<T>(v + Convert<T>::to_float(r[i]));
      r[i] = Convert<T>::from_float(v);
    }
    sum_sq += v * v;
  }
  const float inv_rms = rsqrtf(block_sum(sum_sq) / hidden + eps);
  // Each thread reads back only the elements it wrote, so no barrier is needed.
  const T* src = kAddResidual ? residual + row * res_stride : x;
  T* dst = out + row * out_stride;
  for (int i = threadIdx.x; i < hidden; i += kRowThreads) {
    const float v = round_to<T>(Convert<T>::to_float(src[i]) * inv_rms);
    dst[i] = Convert<T>::from_float(v * Convert<T>::to_float(weight[i]));
  }
}

// out[t, i] = silu(x[t, i]) * x[t, size + i]
template <typename T>
__global__ void silu_and_mul_kernel(T* __restrict__ out, int64_t out_stride,
                                    const T* __restrict__ input, int64_t in_stride, int size) {
  const int64_t row = blockIdx.y;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= size) return;
  const float gate = Convert<T>::to_float(input[row * in_stride + i]);
  const float up = Convert<T>::to_float(input[row * in_stride + size + i]);
  out[row * out_stride + i] = Convert<T>::from_float(gate / (1.0f + __expf(-gate)) * up);
}

// Rotate-half RoPE of every head of one token: (x1, x2) -> (x1 c - x2 s, x2 c + x1 s)
// for the pairs (i, i + head_size / 2). cos and sin are [max_pos, head_size] tables in
// the activation dtype (as the eager code multiplies by them).
template <typename T>
__global__ void rotary_kernel(const int64_t* __restrict__ positions, T* query,
                              int64_t q_token_stride, int64_t q_head_stride, int num_q_heads,
                              T* key, int64_t k_token_stride, int64_t k_head_stride,
                              int num_k_heads, const T* __restrict__ cos,
                              const T* __restrict__ sin, int head_size) {
  const int64_t token = blockIdx.x;
  const int half = head_size / 2;
  const T* c = cos + positions[token] * head_size;
  const T* s = sin + positions[token] * head_size;
  const int pairs = (num_q_heads + num_k_heads) * half;
  for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
    const int head = p / half, i = p % half;
    T* x = head < num_q_heads
               ? query + token * q_token_stride + head * q_head_stride
               : key + token * k_token_stride + (head - num_q_heads) * k_head_stride;
    const float x1 = Convert<T>::to_float(x[i]), x2 = Convert<T>::to_float(x[i + half]);
    const float c1 = Convert<T>::to_float(c[i]), s1 = Convert<T>::to_float(s[i]);
    const float c2 = Convert<T>::to_float(c[i + half]), s2 = Convert<T>::to_float(s[i + half]);
    x[i] = Convert<T>::from_float(x1 * c1 - x2 * s1);
    x[i + half] = Convert<T>::from_float(x2 * c2 + x1 * s2);
  }
}

// Calls f(T{}) with the CUDA type of `dtype`.
template <typename F>
void dispatch_float(const char* op, at::ScalarType dtype, F&& f) {
  switch (dtype) {
    case at::kFloat: f(float{}); break;
    case at::kHalf: f(__half{}); break;
    case at::kBFloat16: f(__nv_bfloat16{}); break;
    default:
      TORCH_CHECK_TYPE(false, op, ": tensors must be float32, float16 or bfloat16, got ", dtype);
  }
}

void check_rows(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref) {
  TORCH_CHECK_VALUE(t.dim() == 2, op, ": ", name, " must be 2-D [num_tokens, hidden], got shape ",
                    t.sizes());
  TORCH_CHECK_VALUE(t.is_cuda() && t.device() == ref.device(), op, ": ", name, " is on ",
                    t.device(), ", expected ", ref.device());
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": ", name, " dtype ",
                   t.scalar_type(), " differs from ", ref.scalar_type());
  TORCH_CHECK_VALUE(t.size(-1) <= 1 || t.stride(-1) == 1, op, ": ", name,
                    " must be contiguous in its last dimension");
}

void check_weight(const char* op, const at::Tensor& weight, const at::Tensor& input) {
  TORCH_CHECK_VALUE(weight.dim() == 1 && weight.size(0) == input.size(1) &&
                        weight.is_contiguous() && weight.device() == input.device(),
                    op, ": weight must be a contiguous [", input.size(1), "] tensor on ",
                    input.device(), ", got shape ", weight.sizes(), " on ", weight.device());
  TORCH_CHECK_TYPE(weight.scalar_type() == input.scalar_type(), op, ": weight dtype ",
                   weight.scalar_type(), " differs from input dtype ", input.scalar_type());
}

template <bool kAddResidual>
void launch_rms_norm(const char* op, const at::Tensor& out, const at::Tensor& input,
                     const at::Tensor& residual, const at::Tensor& weight, double eps) {
  check_rows(op, "input", input, input);
  check_rows(op, "out", out, input);
  check_rows(op, "residual", residual, input);
  check_weight(op, weight, input);
  TORCH_CHECK_VALUE(out.sizes() == input.sizes() && residual.sizes() == input.sizes(), op,
                    ": out and residual must be shaped like input ", input.sizes());
  if (input.size(0) == 0) return;
  const c10::cuda::CUDAGuard guard(input.device());
  dispatch_float(op, input.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    rms_norm_kernel<T, kAddResidual>
        <<<static_cast<unsigned>(input.size(0)), kRowThreads, 0,
           c10::cuda::getCurrentCUDAStream()>>>(
            static_cast<T*>(out.data_ptr()), out.stride(0),
            static_cast<const T*>(input.data_ptr()), input.stride(0),
            static_cast<T*>(residual.data_ptr()), residual.stride(0),
            static_cast<const T*>(weight.data_ptr()), static_cast<int>(input.size(1)),
            static_cast<float>(eps));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void rms_norm(const at::Tensor& out, const at::Tensor& input, const at::Tensor& weight,
              double eps) {
  launch_rms_norm<false>("rms_norm", out, input, input, weight, eps);
}

void fused_add_rms_norm(const at::Tensor& input, const at::Tensor& residual,
                        const at::Tensor& weight, double eps) {
  launch_rms_norm<true>("fused_add_rms_norm", input, input, residual, weight, eps);
}

void silu_and_mul(const at::Tensor& out, const at::Tensor& input) {
  const char* op = "silu_and_mul";
  check_rows(op, "input", input, input);
  check_rows(op, "out", out, input);
  TORCH_CHECK_VALUE(input.size(1) % 2 == 0 && out.size(0) == input.size(0) &&
                        out.size(1) == input.size(1) / 2,
                    op, ": input must be [num_tokens, 2 * size] and out [num_tokens, size], got ",
                    input.sizes(), " and ", out.sizes());
  const int size = static_cast<int>(out.size(1));
  if (input.size(0) == 0 || size == 0) return;
  TORCH_CHECK_VALUE(input.size(0) < 65536, op, ": at most 65535 tokens per call, got ",
                    input.size(0));
  const c10::cuda::CUDAGuard guard(input.device());
  const dim3 grid((size + kRowThreads - 1) / kRowThreads, static_cast<unsigned>(input.size(0)));
  dispatch_float(op, input.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    silu_and_mul_kernel<T><<<grid, kRowThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        static_cast<T*>(out.data_ptr()), out.stride(0), static_cast<const T*>(input.data_ptr()),
        input.stride(0), size);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void rotary_embedding(const at::Tensor& positions, const at::Tensor& query,
                      const at::Tensor& key, const at::Tensor& cos, const at::Tensor& sin) {
  const char* op = "rotary_embedding";
  TORCH_CHECK_VALUE(query.dim() == 3 && key.dim() == 3 && query.size(0) == key.size(0) &&
                        query.size(2) == key.size(2) && query.size(2) % 2 == 0,
                    op, ": query and key must be [num_tokens, heads, head_size] with one even "
                    "head_size, got ", query.sizes(), " and ", key.sizes());
  TORCH_CHECK_TYPE(key.scalar_type() == query.scalar_type(), op, ": key dtype ",
                   key.scalar_type(), " differs from query dtype ", query.scalar_type());
  TORCH_CHECK_VALUE(query.stride(2) == 1 && key.stride(2) == 1, op,
                    ": query and key must be contiguous in their last dimension");
  TORCH_CHECK_TYPE(positions.scalar_type() == at::kLong &&
                       cos.scalar_type() == query.scalar_type() &&
                       sin.scalar_type() == query.scalar_type(),
                   op, ": positions must be int64 and cos, sin of the query dtype ",
                   query.scalar_type());
  TORCH_CHECK_VALUE(positions.dim() == 1 && positions.size(0) == query.size(0) &&
                        positions.is_contiguous(),
                    op, ": positions must be a contiguous [", query.size(0), "] tensor");
  TORCH_CHECK_VALUE(cos.dim() == 2 && cos.size(1) == query.size(2) && cos.is_contiguous() &&
                        sin.sizes() == cos.sizes() && sin.is_contiguous(),
                    op, ": cos and sin must be contiguous [max_position, ", query.size(2), "]");
  for (const at::Tensor* t : {&key, &positions, &cos, &sin}) {
    TORCH_CHECK_VALUE(t->device() == query.device(), op, ": every tensor must be on ",
                      query.device());
  }
  if (query.size(0) == 0) return;
  const c10::cuda::CUDAGuard guard(query.device());
  dispatch_float(op, query.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    rotary_kernel<T><<<static_cast<unsigned>(query.size(0)), 128, 0,
                       c10::cuda::getCurrentCUDAStream()>>>(
        positions.data_ptr<int64_t>(), static_cast<T*>(query.data_ptr()), query.stride(0),
        query.stride(1), static_cast<int>(query.size(1)), static_cast<T*>(key.data_ptr()),
        key.stride(0), key.stride(1), static_cast<int>(key.size(1)),
        static_cast<const T*>(cos.data_ptr()), static_cast<const T*>(sin.data_ptr()),
        static_cast<int>(query.size(2)));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(mini_paged_attn, CUDA, m) {
  m.impl("rms_norm", &rms_norm);
  m.impl("fused_add_rms_norm", &fused_add_rms_norm);
  m.impl("silu_and_mul", &silu_and_mul);
  m.impl("rotary_embedding", &rotary_embedding);
}

}  // namespace mini_paged_attn::cuda
