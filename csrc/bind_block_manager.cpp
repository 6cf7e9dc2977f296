#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

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

  // The GIL is released inside every call so that Python threads really run
  // the manager concurrently and its own mutex is what keeps it consistent.
  using release = py::call_guard<py::gil_scoped_release>;
  py::class_<BlockManager>(m, "BlockManager")
      .def(py::init<int64_t>(), py::arg("num_blocks"))
      .def("allocate", &BlockManager::allocate, release())
      .def("allocate_blocks", &BlockManager::allocate_blocks, py::arg("n"), release())
      .def("free", &BlockManager::free, py::arg("block_idx"), release())
      .def("free_blocks", &BlockManager::free_blocks, py::arg("block_ids"), release())
      .def("increase_ref_count", &BlockManager::increase_ref_count, py::arg("block_idx"),
           release())
      .def("get_ref_count", &BlockManager::get_ref_count, py::arg("block_idx"), release())
      .def("get_num_free_blocks", &BlockManager::get_num_free_blocks, release())
      .def_property_readonly("num_blocks", &BlockManager::num_blocks)
      .def("__repr__", [](const BlockManager& self) {
        return "<_C.BlockManager num_blocks=" + std::to_string(self.num_blocks()) +
               " num_free_blocks=" + std::to_string(self.get_num_free_blocks()) + ">";
      });
}

}  // namespace mini_paged_attn
