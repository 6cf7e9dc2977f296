// CPU cache writes: reshape_and_cache (new tokens into their slots, quantized
// for an fp8 cache) and copy_blocks (whole blocks, every layer, for copy-on-write).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <utility>

#include "mini_paged_attn/checks.h"
#include "mini_paged_attn/dispatch.h"
#include "mini_paged_attn/fp8.h"

namespace mini_paged_attn::cpu {
namespace {

// Writes n values of one token and head into the cache: a copy, or for an
// fp8 cache round(x / scale) saturated to the format's range (fp8.h).
using RowWriter = void (*)(const void* from, void* to, int64_t n, float scale);

void copy_row(const void* from, void* to, int64_t n, float) { std::memcpy(to, from, n); }

template <typename src_t, typename cache_t>
void quantize_row(const void* from, void* to, int64_t n, float scale) {
  const src_t* x = static_cast<const src_t*>(from);
  cache_t* y = static_cast<cache_t*>(to);
  for (int64_t i = 0; i < n; ++i) y[i] = quantize_fp8<cache_t>(static_cast<float>(x[i]), scale);
}

// The writer and the n it takes for rows of head_size values.
std::pair<RowWriter, int64_t> row_writer(const at::Tensor& key, const at::Tensor& key_cache) {
  const at::ScalarType cache = key_cache.scalar_type();
  if (!is_fp8(cache)) return {copy_row, key.size(2) * key.element_size()};
  RowWriter write = nullptr;
  dispatch_float_type<c10::Half, c10::BFloat16>(
      "reshape_and_cache", "key", key.scalar_type(), [&](auto s) {
        using src_t = typename decltype(s)::type;
        write = cache == at::kFloat8_e4m3fn ? quantize_row<src_t, c10::Float8_e4m3fn>
                                            : quantize_row<src_t, c10::Float8_e5m2>;
      });
  return {write, key.size(2)};
}

void reshape_and_cache(const at::Tensor& key, const at::Tensor& value,
                       const at::Tensor& key_cache, const at::Tensor& value_cache,
                       const at::Tensor& slot_mapping, double k_scale, double v_scale) {
  check_reshape_and_cache(key, value, key_cache, value_cache, slot_mapping);
  check_kv_scales("reshape_and_cache", k_scale, v_scale);
  const int64_t block_size = key_cache.size(1);
  check_slot_mapping("reshape_and_cache", slot_mapping, key_cache.size(0) * block_size);
  const int64_t num_tokens = key.size(0), num_kv_heads = key.size(1);
  const auto [write, row_n] = row_writer(key, key_cache);
  const int64_t src_elem = key.element_size(), dst_elem = key_cache.element_size();
  const float scales[2] = {static_cast<float>(k_scale), static_cast<float>(v_scale)};
  const int64_t* slots = slot_mapping.data_ptr<int64_t>();

  at::parallel_for(0, num_tokens, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t slot = slots[i];
      if (slot < 0) continue;  // padding token: nothing to store
      const int64_t block = slot / block_size, offset = slot % block_size;
      for (int which = 0; which < 2; ++which) {
        const at::Tensor& src = which == 0 ? key : value;
        const at::Tensor& dst = which == 0 ? key_cache : value_cache;
        for (int64_t h = 0; h < num_kv_heads; ++h) {
          const char* from = static_cast<const char*>(src.data_ptr()) +
                             (i * src.stride(0) + h * src.stride(1)) * src_elem;
          char* to = static_cast<char*>(dst.data_ptr()) +
                     (block * dst.stride(0) + offset * dst.stride(1) + h * dst.stride(2)) *
                         dst_elem;
          write(from, to, row_n, scales[which]);
        }
      }
    }
  });
}

void copy_blocks(at::TensorList key_caches, at::TensorList value_caches,
                 const at::Tensor& block_mapping) {
  const std::vector<at::Tensor> keys = key_caches.vec(), values = value_caches.vec();
  check_copy_blocks(keys, values, block_mapping);
  check_block_mapping("copy_blocks", block_mapping, keys[0].size(0));
  const int64_t num_pairs = block_mapping.size(0);
  const int64_t* pairs = block_mapping.data_ptr<int64_t>();
  const int64_t num_layers = static_cast<int64_t>(keys.size());

  at::parallel_for(0, num_layers * 2 * num_pairs, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t pair = task % num_pairs, which = (task / num_pairs) % 2;
      const at::Tensor& cache = (which == 0 ? keys : values)[task / (2 * num_pairs)];
      // Block copies through copy_ respect any cache strides.
      cache[pairs[2 * pair + 1]].copy_(cache[pairs[2 * pair]]);
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mini_paged_attn, CPU, m) {
  m.impl("reshape_and_cache", &reshape_and_cache);
  m.impl("copy_blocks", &copy_blocks);
}

}  // namespace mini_paged_attn::cpu
