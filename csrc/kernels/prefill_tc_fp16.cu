// Tensor-core paged prefill for __half queries and caches (prefill_tc_kernel.cuh).
#include "mini_paged_attn/prefill_tc_kernel.cuh"

namespace mini_paged_attn::cuda {
template void launch_prefill_tc<__half>(const PrefillTcParams&, int64_t, int64_t, int64_t,
                                     cudaStream_t);
}  // namespace mini_paged_attn::cuda
