#include <pybind11/pybind11.h>

#include "mini_paged_attn/cache_config.h"

namespace py = pybind11;

namespace mini_paged_attn {
namespace {

using cache::CacheConfig;
using cache::PagedKVCacheConfig;
using cache::StaticKVCacheConfig;

// Python ints are unbounded: validate here so that -1 becomes a ValueError
// naming the argument instead of wrapping around to 2**64 - 1.
uint64_t positive_u64(const py::handle& value, const char* name) {
  if (!PyLong_Check(value.ptr()) || PyBool_Check(value.ptr())) {
    throw py::type_error(std::string(name) + " must be an int, got " +
                         std::string(py::str(py::type::handle_of(value).attr("__name__"))));
  }
  if (value.cast<py::int_>() < py::int_(1)) {
    throw py::value_error(std::string(name) + " must be positive, got " +
                          std::string(py::str(value)));
  }
  if (value.cast<py::int_>() > py::int_(std::numeric_limits<uint64_t>::max())) {
    throw py::value_error(std::string(name) + " must be at most 2**64 - 1, got " +
                          std::string(py::str(value)));
  }
  return value.cast<uint64_t>();
}

}  // namespace

void bind_cache_config(py::module_& m) {
  py::class_<CacheConfig, std::shared_ptr<CacheConfig>>(m, "CacheConfig",
                                                        "Abstract base of the KV-cache configs.")
      .def("__repr__", [](const CacheConfig& self) { return self.repr(); });

  py::class_<StaticKVCacheConfig, CacheConfig, std::shared_ptr<StaticKVCacheConfig>>(
      m, "StaticKVCacheConfig", "Contiguous cache: max_batch_size slots of max_cache_len tokens.")
      .def(py::init([](const py::object& max_batch_size, const py::object& max_cache_len) {
             return std::make_shared<StaticKVCacheConfig>(
                 positive_u64(max_batch_size, "max_batch_size"),
                 positive_u64(max_cache_len, "max_cache_len"));
           }),
           py::arg("max_batch_size") = py::int_(StaticKVCacheConfig::kDefaultMaxBatchSize),
           py::arg("max_cache_len") = py::int_(StaticKVCacheConfig::kDefaultMaxCacheLen))
      .def("max_batch_size", &StaticKVCacheConfig::max_batch_size)
      .def("max_cache_len", &StaticKVCacheConfig::max_cache_len)
      .def("__repr__", &StaticKVCacheConfig::repr);

  py::class_<PagedKVCacheConfig, CacheConfig, std::shared_ptr<PagedKVCacheConfig>>(
      m, "PagedKVCacheConfig", "Paged cache: a byte budget cut into blocks of block_size tokens.")
      .def(py::init([](const py::object& max_kv_memory_bytes, const py::object& block_size) {
             return std::make_shared<PagedKVCacheConfig>(
                 positive_u64(max_kv_memory_bytes, "max_kv_memory_bytes"),
                 positive_u64(block_size, "block_size"));
           }),
           py::arg("max_kv_memory_bytes"),
           py::arg("block_size") = py::int_(PagedKVCacheConfig::kDefaultBlockSize))
      .def("max_kv_memory_bytes", &PagedKVCacheConfig::max_kv_memory_bytes)
      .def("block_size", &PagedKVCacheConfig::block_size)
      .def("__repr__", &PagedKVCacheConfig::repr);
}

}  // namespace mini_paged_attn
