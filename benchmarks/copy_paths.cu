// Copy-path ceilings for the decode kernel. Streams the K and V pages of the
// benchmark's (128, 4096, 32/8 heads, head size 128, block size 16) bf16 shape
// into shared memory the way paged_attention does (one block per sequence and
// KV head, 4 warps, 16-token tiles, 3 stages a warp), with no attention math,
// through several load paths and shared-memory layouts: how fast can each way
// of loading go, apart from the kernel? docs/archive/perf-notes-2026-11.md has
// the numbers and what they showed.
//
//   make bench-copy    (a GPU machine with nvcc; the TMA rows need sm_90)
//
// Stand-alone (plain nvcc, no torch headers), so it carries its own small PTX
// wrappers rather than cuda_utils.cuh's, in the exact forms its rows compare.
//
// Each row is the median of 25 launches, each after a 256 MB memset that
// flushes L2, as triton's do_bench does. Rows that fold the bytes they read
// with XOR print the same checksum; the ldmatrix and MMA rows fold otherwise.
// L2 sectors per copy instruction come from ncu:
//   ncu --cache-control all -k regex:copy_ --metrics \
//     lts__t_sectors_srcunit_tex_op_read.sum,smsp__inst_executed_op_ldgsts.sum <binary> once
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#define CHECK_CUDA(x)                                                                    \
  do {                                                                                   \
    cudaError_t err = (x);                                                               \
    if (err != cudaSuccess) {                                                            \
      std::printf("%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(err));           \
      std::exit(1);                                                                      \
    }                                                                                    \
  } while (0)

namespace {

constexpr int kBatch = 128, kContext = 4096, kKvHeads = 8, kBlockSize = 16;
constexpr int kRowBytes = 256;  // head size 128, bf16
constexpr int kTile = 16, kWarps = 4, kStages = 3, kChunks = kRowBytes / 16;
constexpr int64_t kTokenStride = kKvHeads * kRowBytes;  // bytes, [blocks, 16, heads, 128]
constexpr int64_t kBlockStride = kBlockSize * kTokenStride;

struct Params {
  const char* key_cache;
  const char* value_cache;
  const int* block_tables;  // [kBatch, kContext / kBlockSize], shuffled pages
  unsigned* checksum;
  int smem_offset;  // bytes the tiles start past the 1024-aligned buffer
};

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ---------------------------------------------------------------------------
// cp.async paths: a layout (where chunk c of tile row r goes, which lane copies
// what) and a consumer.
// ---------------------------------------------------------------------------
enum Layout {
  kPad16,        // rows padded by 16 bytes (decode kernel v4)
  kPad16NoHint,  // the same without the L2::256B prefetch hint
  kFlat,         // unpadded rows
  kSwizzle,      // unpadded, chunk c of row r at c ^ (r % 8) (decode kernel v5)
  kFa2Swizzle,   // 8 lanes per 128-byte half row, 128-byte swizzle atoms (FlashAttention-2)
};
enum Consumer { kXor, kLdmatrix, kMma };

template <Layout L>
struct Tile {
  static constexpr int kRowStride = (L == kPad16 || L == kPad16NoHint) ? kRowBytes + 16 : kRowBytes;
  static constexpr int kBytes = kTile * kRowStride;
  // Copy instruction k of a tile: which row and chunk this lane copies.
  __device__ static void lane_chunk(int lane, int k, int& row, int& c) {
    if (L == kFa2Swizzle) {
      row = lane / 8 + 4 * (k % 4);
      c = (k / 4) * 8 + lane % 8;
    } else {
      row = (lane + 32 * k) / kChunks;
      c = (lane + 32 * k) % kChunks;
    }
  }
  __device__ static int offset(int row, int c) {
    if (L == kSwizzle) return row * kRowBytes + ((c ^ (row & 7)) << 4);
    if (L == kFa2Swizzle) return (c / 8) * (kTile * 128) + row * 128 + (((c & 7) ^ (row & 7)) << 4);
    return row * kRowStride + c * 16;
  }
};

template <bool kHint, bool kZfill>
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, int src_bytes) {
  if (kZfill) {
    asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)),
                 "l"(src), "r"(src_bytes));
  } else if (kHint) {
    asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16;\n" ::"r"(smem_addr(dst)),
                 "l"(src));
  } else {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(dst)), "l"(src));
  }
}

__device__ __forceinline__ void ldmatrix_x4(uint4& r, const void* p, bool trans) {
  if (trans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "r"(smem_addr(p)));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "r"(smem_addr(p)));
  }
}

