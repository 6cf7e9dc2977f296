// CUDA cache writes: reshape_and_cache (new tokens into their slots) and
// copy_blocks (whole blocks, every layer, one launch, for copy-on-write).
// Both move rows of bytes, so they are dtype-agnostic: the copy unit is the
// widest of 16/8/4/2 bytes that every address, stride and row length allows.
// Neither reads device data on the host, so both can be captured in a graph.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "mini_paged_attn/checks.h"
#include "mini_paged_attn/cuda_utils.cuh"

namespace mini_paged_attn::cuda {
namespace {

constexpr int kCopyThreads = 256;
// Cache pointers travel as kernel parameters (no host-to-device copy, so the
// op is graph-capturable); more layers take more launches.
constexpr int kMaxLayersPerLaunch = 64;

// Strides of a [num_blocks, block_size, num_kv_heads, head_size] cache, in bytes.
struct CacheStrides {
  int64_t block, token, head;
};

CacheStrides byte_strides(const at::Tensor& cache) {
  const int64_t e = cache.element_size();
  return {cache.stride(0) * e, cache.stride(1) * e, cache.stride(2) * e};
}

int copy_unit(const std::vector<int64_t>& byte_values) {
  for (int unit : {16, 8, 4}) {
    if (std::all_of(byte_values.begin(), byte_values.end(),
                    [unit](int64_t v) { return v % unit == 0; })) {
      return unit;
    }
  }
  return 2;
}

int64_t address(const at::Tensor& t) {
  return static_cast<int64_t>(reinterpret_cast<uintptr_t>(t.data_ptr()));
}

// Calls f(unit_t{}) for the vector type of `unit` bytes.
template <typename F>
void dispatch_unit(int unit, F&& f) {
  switch (unit) {
    case 16: f(uint4{}); break;
    case 8: f(uint2{}); break;
    case 4: f(uint32_t{}); break;
    case 2: f(uint16_t{}); break;
    default: TORCH_CHECK(false, "Unsupported copy unit of ", unit, " bytes");
  }
}

template <typename unit_t>
__global__ void reshape_and_cache_kernel(
    const char* __restrict__ key,         // [num_tokens, num_kv_heads, head_size]
    const char* __restrict__ value,       // [num_tokens, num_kv_heads, head_size]
    char* __restrict__ key_cache,         // [num_blocks, block_size, num_kv_heads, head_size]
    char* __restrict__ value_cache,       // [num_blocks, block_size, num_kv_heads, head_size]
    const int64_t* __restrict__ slot_mapping,  // [num_tokens]
    int64_t key_token_stride, int64_t key_head_stride,      // bytes
    int64_t value_token_stride, int64_t value_head_stride,  // bytes
    const CacheStrides kc, const CacheStrides vc, int num_kv_heads, int row_units,
    int block_size) {
  const int64_t token = blockIdx.x;
  const int64_t slot = slot_mapping[token];
  if (slot < 0) return;  // padding token
  const int64_t block = slot / block_size, offset = slot % block_size;
  char* k_dst = key_cache + block * kc.block + offset * kc.token;
  char* v_dst = value_cache + block * vc.block + offset * vc.token;
  const char* k_src = key + token * key_token_stride;
  const char* v_src = value + token * value_token_stride;
  for (int i = threadIdx.x; i < num_kv_heads * row_units; i += blockDim.x) {
    const int h = i / row_units, u = i % row_units;
    reinterpret_cast<unit_t*>(k_dst + h * kc.head)[u] =
        reinterpret_cast<const unit_t*>(k_src + h * key_head_stride)[u];
    reinterpret_cast<unit_t*>(v_dst + h * vc.head)[u] =
        reinterpret_cast<const unit_t*>(v_src + h * value_head_stride)[u];
  }
}

void reshape_and_cache(const at::Tensor& key, const at::Tensor& value,
                       const at::Tensor& key_cache, const at::Tensor& value_cache,
                       const at::Tensor& slot_mapping, double k_scale, double v_scale) {
  // Rejects fp8 caches (not on CUDA yet): the scales of other caches are unused.
  check_reshape_and_cache(key, value, key_cache, value_cache, slot_mapping);
  check_kv_scales("reshape_and_cache", k_scale, v_scale);
  const int64_t num_tokens = key.size(0);
  if (num_tokens == 0) return;
  TORCH_CHECK_VALUE(num_tokens < (int64_t{1} << 31), "reshape_and_cache: too many tokens");
  const int64_t row_bytes = key.size(2) * key.element_size();
  const int64_t e = key.element_size();
  const CacheStrides kc = byte_strides(key_cache), vc = byte_strides(value_cache);
  const int unit = copy_unit({row_bytes, address(key), address(value), address(key_cache),
                              address(value_cache), key.stride(0) * e, key.stride(1) * e,
                              value.stride(0) * e, value.stride(1) * e, kc.block, kc.token,
                              kc.head, vc.block, vc.token, vc.head});
  const int row_units = static_cast<int>(row_bytes / unit);
  const int num_kv_heads = static_cast<int>(key.size(1));

  const c10::cuda::CUDAGuard guard(key.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(key.get_device()).stream();
  const int threads = std::min(kCopyThreads, std::max(32, num_kv_heads * row_units));
  dispatch_unit(unit, [&](auto u) {
    using unit_t = decltype(u);
    reshape_and_cache_kernel<unit_t><<<static_cast<unsigned>(num_tokens), threads, 0, stream>>>(
        static_cast<const char*>(key.data_ptr()), static_cast<const char*>(value.data_ptr()),
        static_cast<char*>(key_cache.data_ptr()), static_cast<char*>(value_cache.data_ptr()),
        slot_mapping.data_ptr<int64_t>(), key.stride(0) * e, key.stride(1) * e,
        value.stride(0) * e, value.stride(1) * e, kc, vc, num_kv_heads, row_units,
        static_cast<int>(key_cache.size(1)));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

struct LayerPointers {
  char* key[kMaxLayersPerLaunch];
  char* value[kMaxLayersPerLaunch];
};

template <typename unit_t>
__global__ void copy_blocks_kernel(
    const LayerPointers caches,  // per layer: [num_blocks, block_size, num_kv_heads, head_size]
    const int64_t* __restrict__ block_mapping,  // [num_pairs, 2]: (src, dst)
    const CacheStrides kc, const CacheStrides vc, int block_size, int num_kv_heads,
    int row_units) {
  const int64_t pair = blockIdx.x;
  const int layer = blockIdx.y;
  const bool is_value = blockIdx.z == 1;
  // Selected field by field: a reference to either parameter would put both on the stack.
  const int64_t block_stride = is_value ? vc.block : kc.block;
  const int64_t token_stride = is_value ? vc.token : kc.token;
  const int64_t head_stride = is_value ? vc.head : kc.head;
  char* base = is_value ? caches.value[layer] : caches.key[layer];
  const char* src = base + block_mapping[2 * pair] * block_stride;
  char* dst = base + block_mapping[2 * pair + 1] * block_stride;
  const int rows = block_size * num_kv_heads;
  for (int i = threadIdx.x; i < rows * row_units; i += blockDim.x) {
    const int row = i / row_units, u = i % row_units;
    const int64_t off = (row / num_kv_heads) * token_stride + (row % num_kv_heads) * head_stride;
    reinterpret_cast<unit_t*>(dst + off)[u] = reinterpret_cast<const unit_t*>(src + off)[u];
  }
}

void copy_blocks(at::TensorList key_caches, at::TensorList value_caches,
                 const at::Tensor& block_mapping) {
  const std::vector<at::Tensor> keys = key_caches.vec(), values = value_caches.vec();
  check_copy_blocks(keys, values, block_mapping);
  const int64_t num_pairs = block_mapping.size(0);
  if (num_pairs == 0) return;
  TORCH_CHECK_VALUE(num_pairs < (int64_t{1} << 31), "copy_blocks: too many block pairs");
  for (size_t i = 1; i < keys.size(); ++i) {
    TORCH_CHECK_VALUE(keys[i].strides() == keys[0].strides() &&
                          values[i].strides() == values[0].strides(),
                      "copy_blocks on CUDA needs every layer's caches to share strides: "
                      "key_caches[", i, "] has ", keys[i].strides(), " and value_caches[", i,
                      "] has ", values[i].strides(), ", layer 0 has ", keys[0].strides(),
                      " and ", values[0].strides());
  }
  const CacheStrides kc = byte_strides(keys[0]), vc = byte_strides(values[0]);
  const int64_t row_bytes = keys[0].size(3) * keys[0].element_size();
  std::vector<int64_t> byte_values = {row_bytes, kc.block, kc.token, kc.head,
                                      vc.block,  vc.token, vc.head};
  for (size_t i = 0; i < keys.size(); ++i) {
    byte_values.push_back(address(keys[i]));
    byte_values.push_back(address(values[i]));
  }
  const int unit = copy_unit(byte_values);
  const int row_units = static_cast<int>(row_bytes / unit);
  const int block_size = static_cast<int>(keys[0].size(1));
  const int num_kv_heads = static_cast<int>(keys[0].size(2));

  const c10::cuda::CUDAGuard guard(keys[0].device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(keys[0].get_device()).stream();
  const int num_layers = static_cast<int>(keys.size());
  for (int first = 0; first < num_layers; first += kMaxLayersPerLaunch) {
    const int count = std::min(kMaxLayersPerLaunch, num_layers - first);
    LayerPointers ptrs{};
    for (int i = 0; i < count; ++i) {
      ptrs.key[i] = static_cast<char*>(keys[first + i].data_ptr());
      ptrs.value[i] = static_cast<char*>(values[first + i].data_ptr());
    }
    const dim3 grid(static_cast<unsigned>(num_pairs), count, 2);
    dispatch_unit(unit, [&](auto u) {
      copy_blocks_kernel<decltype(u)><<<grid, kCopyThreads, 0, stream>>>(
          ptrs, block_mapping.data_ptr<int64_t>(), kc, vc, block_size, num_kv_heads, row_units);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(mini_paged_attn, CUDA, m) {
  m.impl("reshape_and_cache", &reshape_and_cache);
  m.impl("copy_blocks", &copy_blocks);
}

}  // namespace mini_paged_attn::cuda
