// Python module mini_paged_attn._C: pybind11 classes. Loading it also runs the
// TORCH_LIBRARY registrations, which create torch.ops.mini_paged_attn.*.
#include <torch/extension.h>

#include "mini_paged_attn/checks.h"
#include "mini_paged_attn/cpu_isa.h"

namespace mini_paged_attn {
void bind_block_manager(pybind11::module_& m);
void bind_block_tables(pybind11::module_& m);
void bind_cache_config(pybind11::module_& m);
}  // namespace mini_paged_attn

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "C++ core of mini_paged_attn: BlockManager, BlockTables and KV-cache configs";
  mini_paged_attn::bind_block_manager(m);
  mini_paged_attn::bind_block_tables(m);
  mini_paged_attn::bind_cache_config(m);
  // Host-side data checks, used by the Python wrappers for GPU tensors.
  m.def("check_block_tables", &mini_paged_attn::check_block_tables, py::arg("op"),
        py::arg("block_tables"), py::arg("context_lens"), py::arg("num_blocks"),
        py::arg("block_size"));
  m.def("check_query_start_loc", &mini_paged_attn::check_query_start_loc, py::arg("op"),
        py::arg("query_start_loc"), py::arg("context_lens"), py::arg("num_tokens"));
  m.def("check_slot_mapping", &mini_paged_attn::check_slot_mapping, py::arg("op"),
        py::arg("slot_mapping"), py::arg("num_slots"));
  // Which instruction-set variant the CPU kernels run (cpu_isa.h).
  namespace cpu = mini_paged_attn::cpu;
  m.def("cpu_isa", [] { return cpu::cpu_isa_name(cpu::active_cpu_isa()); });
  m.def("set_cpu_isa", &cpu::set_cpu_isa, py::arg("isa"));
  m.def("supported_cpu_isas", &cpu::supported_cpu_isas);
  m.def("check_block_mapping", &mini_paged_attn::check_block_mapping, py::arg("op"),
        py::arg("block_mapping"), py::arg("num_blocks"));
  // The ops' metadata checks (shapes, dtypes, devices, layouts), run by their
  // fake implementations too, so a traced or meta call fails as the real one would.
  namespace mpa = mini_paged_attn;
  m.def("check_paged_attention_args",
        [](const std::string& op, const at::Tensor& out, const at::Tensor& query,
           const at::Tensor& key_cache, const at::Tensor& value_cache,
           const at::Tensor& block_tables, const at::Tensor& context_lens) {
          mpa::check_paged_attention(op.c_str(), out, query, key_cache, value_cache, block_tables,
                                     context_lens);
        });
  m.def("check_paged_prefill_attention_args",
        [](const at::Tensor& out, const at::Tensor& query, const at::Tensor& key_cache,
           const at::Tensor& value_cache, const at::Tensor& block_tables,
           const at::Tensor& context_lens, const at::Tensor& query_start_loc) {
          mpa::check_paged_prefill_attention("paged_prefill_attention", out, query, key_cache,
                                             value_cache, block_tables, context_lens,
                                             query_start_loc);
        });
  m.def("check_reshape_and_cache_args", &mpa::check_reshape_and_cache);
  m.def("check_copy_blocks_args", &mpa::check_copy_blocks);
  m.def("check_kv_scales", &mpa::check_kv_scales, py::arg("op"), py::arg("k_scale"),
        py::arg("v_scale"));
  m.def("check_sample_tokens_args", &mpa::check_sample_tokens);
}
