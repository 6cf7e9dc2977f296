// Small device helpers shared by the CUDA kernels: dtype conversions, the
// Ampere/Hopper data-movement and tensor-core instructions (cp.async,
// ldmatrix, mma.sync) and host-side launch helpers.
//
// Only c10/cuda headers are included (not ATen/cuda/CUDAContext.h, which pulls
// in cuBLAS): they are what the CPU torch wheel ships, so CI can compile these
// files without a CUDA torch.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace mini_paged_attn::cuda {

// A paged K/V cache and its block tables as the attention kernels address
// them. Strides are in elements.
struct PagedKV {
  const void* key_cache;        // [num_blocks, block_size, num_kv_heads, head_size]
  const void* value_cache;      // [num_blocks, block_size, num_kv_heads, head_size]
  const int32_t* block_tables;  // [num_seqs, max_blocks_per_seq]
  const int32_t* context_lens;  // [num_seqs]
  int64_t k_block_stride, k_token_stride, k_head_stride;
  int64_t v_block_stride, v_token_stride, v_head_stride;
  int64_t block_table_stride;
};

inline PagedKV make_paged_kv(const at::Tensor& key_cache, const at::Tensor& value_cache,
                             const at::Tensor& block_tables, const at::Tensor& context_lens) {
  return PagedKV{key_cache.data_ptr(),      value_cache.data_ptr(),
                 block_tables.data_ptr<int32_t>(), context_lens.data_ptr<int32_t>(),
                 key_cache.stride(0),       key_cache.stride(1),
                 key_cache.stride(2),       value_cache.stride(0),
                 value_cache.stride(1),     value_cache.stride(2),
                 block_tables.stride(0)};
}

// ---------------------------------------------------------------------------
// Scalar conversions. Torch builds define __CUDA_NO_HALF_CONVERSIONS__ and
// friends, so every conversion is spelled out.
// ---------------------------------------------------------------------------
template <typename T>
struct Convert;

template <>
struct Convert<float> {
  static __device__ __forceinline__ float to_float(float x) { return x; }
  static __device__ __forceinline__ float from_float(float x) { return x; }
};

template <>
struct Convert<__half> {
  static __device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
  static __device__ __forceinline__ __half from_float(float x) { return __float2half_rn(x); }
  // Two floats as one register of the mma operand type (low half first).
  static __device__ __forceinline__ uint32_t pack2(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
};

template <>
struct Convert<__nv_bfloat16> {
  static __device__ __forceinline__ float to_float(__nv_bfloat16 x) {
    return __bfloat162float(x);
  }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float x) {
    return __float2bfloat16_rn(x);
  }
  static __device__ __forceinline__ uint32_t pack2(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
};

// x = hi + lo with hi, lo in the 16-bit type T: two 16-bit operands carry
// about 16 mantissa bits, enough for float32-grade dot products on tensor cores.
template <typename T>
__device__ __forceinline__ void split_hi_lo(float x, float& hi, float& lo) {
  hi = Convert<T>::to_float(Convert<T>::from_float(x));
  lo = x - hi;
}

// ---------------------------------------------------------------------------
// Asynchronous global -> shared copies (sm_80+).
// ---------------------------------------------------------------------------
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// L2 cache policies for cp_async_16. kL2EvictNormal is the encoding of the
// default policy (what a copy without a hint gets; measured to cost nothing,
// while `createpolicy ... evict_normal` cost 5%). Evict-first makes a one-pass
// stream not push out lines that other kernels left in L2 (dirty ones must be
// written back first); whether it pays depends on the launch (docs/archive/perf-notes-2026-11.md).
constexpr uint64_t kL2EvictNormal = 0x1000000000000000ull;

__device__ __forceinline__ uint64_t l2_evict_first_policy() {
  uint64_t policy = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
#endif
  return policy;
}

// Copies 16 bytes, or writes 16 zero bytes when !valid (src is then not read).
// The L2 prefetch hint makes a miss fetch 256 bytes from DRAM instead of the
// 32-byte sectors a 16-byte request touches (measured: +2-3% bandwidth on H100;
// 256 B also covers neighbouring heads' rows, which sibling blocks read next).
// One instruction form for every policy: a branch between two forms compiled
// to both, predicated, in the copy loop.
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src, bool valid,
                                            uint64_t policy) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const int src_bytes = valid ? 16 : 0;
  asm volatile(
      "cp.async.cg.shared.global.L2::cache_hint.L2::256B [%0], [%1], 16, %2, %3;\n" ::"r"(
          smem_addr(smem_dst)),
      "l"(gmem_src), "r"(src_bytes), "l"(policy));