__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint4& a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void fold(uint4& acc, const uint4& v) {
  acc.x ^= v.x;
  acc.y ^= v.y;
  acc.z ^= v.z;
  acc.w ^= v.w;
}

template <Layout L, bool kZfill, Consumer C>
__global__ void __launch_bounds__(128) copy_cp_async(Params p) {
  using T = Tile<L>;
  extern __shared__ __align__(1024) unsigned char smem[];
  __shared__ __align__(16) unsigned char q_tile[16 * 272];  // MMA consumer: a fixed A operand
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int seq = blockIdx.x / kKvHeads, head = blockIdx.x % kKvHeads;
  unsigned char* wsmem = smem + p.smem_offset + warp * kStages * 2 * T::kBytes;
  const int my_tiles = kContext / kTile / kWarps;
  const int* table = p.block_tables + seq * (kContext / kBlockSize);
  const char* k_base = p.key_cache + head * kRowBytes;
  const char* v_base = p.value_cache + head * kRowBytes;
  auto issue = [&](int stage, int j) {
    const int token0 = (warp + j * kWarps) * kTile;
    const int64_t page = table[token0 / kBlockSize];
    unsigned char* ks = wsmem + stage * 2 * T::kBytes;
#pragma unroll
    for (int k = 0; k < kChunks / 2; ++k) {
      int row, c;
      T::lane_chunk(lane, k, row, c);
      const int64_t src =
          page * kBlockStride + ((token0 + row) % kBlockSize) * kTokenStride + c * 16;
      const int src_bytes = token0 + row < kContext ? 16 : 0;
      cp_async_16<L != kPad16NoHint, kZfill>(ks + T::offset(row, c), k_base + src, src_bytes);
      cp_async_16<L != kPad16NoHint, kZfill>(ks + T::kBytes + T::offset(row, c), v_base + src,
                                            src_bytes);
    }
  };

  for (int i = threadIdx.x; i < 16 * 272 / 4; i += blockDim.x) {
    reinterpret_cast<uint32_t*>(q_tile)[i] = 0x3c003c00u ^ i;
  }
  __syncthreads();
  uint4 acc = make_uint4(0, 0, 0, 0);
  float o[16][4] = {};
  float m = -1e30f;
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    issue(st, st);
    asm volatile("cp.async.commit_group;\n");
  }
  for (int j = 0; j < my_tiles; ++j) {
    if (j + kStages - 1 < my_tiles) issue((j + kStages - 1) % kStages, j + kStages - 1);
    asm volatile("cp.async.commit_group;\n");
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kStages - 1));
    __syncwarp();
    const unsigned char* ks = wsmem + (j % kStages) * 2 * T::kBytes;
    const unsigned char* vs = ks + T::kBytes;
    if (C == kXor) {
#pragma unroll
      for (int k = 0; k < kChunks / 2; ++k) {
        int row, c;
        T::lane_chunk(lane, k, row, c);
        fold(acc, *reinterpret_cast<const uint4*>(ks + T::offset(row, c)));
        fold(acc, *reinterpret_cast<const uint4*>(vs + T::offset(row, c)));
      }
    } else if (C == kLdmatrix) {
#pragma unroll
      for (int kk = 0; kk < 8; ++kk) {
        uint4 a, b;
        ldmatrix_x4(a, ks + T::offset((lane & 7) + (lane >> 4) * 8, kk * 2 + ((lane >> 3) & 1)),
                    false);
        ldmatrix_x4(b, vs + T::offset((lane & 7) + ((lane >> 3) & 1) * 8, kk * 2 + (lane >> 4)),
                    true);
        fold(acc, a);
        fold(acc, b);
      }
    } else {
      // The decode kernel's math: S = Q K^T, an online-softmax rescale, O += P V.
      float s[2][4] = {};
#pragma unroll
      for (int kk = 0; kk < 8; ++kk) {
        uint4 a, b;
        ldmatrix_x4(a, q_tile + ((lane & 7) + ((lane >> 3) & 1) * 8) * 272 +
                           (kk * 16 + (lane >> 4) * 8) * 2,
                    false);
        ldmatrix_x4(b, ks + T::offset((lane & 7) + (lane >> 4) * 8, kk * 2 + ((lane >> 3) & 1)),
                    false);
        mma_bf16(s[0], a, b.x, b.y);
        mma_bf16(s[1], a, b.z, b.w);
      }
      float mx = fmaxf(fmaxf(s[0][0], s[0][1]), fmaxf(s[1][0], s[1][1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m, mx), alpha = exp2f(m - m_new);
      m = m_new;
#pragma unroll
      for (int n = 0; n < 16; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) o[n][e] *= alpha;
      }
      const __nv_bfloat162 p0 = __floats2bfloat162_rn(exp2f(s[0][0] - m), exp2f(s[0][1] - m));
      const __nv_bfloat162 p1 = __floats2bfloat162_rn(exp2f(s[1][0] - m), exp2f(s[1][1] - m));
      uint4 pa;
      pa.x = pa.y = *reinterpret_cast<const uint32_t*>(&p0);
      pa.z = pa.w = *reinterpret_cast<const uint32_t*>(&p1);
#pragma unroll
      for (int n = 0; n < 16; n += 2) {
        uint4 b;
        ldmatrix_x4(b, vs + T::offset((lane & 7) + ((lane >> 3) & 1) * 8, n + (lane >> 4)), true);
        mma_bf16(o[n], pa, b.x, b.y);
        mma_bf16(o[n + 1], pa, b.z, b.w);
      }
    }
    __syncwarp();
  }
  if (C == kMma) {
    float sum = m;
    for (int n = 0; n < 16; ++n) sum += o[n][0] + o[n][1] + o[n][2] + o[n][3];
    acc.x = __float_as_uint(sum);
  }
  atomicXor(p.checksum, acc.x ^ acc.y ^ acc.z ^ acc.w);
}

