// The decode kernel's merges (attention_kernels.cuh): of its warps' online
// softmaxes, then, in split launches, of the splits of a (sequence, kv_head,
// group), by the last block of it to finish.
#pragma once

#include "mini_paged_attn/decode_tile_math.cuh"
#include "mini_paged_attn/decode_traits.cuh"

namespace mini_paged_attn::cuda {

// Merges the block's warps through shared memory (the pipeline buffers, idle
// by then) into the output rows, or into this split's partial rows.
template <typename Tr, typename query_t>
__device__ __forceinline__ void merge_warps(const PagedAttentionParams& p, unsigned char* smem,
                                            HeadState<Tr>& h, int seq, int head0, int num_q,
                                            int split, int used_splits, query_t* out) {
  constexpr int D = Tr::kHeadSize, kWarps = Tr::kWarps;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gid = lane / 4, tig = lane % 4;
  h.l += __shfl_xor_sync(0xffffffffu, h.l, 1);
  h.l += __shfl_xor_sync(0xffffffffu, h.l, 2);
  __syncthreads();
  float* merge_o = reinterpret_cast<float*>(smem);     // [kWarps][8][D]
  float* merge_m = merge_o + kWarps * Tr::kHeads * D;  // [kWarps][8]
  float* merge_l = merge_m + kWarps * Tr::kHeads;      // [kWarps][8]
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    *reinterpret_cast<float2*>(merge_o + (warp * Tr::kHeads + gid) * D + n * 8 + tig * 2) =
        make_float2(h.o[n][0] + h.o[n][2], h.o[n][1] + h.o[n][3]);
  }
  if (tig == 0) {
    merge_m[warp * Tr::kHeads + gid] = h.m;
    merge_l[warp * Tr::kHeads + gid] = h.l;
  }
  __syncthreads();

  for (int i = threadIdx.x; i < num_q * D; i += Tr::kThreads) {
    const int g = i / D, d = i % D;
    float m_all = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) m_all = fmaxf(m_all, merge_m[w * Tr::kHeads + g]);
    float l_all = 0.f, acc = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float f = exp2f(merge_m[w * Tr::kHeads + g] - m_all);  // 0 for idle warps
      l_all += f * merge_l[w * Tr::kHeads + g];
      acc += f * merge_o[(w * Tr::kHeads + g) * D + d];
    }
    const int head = head0 + g;
    if (used_splits == 1) {
      const int e = head_elem<D>(p, head, d);
      if (e >= 0) out[head * p.out_head_stride + e] = Convert<query_t>::from_float(acc / l_all);
    } else {
      float* part = p.tmp_out + ((static_cast<int64_t>(seq) * p.num_heads + head) * p.num_splits +
                                 split) * (D + 4);
      part[d] = acc / l_all;
      if (d == 0) {
        part[D] = m_all;
        part[D + 1] = l_all;
      }
    }
  }
}

// Whether this block is the last of its (sequence, kv_head, group) to arrive.
// Every thread's partial writes precede the barrier, so thread 0's release
// orders them (cumulatively) before its arrival; the last arrival's acquire
// orders every split's partial before the merge's copies.
__device__ __forceinline__ bool last_to_arrive(const PagedAttentionParams& p, int used_splits) {
  __shared__ bool last;
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned int* counter = split_arrivals + p.counter_base + blockIdx.x;
    last = atomic_add_acq_rel(counter, 1u) == static_cast<unsigned int>(used_splits - 1);
    if (last) *counter = 0u;  // every arrival is in: leave it at zero for the next launch
  }
  __syncthreads();
  return last;
}

