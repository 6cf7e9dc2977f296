// wgmma paged prefill for __nv_bfloat16 queries and caches (prefill_wgmma_kernel.cuh).
#include "mini_paged_attn/prefill_wgmma_kernel.cuh"

namespace mini_paged_attn::cuda {
template void launch_prefill_wgmma<__nv_bfloat16>(const PrefillTcParams&, int64_t, int64_t,
                                                  int64_t, cudaStream_t);
}  // namespace mini_paged_attn::cuda
