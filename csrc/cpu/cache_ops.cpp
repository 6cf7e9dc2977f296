// CPU cache writes: reshape_and_cache (new tokens into their slots) and
// copy_blocks (whole blocks, every layer, for copy-on-write).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>

#include "mini_paged_attn/checks.h"

namespace mini_paged_attn::cpu {
namespace {

void reshape_and_cache(const at::Tensor& key, const at::Tensor& value,
                       const at::Tensor& key_cache, const at::Tensor& value_cache,
                       const at::Tensor& slot_mapping) {
  check_reshape_and_cache(key, value, key_cache, value_cache, slot_mapping);
  const int64_t block_size = key_cache.size(1);
  check_slot_mapping("reshape_and_cache", slot_mapping, key_cache.size(0) * block_size);
  const int64_t num_tokens = key.size(0), num_kv_heads = key.size(1);
  const int64_t row_bytes = key.size(2) * key.element_size();
  const int64_t elem = key.element_size();
  const int64_t* slots = slot_mapping.data_ptr<int64_t>();

  at::parallel_for(0, num_tokens, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t slot = slots[i];
      if (slot < 0) continue;  // padding token: nothing to store
      const int64_t block = slot / block_size, offset = slot % block_size;
      for (const auto& [src, dst] : {std::pair<const at::Tensor&, const at::Tensor&>{key, key_cache},
                                     {value, value_cache}}) {
        for (int64_t h = 0; h < num_kv_heads; ++h) {
          const char* from = static_cast<const char*>(src.data_ptr()) +
                             (i * src.stride(0) + h * src.stride(1)) * elem;
          char* to = static_cast<char*>(dst.data_ptr()) +
                     (block * dst.stride(0) + offset * dst.stride(1) + h * dst.stride(2)) * elem;
          std::memcpy(to, from, row_bytes);
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
