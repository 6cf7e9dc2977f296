#include <torch/extension.h>

#include "mini_paged_attn/block_tables.h"

namespace py = pybind11;

namespace mini_paged_attn {

void bind_block_tables(py::module_& m) {
  // The GIL stays held: it is what serialises calls into one BlockTables.
  py::class_<BlockTables>(m, "BlockTables")
      .def(py::init<std::shared_ptr<BlockManager>, int64_t, int64_t, int64_t>(),
           py::arg("block_manager"), py::arg("num_rows"), py::arg("max_blocks_per_seq"),
           py::arg("block_size"))
      .def("add", &BlockTables::add, py::arg("seq_len"), py::arg("token_ids") = py::none())
      .def("fork", &BlockTables::fork, py::arg("parent_row"))
      .def("free", &BlockTables::free, py::arg("row"))
      .def("append", &BlockTables::append, py::arg("row"), py::arg("n"),
           py::arg("token_ids") = py::none())
      .def("decode_step", &BlockTables::decode_step, py::arg("rows") = py::none(),
           py::arg("token_ids") = py::none())
      .def("make_writable", &BlockTables::make_writable, py::arg("row"), py::arg("start"),
           py::arg("n"))
      .def("mark_written", &BlockTables::mark_written, py::arg("row"), py::arg("start"),
           py::arg("n"))
      .def("slot_mapping", &BlockTables::slot_mapping, py::arg("row"), py::arg("start"),
           py::arg("n"))
      .def("can_add", &BlockTables::can_add, py::arg("seq_len"))
      .def("can_append", &BlockTables::can_append, py::arg("row"), py::arg("n"))
      .def("blocks", &BlockTables::blocks, py::arg("row"))
      .def("seq_len", &BlockTables::seq_len, py::arg("row"))
      .def_property_readonly("block_table", &BlockTables::block_table)
      .def_property_readonly("context_lens", &BlockTables::context_lens);
}

}  // namespace mini_paged_attn
