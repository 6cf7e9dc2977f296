// Operator schemas of the mini_paged_attn library. Backends register their
// kernels with TORCH_LIBRARY_IMPL in csrc/cpu and csrc/kernels; fake (meta)
// implementations for torch.compile live in mini_paged_attn/ops.py.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace mini_paged_attn {
namespace {

// The functional form allocates the output and forwards to the out= op, so
// each backend implements the kernel once.
at::Tensor paged_attention(const at::Tensor& query, const at::Tensor& key_cache,
                           const at::Tensor& value_cache, const at::Tensor& block_tables,
                           const at::Tensor& context_lens, double scale) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("mini_paged_attn::paged_attention_out", "")
                             .typed<void(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         double)>();
  at::Tensor out = at::empty(query.sizes(), query.options());
  op.call(out, query, key_cache, value_cache, block_tables, context_lens, scale);
  return out;
}

}  // namespace

TORCH_LIBRARY(mini_paged_attn, m) {
  m.def(
      "paged_attention(Tensor query, Tensor key_cache, Tensor value_cache, "
      "Tensor block_tables, Tensor context_lens, float scale) -> Tensor");
  m.def(
      "paged_attention_out(Tensor(a!) out, Tensor query, Tensor key_cache, Tensor value_cache, "
      "Tensor block_tables, Tensor context_lens, float scale) -> ()");
  m.def(
      "paged_attention_v1(Tensor(a!) out, Tensor query, Tensor key_cache, Tensor value_cache, "
      "Tensor block_table, Tensor context_lens) -> ()");
  m.def(
      "reshape_and_cache(Tensor key, Tensor value, Tensor(a!) key_cache, "
      "Tensor(b!) value_cache, Tensor slot_mapping) -> ()");
  m.def(
      "copy_blocks(Tensor(a!)[] key_caches, Tensor(b!)[] value_caches, "
      "Tensor block_mapping) -> ()");
}

TORCH_LIBRARY_IMPL(mini_paged_attn, CPU, m) { m.impl("paged_attention", &paged_attention); }
TORCH_LIBRARY_IMPL(mini_paged_attn, CUDA, m) { m.impl("paged_attention", &paged_attention); }

}  // namespace mini_paged_attn