// 16-byte loads into registers, no shared memory: two tiles in flight a warp.
__global__ void __launch_bounds__(128) copy_ldg(Params p) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int seq = blockIdx.x / kKvHeads, head = blockIdx.x % kKvHeads;
  const int my_tiles = kContext / kTile / kWarps;
  const int* table = p.block_tables + seq * (kContext / kBlockSize);
  const char* k_base = p.key_cache + head * kRowBytes;
  const char* v_base = p.value_cache + head * kRowBytes;
  auto load = [&](uint4 (&r)[16], int j) {
    const int token0 = (warp + j * kWarps) * kTile;
    const int64_t page = table[token0 / kBlockSize];
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const int row = (lane + 32 * k) / kChunks, c = (lane + 32 * k) % kChunks;
      const int64_t src =
          page * kBlockStride + ((token0 + row) % kBlockSize) * kTokenStride + c * 16;
      asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                   : "=r"(r[k].x), "=r"(r[k].y), "=r"(r[k].z), "=r"(r[k].w)
                   : "l"(k_base + src));
      asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                   : "=r"(r[8 + k].x), "=r"(r[8 + k].y), "=r"(r[8 + k].z), "=r"(r[8 + k].w)
                   : "l"(v_base + src));
    }
  };
  uint4 acc = make_uint4(0, 0, 0, 0);
  uint4 even[16], odd[16];
  load(even, 0);
  for (int j = 0; j < my_tiles; j += 2) {
    load(odd, j + 1);
#pragma unroll
    for (int k = 0; k < 16; ++k) fold(acc, even[k]);
    if (j + 2 < my_tiles) load(even, j + 2);
#pragma unroll
    for (int k = 0; k < 16; ++k) fold(acc, odd[k]);
  }
  atomicXor(p.checksum, acc.x ^ acc.y ^ acc.z ^ acc.w);
}

// ---------------------------------------------------------------------------
// Bulk tensor copies (TMA): one 16-token x 128-element box (4 KB) per K or V
// tile, 128-byte swizzle, completion on an mbarrier per stage.
// ---------------------------------------------------------------------------
__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, int phase) {
  asm volatile(
      "{\n .reg .pred done;\n WAIT:\n"
      " mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      " @!done bra WAIT;\n}\n" ::"r"(smem_addr(bar)),
      "r"(phase));
}

__device__ __forceinline__ void tma_load_tile(void* dst, const CUtensorMap* map, uint64_t* bar,
                                              int token_in_block, int block, int head) {
  asm volatile(
      "cp.async.bulk.tensor.5d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {0, 0, %3, %4, %5}], [%2];\n" ::"r"(smem_addr(dst)),
      "l"(map), "r"(smem_addr(bar)), "r"(token_in_block), "r"(block), "r"(head)
      : "memory");
}