// The merge runs at the tail of the launch, where each round trip to L2 takes
// over a microsecond (other blocks still stream), so it makes one: the partial
// rows of each head, a contiguous run, are copied into shared memory in batches
// of splits and merged there. On sm_90 the copy engine moves each run in one
// instruction; 16-byte cp.async copies issued by the block took 2 us, queued
// behind the SM's other block's stream.
template <typename Tr>
struct SplitBatches {
  static constexpr int kPart = Tr::kHeadSize + 4;  // floats a partial row
  // Per head: the running max and sum over the batches merged so far, and the
  // factor that rescales them to the current batch's max.
  float* head_state;  // [3][kHeads]: max, sum, rescale
  float* weights;     // [num_q][batch]: this batch's split weights
  float* parts;       // [num_q][batch][kPart], 16-byte aligned
  const float* part_rows;
  uint64_t* ready;  // completion of the bulk copies (sm_90)
  int batch, num_q, used_splits, num_splits;

  __device__ __forceinline__ void copy(int s0) const {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const int n = min(batch, used_splits - s0);
    const float* src = part_rows + s0 * kPart;
#if __CUDA_ARCH__ >= 900
    if (threadIdx.x == 0) {
      if (s0 == 0) mbarrier_init(ready);
      fence_proxy_async();  // after the acquire, and after this block's own accesses to the buffer
      mbarrier_expect_tx(ready, num_q * n * kPart * 4);
      for (int g = 0; g < num_q; ++g) {
        bulk_copy_g2s(parts + g * batch * kPart, src + g * num_splits * kPart, n * kPart * 4,
                      ready);
      }
    }
#else
    for (int g = 0; g < num_q; ++g) {
      for (int k = threadIdx.x; k < n * kPart / 4; k += Tr::kThreads) {
        cp_async_16(parts + g * batch * kPart + k * 4, src + g * num_splits * kPart + k * 4, true);
      }
    }
    cp_async_commit();
#endif
#endif
  }

  __device__ __forceinline__ void wait(int b) const {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    mbarrier_wait(ready, b & 1);
#else
    cp_async_wait<0>();
    __syncthreads();
#endif
  }

  // A warp per head turns the n splits' maxima and sums into weights.
  __device__ __forceinline__ void weigh(int n) const {
    constexpr int D = Tr::kHeadSize;
    constexpr unsigned kFull = 0xffffffffu;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int g = warp; g < num_q; g += Tr::kWarps) {
      const float* rows = parts + g * batch * kPart;
      float m_new = head_state[g];
      for (int s = lane; s < n; s += 32) m_new = fmaxf(m_new, rows[s * kPart + D]);
#pragma unroll
      for (int mask = 16; mask > 0; mask /= 2) {
        m_new = fmaxf(m_new, __shfl_xor_sync(kFull, m_new, mask));
      }
      float sum = 0.f;
      for (int s = lane; s < n; s += 32) {
        const float w = exp2f(rows[s * kPart + D] - m_new) * rows[s * kPart + D + 1];
        weights[g * batch + s] = w;
        sum += w;
      }
#pragma unroll
      for (int mask = 16; mask > 0; mask /= 2) sum += __shfl_xor_sync(kFull, sum, mask);
      if (lane == 0) {
        const float rescale = exp2f(head_state[g] - m_new);  // 0 on the first batch
        head_state[g] = m_new;
        head_state[Tr::kHeads + g] = head_state[Tr::kHeads + g] * rescale + sum;
        head_state[2 * Tr::kHeads + g] = rescale;
      }
    }
  }
};

// Each thread's four output elements k of the merged rows.
template <typename Tr>
constexpr int kMergeOutPerThread =
    (Tr::kHeads * Tr::kHeadSize / 4 + Tr::kThreads - 1) / Tr::kThreads;

