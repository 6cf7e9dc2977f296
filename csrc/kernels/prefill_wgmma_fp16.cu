// wgmma paged prefill for __half queries and caches (prefill_wgmma_kernel.cuh).
#include <cuda_runtime.h>

#include "mini_paged_attn/prefill_wgmma_kernel.cuh"

namespace mini_paged_attn::cuda {
template void launch_prefill_wgmma<__half>(const PrefillTcParams&, int64_t, int64_t, int64_t,
                                           cudaStream_t);

// setup.py defines MINI_PAGED_ATTN_SM90A when the build holds sm_90a code,
// which every compute capability 9.0 GPU runs.
bool prefill_wgmma_usable(int64_t head_size, int device) {
#ifdef MINI_PAGED_ATTN_SM90A
  if (head_size != 64 && head_size != 128) return false;
  int major = 0, minor = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  return major == 9 && minor == 0;
#else
  (void)head_size;
  (void)device;
  return false;
#endif
}
}  // namespace mini_paged_attn::cuda