template <int kTmaStages>
__global__ void __launch_bounds__(128) copy_tma(Params p, const __grid_constant__ CUtensorMap k_map,
                                                const __grid_constant__ CUtensorMap v_map) {
  extern __shared__ __align__(1024) unsigned char smem[];
  __shared__ uint64_t bars[kWarps][kTmaStages];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int seq = blockIdx.x / kKvHeads, head = blockIdx.x % kKvHeads;
  unsigned char* wsmem = smem + warp * kTmaStages * 2 * 4096;
  if (lane == 0) {
    for (int st = 0; st < kTmaStages; ++st) {
      asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(smem_addr(&bars[warp][st])));
    }
  }
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  __syncwarp();
  const int my_tiles = kContext / kTile / kWarps;
  const int* table = p.block_tables + seq * (kContext / kBlockSize);
  auto issue = [&](int stage, int j) {
    if (lane != 0) return;
    const int token0 = (warp + j * kWarps) * kTile;
    uint64_t* bar = &bars[warp][stage];
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)),
                 "r"(2 * 4096));
    const int block = table[token0 / kBlockSize];
    tma_load_tile(wsmem + stage * 8192, &k_map, bar, token0 % kBlockSize, block, head);
    tma_load_tile(wsmem + stage * 8192 + 4096, &v_map, bar, token0 % kBlockSize, block, head);
  };
  uint4 acc = make_uint4(0, 0, 0, 0);
  for (int st = 0; st < kTmaStages - 1; ++st) issue(st, st);
  for (int j = 0; j < my_tiles; ++j) {
    if (j + kTmaStages - 1 < my_tiles) issue((j + kTmaStages - 1) % kTmaStages, j + kTmaStages - 1);
    mbarrier_wait(&bars[warp][j % kTmaStages], (j / kTmaStages) & 1);
    const unsigned char* tile = wsmem + (j % kTmaStages) * 8192;
#pragma unroll
    for (int k = 0; k < 16; ++k) {
      fold(acc, *reinterpret_cast<const uint4*>(tile + (lane + 32 * k) * 16));
    }
    __syncwarp();
    // The copy engine refills this stage next: order the reads above before it.
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  }
  atomicXor(p.checksum, acc.x ^ acc.y ^ acc.z ^ acc.w);
}

using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                 const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                 const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                 CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// The cache as 5-D: (64 elements, 2 halves of a row, token in block, block, head).
CUtensorMap cache_map(EncodeTiled encode, const char* cache, int num_blocks,
                      CUtensorMapL2promotion promotion) {
  CUtensorMap map;
  const cuuint64_t dims[5] = {64, 2, kBlockSize, static_cast<cuuint64_t>(num_blocks), kKvHeads};
  const cuuint64_t strides[4] = {128, kTokenStride, kBlockStride, kRowBytes};
  const cuuint32_t box[5] = {64, 2, kTile, 1, 1};
  const cuuint32_t element_strides[5] = {1, 1, 1, 1, 1};
  const CUresult r =
      encode(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 5, const_cast<char*>(cache), dims, strides,
             box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
             promotion, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    std::printf("cuTensorMapEncodeTiled failed: %d\n", static_cast<int>(r));
    std::exit(1);
  }
  return map;
}

__global__ void fill_random(uint32_t* data, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    uint32_t x = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    x ^= x >> 16;
    x *= 2246822519u;
    x ^= x >> 13;
    data[i] = x & 0xbfffbfffu;  // bf16 pairs below 2 in magnitude: no inf or NaN for the MMA row
  }
}

}  // namespace