// acc += the weighted partial rows of one batch of n splits (after rescaling
// acc to the batch's max).
template <typename Tr>
__device__ __forceinline__ void accumulate_batch(float4 (&acc)[kMergeOutPerThread<Tr>],
                                                 const SplitBatches<Tr>& sb, int n) {
  constexpr int D = Tr::kHeadSize, kPart = SplitBatches<Tr>::kPart;
#pragma unroll
  for (int k = 0; k < kMergeOutPerThread<Tr>; ++k) {
    const int i = threadIdx.x + k * Tr::kThreads;
    if (i >= sb.num_q * D / 4) break;
    const int g = i / (D / 4), d = i % (D / 4) * 4;
    const float rescale = sb.head_state[2 * Tr::kHeads + g];
    float4 a = make_float4(acc[k].x * rescale, acc[k].y * rescale, acc[k].z * rescale,
                           acc[k].w * rescale);
    const float* w = sb.weights + g * sb.batch;
    const float* rows = sb.parts + g * sb.batch * kPart + d;
#pragma unroll 4
    for (int s = 0; s < n; ++s) {
      const float4 v = *reinterpret_cast<const float4*>(rows + s * kPart);
      a.x += w[s] * v.x;
      a.y += w[s] * v.y;
      a.z += w[s] * v.z;
      a.w += w[s] * v.w;
    }
    acc[k] = a;
  }
}

// Every block of a split launch calls this after writing its partial row; the
// last block of its (sequence, kv_head, group) to arrive merges the row's
// splits into `out`. `smem` is the block's pipeline buffer, idle by then.
// Splits are merged in order, so the result does not depend on which block
// merges.
template <typename Tr, typename query_t>
__device__ __forceinline__ void merge_splits(const PagedAttentionParams& p, unsigned char* smem,
                                             int seq, int head0, int num_q, int used_splits,
                                             query_t* out) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  constexpr int D = Tr::kHeadSize, kPart = SplitBatches<Tr>::kPart;
  if (!last_to_arrive(p, used_splits)) return;
  __shared__ uint64_t parts_ready;
  SplitBatches<Tr> sb;
  sb.head_state = reinterpret_cast<float*>(smem);
  sb.weights = sb.head_state + 3 * Tr::kHeads;
  sb.batch = min(used_splits, (Tr::kBufferBytes / 4 - 4 * Tr::kHeads) / (num_q * (kPart + 1)));
  sb.parts = sb.weights + ((num_q * sb.batch + 3) & ~3);
  sb.part_rows = p.tmp_out + (static_cast<int64_t>(seq) * p.num_heads + head0) * p.num_splits * kPart;
  sb.ready = &parts_ready;
  sb.num_q = num_q;
  sb.used_splits = used_splits;
  sb.num_splits = p.num_splits;

  float4 acc[kMergeOutPerThread<Tr>];
#pragma unroll
  for (int k = 0; k < kMergeOutPerThread<Tr>; ++k) acc[k] = make_float4(0.f, 0.f, 0.f, 0.f);
  if (threadIdx.x < Tr::kHeads) {
    sb.head_state[threadIdx.x] = -INFINITY;
    sb.head_state[Tr::kHeads + threadIdx.x] = 0.f;
  }
  sb.copy(0);
  __syncthreads();  // the mbarrier's initialisation, before anyone waits on it
  for (int b = 0, s0 = 0; s0 < used_splits; ++b, s0 += sb.batch) {
    if (b > 0) {
      __syncthreads();  // every thread is done with the previous batch
      sb.copy(s0);
    }
    sb.wait(b);
    const int n = min(sb.batch, used_splits - s0);
    sb.weigh(n);
    __syncthreads();
    accumulate_batch<Tr>(acc, sb, n);
  }
#pragma unroll
  for (int k = 0; k < kMergeOutPerThread<Tr>; ++k) {
    const int i = threadIdx.x + k * Tr::kThreads;
    if (i >= num_q * D / 4) break;
    const int g = i / (D / 4), d = i % (D / 4) * 4;
    const int e = head_elem<D>(p, head0 + g, d);
    if (e < 0) continue;  // the other head's half of a paired row
    const float scale = 1.f / sb.head_state[Tr::kHeads + g];
    query_t* o = out + (head0 + g) * p.out_head_stride + e;
    o[0] = Convert<query_t>::from_float(acc[k].x * scale);
    o[1] = Convert<query_t>::from_float(acc[k].y * scale);
    o[2] = Convert<query_t>::from_float(acc[k].z * scale);
    o[3] = Convert<query_t>::from_float(acc[k].w * scale);
  }
#endif
}

}  // namespace mini_paged_attn::cuda
