#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "mini_paged_attn/block_hash.h"
#include "mini_paged_attn/block_manager.h"

namespace py = pybind11;

namespace mini_paged_attn {

void bind_block_manager(py::module_& m) {
  // A Python MemoryError subclass, so `except MemoryError` catches it.
  static py::exception<OutOfBlocksError> out_of_blocks(m, "OutOfBlocksError",
                                                       PyExc_MemoryError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const OutOfBlocksError& e) {
      py::set_error(out_of_blocks, e.what());
    }
  });

  m.attr("ROOT_BLOCK_HASH") = kRootBlockHash;
  m.def(
      "hash_block",
      [](uint64_t parent_hash, const std::vector<int64_t>& token_ids) {
        return hash_block(parent_hash, token_ids.data(), static_cast<int64_t>(token_ids.size()));
      },
      py::arg("parent_hash"), py::arg("token_ids"));

  py::class_<PrefixCacheStats>(m, "PrefixCacheStats")
      .def_readonly("hits", &PrefixCacheStats::hits)
      .def_readonly("misses", &PrefixCacheStats::misses)
      .def_readonly("evictions", &PrefixCacheStats::evictions)
      .def("__repr__", [](const PrefixCacheStats& s) {
        return "PrefixCacheStats(hits=" + std::to_string(s.hits) +
               ", misses=" + std::to_string(s.misses) +
               ", evictions=" + std::to_string(s.evictions) + ")";
      });

  // The GIL is released inside every call so that Python threads really run
  // the manager concurrently and its own mutex is what keeps it consistent.
  // The shared_ptr holder lets a BlockTables keep its manager alive.
  using release = py::call_guard<py::gil_scoped_release>;
  py::class_<BlockManager, std::shared_ptr<BlockManager>>(m, "BlockManager")
      .def(py::init<int64_t>(), py::arg("num_blocks"))
      .def("allocate", &BlockManager::allocate, release())
      .def("allocate_blocks", &BlockManager::allocate_blocks, py::arg("n"), release())
      .def("allocate_with_prefix", &BlockManager::allocate_with_prefix, py::arg("n"),
           py::arg("block_hashes"), release())
      .def("free", &BlockManager::free, py::arg("block_idx"), release())
      .def("free_blocks", &BlockManager::free_blocks, py::arg("block_ids"), release())
      .def("increase_ref_count", &BlockManager::increase_ref_count, py::arg("block_idx"),
           release())
      .def("register_hash", &BlockManager::register_hash, py::arg("block_idx"),
           py::arg("block_hash"), release())
      .def("lookup", &BlockManager::lookup, py::arg("block_hash"), release())
      .def("get_block_hash", &BlockManager::get_block_hash, py::arg("block_idx"), release())
      .def("get_ref_count", &BlockManager::get_ref_count, py::arg("block_idx"), release())
      .def("get_num_free_blocks", &BlockManager::get_num_free_blocks, release())
      .def("get_num_evictable_blocks", &BlockManager::get_num_evictable_blocks, release())
      .def("get_evictable_blocks", &BlockManager::get_evictable_blocks, release())
      .def("get_prefix_cache_stats", &BlockManager::get_prefix_cache_stats, release())
      .def_property_readonly("num_blocks", &BlockManager::num_blocks)
      .def("__repr__", [](const BlockManager& self) {
        return "<_C.BlockManager num_blocks=" + std::to_string(self.num_blocks()) +
               " num_free_blocks=" + std::to_string(self.get_num_free_blocks()) + ">";
      });
}

}  // namespace mini_paged_attn