int main(int argc, char** argv) {
  const bool once = argc > 1 && std::strcmp(argv[1], "once") == 0;  // one launch a row, for ncu
  const int num_blocks = kBatch * kContext / kBlockSize;
  const size_t cache_bytes = size_t(num_blocks) * kBlockStride;
  char *key_cache, *value_cache, *flush;
  int* block_tables;
  unsigned* checksum;
  const size_t flush_bytes = size_t(256) << 20;
  CHECK_CUDA(cudaMalloc(&key_cache, cache_bytes));
  CHECK_CUDA(cudaMalloc(&value_cache, cache_bytes));
  CHECK_CUDA(cudaMalloc(&flush, flush_bytes));
  CHECK_CUDA(cudaMalloc(&block_tables, num_blocks * sizeof(int)));
  CHECK_CUDA(cudaMalloc(&checksum, sizeof(unsigned)));
  fill_random<<<1024, 256>>>(reinterpret_cast<uint32_t*>(key_cache), cache_bytes / 4, 1);
  fill_random<<<1024, 256>>>(reinterpret_cast<uint32_t*>(value_cache), cache_bytes / 4, 2);
  std::vector<int> pages(num_blocks);
  std::iota(pages.begin(), pages.end(), 0);
  std::shuffle(pages.begin(), pages.end(), std::mt19937(0));
  CHECK_CUDA(cudaMemcpy(block_tables, pages.data(), num_blocks * sizeof(int),
                        cudaMemcpyHostToDevice));
  const Params params{key_cache, value_cache, block_tables, checksum, 0};

  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s, %d SMs; K+V %.2f GB, block size %d, shuffled pages\n", prop.name,
              prop.multiProcessorCount, 2.0 * cache_bytes / 1e9, kBlockSize);
  std::printf("%-44s %9s %8s %9s\n", "load path", "time us", "TB/s", "checksum");

  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  auto row = [&](const char* name, auto launch) {
    std::vector<float> times;
    unsigned sum = 0;
    for (int rep = 0; rep < (once ? 1 : 25); ++rep) {
      CHECK_CUDA(cudaMemsetAsync(flush, rep & 0xff, flush_bytes));
      CHECK_CUDA(cudaMemsetAsync(checksum, 0, sizeof(unsigned)));
      CHECK_CUDA(cudaEventRecord(start));
      launch();
      CHECK_CUDA(cudaGetLastError());
      CHECK_CUDA(cudaEventRecord(stop));
      CHECK_CUDA(cudaEventSynchronize(stop));
      float ms = 0.f;
      CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
      times.push_back(ms * 1e3f);
      CHECK_CUDA(cudaMemcpy(&sum, checksum, sizeof(unsigned), cudaMemcpyDeviceToHost));
    }
    std::sort(times.begin(), times.end());
    const float us = times[times.size() / 2];
    std::printf("%-44s %9.1f %8.3f  %08x\n", name, us, 2.0 * cache_bytes / us / 1e6, sum);
  };
  auto cp_async = [&](auto kernel, int tile_bytes, int smem_offset = 0) {
    const int smem = kWarps * kStages * 2 * tile_bytes + smem_offset;
    CHECK_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    Params p = params;
    p.smem_offset = smem_offset;
    return [=] { kernel<<<kBatch * kKvHeads, 128, smem>>>(p); };
  };
  using Pad16 = Tile<kPad16>;
  using Swizzled = Tile<kSwizzle>;
  row("cp.async, 16-byte pad per row (v4)",
      cp_async(copy_cp_async<kPad16, false, kXor>, Pad16::kBytes));
  row("cp.async, 16-byte pad, no prefetch hint",
      cp_async(copy_cp_async<kPad16NoHint, false, kXor>, Pad16::kBytes));
  row("cp.async, unpadded", cp_async(copy_cp_async<kFlat, false, kXor>, Swizzled::kBytes));
  row("cp.async, XOR swizzle (v5)",
      cp_async(copy_cp_async<kSwizzle, false, kXor>, Swizzled::kBytes));
  row("cp.async, FA2 lanes, swizzle atoms",
      cp_async(copy_cp_async<kFa2Swizzle, false, kXor>, Swizzled::kBytes));
  row("cp.async, swizzle, tiles at byte 16",
      cp_async(copy_cp_async<kSwizzle, false, kXor>, Swizzled::kBytes, 16));
  row("cp.async, swizzle, tiles at byte 4352",
      cp_async(copy_cp_async<kSwizzle, false, kXor>, Swizzled::kBytes, 4352));
  row("cp.async, swizzle + zero-fill operand",
      cp_async(copy_cp_async<kSwizzle, true, kXor>, Swizzled::kBytes));
  row("  + ldmatrix reads", cp_async(copy_cp_async<kSwizzle, true, kLdmatrix>, Swizzled::kBytes));
  row("  + the kernel's MMA and softmax",
      cp_async(copy_cp_async<kSwizzle, true, kMma>, Swizzled::kBytes));
  row("ld.global into registers", [&] { copy_ldg<<<kBatch * kKvHeads, 128>>>(params); });

  EncodeTiled encode = nullptr;
  cudaDriverEntryPointQueryResult found;
  CHECK_CUDA(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled",
                                              reinterpret_cast<void**>(&encode), 12000,
                                              cudaEnableDefault, &found));
  if (prop.major < 9 || found != cudaDriverEntryPointSuccess) return 0;
  auto tma = [&](auto kernel, int stages, CUtensorMapL2promotion promotion) {
    const int smem = kWarps * stages * 2 * 4096;
    CHECK_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    const CUtensorMap k_map = cache_map(encode, key_cache, num_blocks, promotion);
    const CUtensorMap v_map = cache_map(encode, value_cache, num_blocks, promotion);
    return [=] { kernel<<<kBatch * kKvHeads, 128, smem>>>(params, k_map, v_map); };
  };
  row("TMA, 3 stages", tma(copy_tma<3>, 3, CU_TENSOR_MAP_L2_PROMOTION_L2_256B));
  row("TMA, 3 stages, no L2 promotion", tma(copy_tma<3>, 3, CU_TENSOR_MAP_L2_PROMOTION_NONE));
  row("TMA, 4 stages (one block an SM)", tma(copy_tma<4>, 4, CU_TENSOR_MAP_L2_PROMOTION_L2_256B));
  return 0;
}
