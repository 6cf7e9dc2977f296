#include <torch/extension.h>

#include "mini_paged_attn/block_tables.h"

namespace py = pybind11;

namespace mini_paged_attn {
namespace {

// Token ids and rows as a vector: from None, a list or tuple of ints, or an
// integer tensor. Several times faster than pybind's generic list caster,
// which matters at hundreds of ids per decode step; errors name the argument.
std::optional<std::vector<int64_t>> int_list(const py::handle& obj, const char* name) {
  if (obj.is_none()) return std::nullopt;
  if (THPVariable_Check(obj.ptr())) {
    const at::Tensor& t = THPVariable_Unpack(obj.ptr());
    if (t.dim() != 1 || at::isFloatingType(t.scalar_type()) || t.is_complex()) {
      throw py::type_error(std::string(name) + " must be a 1-D integer tensor, got " +
                           std::string(c10::toString(t.scalar_type())) + " of " +
                           std::to_string(t.dim()) + " dims");
    }
    const at::Tensor ids = t.to(at::kCPU, at::kLong).contiguous();
    return std::vector<int64_t>(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + ids.numel());
  }
  const py::object seq = py::reinterpret_steal<py::object>(PySequence_Fast(obj.ptr(), ""));
  if (!seq) {
    PyErr_Clear();
    throw py::type_error(std::string(name) + " must be a sequence of ints, got " +
                         std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
  }
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq.ptr());
  PyObject** items = PySequence_Fast_ITEMS(seq.ptr());
  std::vector<int64_t> out(n);
  for (Py_ssize_t i = 0; i < n; ++i) {
    if (!PyLong_Check(items[i]) || PyBool_Check(items[i])) {
      throw py::type_error(std::string(name) + "[" + std::to_string(i) + "] must be an int, got " +
                           std::string(Py_TYPE(items[i])->tp_name));
    }
    out[i] = PyLong_AsLongLong(items[i]);
    if (out[i] == -1 && PyErr_Occurred()) {
      PyErr_Clear();
      throw py::value_error(std::string(name) + "[" + std::to_string(i) +
                            "] does not fit in int64");
    }
  }
  return out;
}

}  // namespace

void bind_block_tables(py::module_& m) {
  // The GIL stays held: it is what serialises calls into one BlockTables.
  py::class_<BlockTables>(m, "BlockTables")
      .def(py::init<std::shared_ptr<BlockManager>, int64_t, int64_t, int64_t>(),
           py::arg("block_manager"), py::arg("num_rows"), py::arg("max_blocks_per_seq"),
           py::arg("block_size"))
      .def(
          "add",
          [](BlockTables& self, int64_t seq_len, const py::handle& token_ids) {
            return self.add(seq_len, int_list(token_ids, "token_ids"));
          },
          py::arg("seq_len"), py::arg("token_ids") = py::none())
      .def("fork", &BlockTables::fork, py::arg("parent_row"))
      .def("free", &BlockTables::free, py::arg("row"))
      .def(
          "append",
          [](BlockTables& self, int64_t row, int64_t n, const py::handle& token_ids) {
            return self.append(row, n, int_list(token_ids, "token_ids"));
          },
          py::arg("row"), py::arg("n"), py::arg("token_ids") = py::none())
      .def(
          "decode_step",
          [](BlockTables& self, const py::handle& rows, const py::handle& token_ids) {
            return self.decode_step(int_list(rows, "rows"), int_list(token_ids, "token_ids"));
          },
          py::arg("rows") = py::none(), py::arg("token_ids") = py::none())
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