#endif
}

// The same without a policy operand (the default policy).
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16, %2;\n" ::"r"(
                   smem_addr(smem_dst)),
               "l"(gmem_src), "r"(src_bytes));
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// Named barriers (0 is __syncthreads): `threads` (a multiple of 32) arrive on
// barrier `id`; sync also waits for the others, arrive does not.
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

__device__ __forceinline__ void named_barrier_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// Adds v to *p at gpu scope with acquire-release semantics; returns the old value.
__device__ __forceinline__ unsigned int atomic_add_acq_rel(unsigned int* p, unsigned int v) {
  unsigned int old = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
  asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], %2;\n"
               : "=r"(old)
               : "l"(p), "r"(v)
               : "memory");
#endif
  return old;
}

// ---------------------------------------------------------------------------
// Bulk global -> shared copies by the copy engine (sm_90), completing on an
// mbarrier: one instruction moves a whole contiguous run (16-byte multiples).
// ---------------------------------------------------------------------------
// A phase completes after `count` arrivals (and, for bulk copies, their bytes).
__device__ __forceinline__ void mbarrier_init(uint64_t* bar, uint32_t count = 1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count));
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void mbarrier_arrive(uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
#endif
}

// One arrival on the barrier once every cp.async this thread has issued so
// far has landed (the barrier's count includes it: no increment).
__device__ __forceinline__ void cp_async_mbarrier_arrive(uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(smem_addr(bar))
               : "memory");
#endif
}

// Arms the barrier's current phase for `bytes` of bulk copies.
__device__ __forceinline__ void mbarrier_expect_tx(uint64_t* bar, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)),
               "r"(bytes)
               : "memory");
#endif
}

__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, int phase) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "{\n .reg .pred done;\n WAIT_%=:\n"
      " mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      " @!done bra WAIT_%=;\n}\n" ::"r"(smem_addr(bar)),
      "r"(phase)
      : "memory");
#endif
}

// Orders this thread's earlier ordinary accesses (and those it acquired from
// other threads) before its later bulk copies.
__device__ __forceinline__ void fence_proxy_async() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.proxy.async;\n" ::: "memory");
#endif
}

// The same for shared memory only, e.g. cp.async writes before wgmma reads
// them. The unqualified fence above also orders global memory, which costs a
// GPU-wide memory barrier (MEMBAR.ALL.GPU) each time.
__device__ __forceinline__ void fence_proxy_async_shared() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void bulk_copy_g2s(void* smem_dst, const void* gmem_src, uint32_t bytes,
                                              uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::
          "r"(smem_addr(smem_dst)),
      "l"(gmem_src), "r"(bytes), "r"(smem_addr(bar))
      : "memory");
#endif
}

// ---------------------------------------------------------------------------
// Tensor-core fragments (m16n8k16, fp32 accumulators).
// ---------------------------------------------------------------------------
// Four 8x8 16-bit matrices; lane i gives the address of row i % 8 of matrix i / 8.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(smem_row)));
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_row) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(smem_row)));
#endif
}

// d += a * b for A 16x16 (row-major), B 16x8 (column-major), fp32 D 16x8.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1);

template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4],
                                                         uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4],
                                                  uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// ---------------------------------------------------------------------------
// Host helpers.
// ---------------------------------------------------------------------------
inline int num_sms(int device) {
  int n = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  return n;
}

inline int max_optin_smem(int device) {
  int n = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return n;
}

inline int compute_capability_major(int device) {
  int major = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  return major;
}

// The kernels use cp.async, ldmatrix and bf16 mma.sync.
inline void check_compute_capability(const char* op, int device) {
  const int major = compute_capability_major(device);
  TORCH_CHECK(major >= 8, op, ": the CUDA kernels need compute capability 8.0 or newer, device ",
              device, " has ", major, ".x");
}

}  // namespace mini_paged_attn::cuda
