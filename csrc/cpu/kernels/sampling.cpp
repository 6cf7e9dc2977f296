// CPU sample_tokens: each row's token (argmax for greedy rows, Gumbel-max over
// the tokens at or above the row's threshold otherwise) and its log-probability
// under the unscaled logits, in one pass over the row.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <tuple>

#include "mini_paged_attn/checks.h"
#include "mini_paged_attn/sampling.h"

namespace mini_paged_attn::cpu {
namespace {

template <typename scalar_t>
void sample_row(const scalar_t* logits, int64_t vocab, float temperature, float min_scaled,
                int64_t seed, int64_t position, int64_t* token, float* logprob) {
  const bool greedy = !(temperature > 0.0f);
  const float inv_temperature = 1.0f / temperature;  // as the Python thresholds scale
  const uint64_t key = noise_key(seed, position);
  float max_logit = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < vocab; ++i) max_logit = std::fmax(max_logit, static_cast<float>(logits[i]));
  float sum = 0.0f, best = -std::numeric_limits<float>::infinity();
  int64_t best_index = 0;
  for (int64_t i = 0; i < vocab; ++i) {
    const float x = static_cast<float>(logits[i]);
    sum += std::exp(x - max_logit);
    float score = x;
    if (!greedy) {
      const float scaled = x * inv_temperature;
      score = scaled >= min_scaled ? scaled + gumbel_noise(key, i)
                                   : -std::numeric_limits<float>::infinity();
    }
    if (score > best) {  // strict: the lowest index wins a tie, as torch.argmax
      best = score;
      best_index = i;
    }
  }
  *token = best_index;
  *logprob = static_cast<float>(logits[best_index]) - max_logit - std::log(sum);
}

std::tuple<at::Tensor, at::Tensor> sample_tokens(const at::Tensor& logits,
                                                 const at::Tensor& temperatures,
                                                 const at::Tensor& min_scaled_logits,
                                                 const at::Tensor& seeds,
                                                 const at::Tensor& positions) {
  check_sample_tokens(logits, temperatures, min_scaled_logits, seeds, positions);
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  at::Tensor tokens = at::empty({rows}, logits.options().dtype(at::kLong));
  at::Tensor logprobs = at::empty({rows}, logits.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(),
                                  "sample_tokens", [&] {
    const scalar_t* base = logits.data_ptr<scalar_t>();
    const int64_t stride = logits.stride(0);
    at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        sample_row(base + r * stride, vocab, temperatures.data_ptr<float>()[r],
                   min_scaled_logits.data_ptr<float>()[r], seeds.data_ptr<int64_t>()[r],
                   positions.data_ptr<int64_t>()[r], tokens.data_ptr<int64_t>() + r,
                   logprobs.data_ptr<float>() + r);
      }
    });
  });
  return {tokens, logprobs};
}

}  // namespace

TORCH_LIBRARY_IMPL(mini_paged_attn, CPU, m) { m.impl("sample_tokens", &sample_tokens); }

}  // namespace mini_paged_attn::cpu
