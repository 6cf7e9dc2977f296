// Operator schemas of the mini_paged_attn library. Backends register their
// kernels with TORCH_LIBRARY_IMPL in csrc/cpu/kernels and csrc/kernels; fake (meta)
// implementations for torch.compile live in mini_paged_attn/ops.py.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace mini_paged_attn {
namespace {

// The functional forms allocate the output and forward to the out= op, so
// each backend implements the kernel once. The out= schema is
// (out, query, inputs..., scale, k_scale, v_scale).
template <typename... Tensors>
at::Tensor with_new_out(const char* out_op, const at::Tensor& query, double scale,
                        double k_scale, double v_scale, const Tensors&... inputs) {
  const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow(out_op, "")
          .typed<void(const at::Tensor&, const at::Tensor&, const Tensors&..., double, double,
                      double)>();
  at::Tensor out = at::empty(query.sizes(), query.options());
  op.call(out, query, inputs..., scale, k_scale, v_scale);
  return out;
}

at::Tensor paged_attention(const at::Tensor& query, const at::Tensor& key_cache,
                           const at::Tensor& value_cache, const at::Tensor& block_tables,
                           const at::Tensor& context_lens, double scale, double k_scale,
                           double v_scale) {
  return with_new_out("mini_paged_attn::paged_attention_out", query, scale, k_scale, v_scale,
                      key_cache, value_cache, block_tables, context_lens);
}

at::Tensor paged_prefill_attention(const at::Tensor& query, const at::Tensor& key_cache,
                                   const at::Tensor& value_cache, const at::Tensor& block_tables,
                                   const at::Tensor& context_lens,
                                   const at::Tensor& query_start_loc, double scale,
                                   double k_scale, double v_scale) {
  return with_new_out("mini_paged_attn::paged_prefill_attention_out", query, scale, k_scale,
                      v_scale, key_cache, value_cache, block_tables, context_lens,
                      query_start_loc);
}

}  // namespace

// k_scale / v_scale: the per-tensor scales of an fp8 KV cache (fp8.h); other
// caches ignore them.
TORCH_LIBRARY(mini_paged_attn, m) {
  m.def(
      "paged_attention(Tensor query, Tensor key_cache, Tensor value_cache, "
      "Tensor block_tables, Tensor context_lens, float scale, *, float k_scale=1.0, "
      "float v_scale=1.0) -> Tensor");
  m.def(
      "paged_attention_out(Tensor(a!) out, Tensor query, Tensor key_cache, Tensor value_cache, "
      "Tensor block_tables, Tensor context_lens, float scale, *, float k_scale=1.0, "
      "float v_scale=1.0) -> ()");
  m.def(
      "paged_prefill_attention(Tensor query, Tensor key_cache, Tensor value_cache, "
      "Tensor block_tables, Tensor context_lens, Tensor query_start_loc, float scale, *, "
      "float k_scale=1.0, float v_scale=1.0) -> Tensor");
  m.def(
      "paged_prefill_attention_out(Tensor(a!) out, Tensor query, Tensor key_cache, "
      "Tensor value_cache, Tensor block_tables, Tensor context_lens, Tensor query_start_loc, "
      "float scale, *, float k_scale=1.0, float v_scale=1.0) -> ()");
  m.def(
      "paged_attention_v1(Tensor(a!) out, Tensor query, Tensor key_cache, Tensor value_cache, "
      "Tensor block_table, Tensor context_lens) -> ()");
  m.def(
      "reshape_and_cache(Tensor key, Tensor value, Tensor(a!) key_cache, "
      "Tensor(b!) value_cache, Tensor slot_mapping, *, float k_scale=1.0, "
      "float v_scale=1.0) -> ()");
  m.def(
      "copy_blocks(Tensor(a!)[] key_caches, Tensor(b!)[] value_caches, "
      "Tensor block_mapping) -> ()");
  m.def(
      "sample_tokens(Tensor logits, Tensor temperatures, Tensor min_scaled_logits, "
      "Tensor seeds, Tensor positions) -> (Tensor, Tensor)");
  // Layer kernels (CUDA; the model runs eager PyTorch code elsewhere).
  m.def("rms_norm(Tensor(a!) out, Tensor input, Tensor weight, float eps) -> ()");
  m.def("fused_add_rms_norm(Tensor(a!) input, Tensor(b!) residual, Tensor weight, float eps) -> ()");
  m.def("silu_and_mul(Tensor(a!) out, Tensor input) -> ()");
  m.def(
      "rotary_embedding(Tensor positions, Tensor(a!) query, Tensor(b!) key, Tensor cos, "
      "Tensor sin) -> ()");
}

// Once for every backend: the out= op they call is the backend's kernel.
TORCH_LIBRARY_IMPL(mini_paged_attn, CompositeExplicitAutograd, m) {
  m.impl("paged_attention", &paged_attention);
  m.impl("paged_prefill_attention", &paged_prefill_attention);
}

}  // namespace mini_paged_attn
