// The type and size dispatch every attention call site shares: which (query,
// cache) type pairs and which head sizes an op takes, written once. Host code
// only; the 16-bit types are parameters so that the CPU (c10::Half,
// c10::BFloat16) and CUDA (__half, __nv_bfloat16) sides use the same table.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <string>
#include <type_traits>

namespace mini_paged_attn {

template <typename T>
struct TypeTag {
  using type = T;
};

// fn(TypeTag<T>{}) for T = float or one of the 16-bit types, by dtype.
template <typename Half, typename BFloat16, typename Fn>
void dispatch_float_type(const char* op, const char* name, at::ScalarType dtype, Fn&& fn) {
  switch (dtype) {
    case at::kFloat: fn(TypeTag<float>{}); break;
    case at::kHalf: fn(TypeTag<Half>{}); break;
    case at::kBFloat16: fn(TypeTag<BFloat16>{}); break;
    default: TORCH_CHECK_TYPE(false, op, ": unsupported ", name, " dtype ", dtype);
  }
}

// fn(TypeTag<query_t>{}, TypeTag<cache_t>{}) for the pairs the attention ops
// take: query and cache of one type, or a float32 query on a 16-bit cache.
template <typename Half, typename BFloat16, typename Fn>
void dispatch_query_cache(const char* op, at::ScalarType query, at::ScalarType cache, Fn&& fn) {
  dispatch_float_type<Half, BFloat16>(op, "key_cache", cache, [&](auto c) {
    using cache_t = typename decltype(c)::type;
    if (query == at::kFloat) {
      fn(TypeTag<float>{}, c);
    } else {
      fn(TypeTag<cache_t>{}, c);
    }
  });
}

// fn(std::integral_constant<int, D>{}) for the head size D among Sizes.
template <int... Sizes, typename Fn>
void dispatch_head_size(const char* op, int64_t head_size, Fn&& fn) {
  const bool found =
      ((head_size == Sizes ? (fn(std::integral_constant<int, Sizes>{}), true) : false) || ...);
  if (!found) {
    std::string supported;
    ((supported += (supported.empty() ? "" : ", ") + std::to_string(Sizes)), ...);
    TORCH_CHECK(false, "Unsupported head_size ", head_size, " for ", op, " (supported: ",
                supported, ")");
  }
}

}  // namespace mini_paged_attn
