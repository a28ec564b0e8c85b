// Speculative verify, the draft tokens' part: each draft token attends to the draft tokens of its
// request that its mask row allows, and that softmax is folded into the context part's normalised
// (O, LSE), which the decode kernel left, as one more term. One launch instead of the dozen small
// torch kernels of the float32 path (sglang_flashcore/speculative.py: draft_attention and the LSE
// merge), which stays the CPU path and the reference this kernel is tested against.
//
// One block per (draft token, KV head); each warp takes query heads of the GQA group in turn. A
// lane holds D / 32 consecutive columns (D the kernel's head dim; lanes past a smaller head dim,
// heuristics.h's kernel_head_dim_for, hold a zero query and write nothing): a score is a
// warp-wide dot product (five xor shuffles), the warp's scores of a row wait in shared memory,
// and the row is normalised in float32:
//   m = max(lse_ctx, scores), w_ctx = e^(lse_ctx - m), w_j = e^(s_j - m), l = w_ctx + sum w_j,
//   O = (w_ctx O_ctx + sum w_j V_j) / l, LSE = m + ln l.
// NaN semantics as elsewhere: a NaN or +inf score or context LSE makes the row NaN (the max
// propagates NaN, and e^(inf - inf) is NaN); a row that sees nothing gets zeros and -inf.
#include <float.h>
#include <math.h>

#include "flashcore/draft_merge.h"
#include "flashcore/heuristics.h"
#include "flashcore/mma.cuh"

namespace flashcore {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) x += __shfl_xor_sync(0xffffffff, x, off);
  return x;
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) draft_merge_kernel(const DraftMergeParams p) {
  constexpr int kCols = D / 32;  // columns per lane
  extern __shared__ float scores_smem[];
  const int row = blockIdx.x, h = blockIdx.y;
  const int b = row / p.num_draft, i = row % p.num_draft;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = p.num_q_heads / p.num_kv_heads;
  // Lanes past the head dim (kCols divides 16, and so the head dim) read column 0 instead, so the
  // loops below need no guard: their query is zero, which adds nothing to a score, and their
  // columns of O are never written.
  const bool live = lane * kCols < p.head_dim;
  const int col0 = live ? lane * kCols : 0;
  float* sc = scores_smem + warp * p.num_draft;
  const bool* sees = p.mask + ((int64_t)b * p.num_draft + i) * p.num_draft;
  const int64_t first = (int64_t)b * p.num_draft;  // the request's first draft token
  const T* k_head = reinterpret_cast<const T*>(p.k) + first * p.kv_stride_tok + (int64_t)h * p.kv_stride_head + col0;
  const T* v_head = reinterpret_cast<const T*>(p.v) + first * p.kv_stride_tok + (int64_t)h * p.kv_stride_head + col0;

  for (int g = warp; g < group; g += kWarps) {
    const int qh = h * group + g;
    const T* q = reinterpret_cast<const T*>(p.q) + row * p.q_stride_tok + (int64_t)qh * p.q_stride_head + col0;
    float qv[kCols];
#pragma unroll
    for (int c = 0; c < kCols; ++c) qv[c] = live ? Pack2<T>::to_float(q[c]) : 0.f;
    const float lse_ctx = p.lse_ctx[(int64_t)row * p.num_q_heads + qh];
    float m = lse_ctx;
    for (int j = 0; j < p.num_draft; ++j) {
      float s = -INFINITY;
      if (sees[j]) {  // (the same for every lane: no divergence)
        const T* kj = k_head + (int64_t)j * p.kv_stride_tok;
        float dot = 0.f;
#pragma unroll
        for (int c = 0; c < kCols; ++c) dot += qv[c] * Pack2<T>::to_float(kj[c]);
        s = warp_sum(dot) * p.scale;
        if (p.softcap > 0.f) s = p.softcap * tanhf(s / p.softcap);
        m = nan_max(m, s);
      }
      if (lane == 0) sc[j] = s;
    }
    __syncwarp();
    float acc[kCols];
    float l = 0.f;
    if (m == -INFINITY) {  // nothing seen (not even the token itself)
#pragma unroll
      for (int c = 0; c < kCols; ++c) acc[c] = 0.f;
    } else {
      const float w_ctx = expf(lse_ctx - m);
      const T* o_ctx = reinterpret_cast<const T*>(p.out_ctx) + ((int64_t)row * p.num_q_heads + qh) * p.head_dim + col0;
#pragma unroll
      for (int c = 0; c < kCols; ++c) acc[c] = w_ctx == 0.f ? 0.f : w_ctx * Pack2<T>::to_float(o_ctx[c]);
      l = w_ctx;
      for (int j = 0; j < p.num_draft; ++j) {
        if (!sees[j]) continue;
        const float w = expf(sc[j] - m);
        const T* vj = v_head + (int64_t)j * p.kv_stride_tok;
        l += w;
#pragma unroll
        for (int c = 0; c < kCols; ++c) acc[c] += w * Pack2<T>::to_float(vj[c]);
      }
    }
    const float inv = l != 0.f ? 1.f / l : 0.f;  // (a NaN sum stays NaN)
    T* out = reinterpret_cast<T*>(p.out) + ((int64_t)row * p.num_q_heads + qh) * p.head_dim + col0;
#pragma unroll
    for (int c = 0; c < kCols; ++c)
      if (live) out[c] = Pack2<T>::from_float(acc[c] * inv);
    if (lane == 0) p.lse[(int64_t)row * p.num_q_heads + qh] = l != 0.f ? m + logf(l) : -INFINITY;
    __syncwarp();  // sc is rewritten for the warp's next head
  }
}

template <typename T>
cudaError_t launch(const DraftMergeParams& p, cudaStream_t stream) {
  const int rows = p.batch * p.num_draft;
  if (rows == 0) return cudaSuccess;
  const dim3 grid(rows, p.num_kv_heads);
  const size_t smem = (size_t)kWarps * p.num_draft * sizeof(float);
  switch (kernel_head_dim_for(p.head_dim)) {
    case 64: draft_merge_kernel<T, 64><<<grid, kThreads, smem, stream>>>(p); break;
    case 128: draft_merge_kernel<T, 128><<<grid, kThreads, smem, stream>>>(p); break;
    case 256: draft_merge_kernel<T, 256><<<grid, kThreads, smem, stream>>>(p); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t draft_merge_launch(const DraftMergeParams& p, int dtype, cudaStream_t stream) {
  if (dtype == 0) return launch<__half>(p, stream);
  if (dtype == 1) return launch<__nv_bfloat16>(p, stream);
  return cudaErrorInvalidValue;
}

}  // namespace flashcore
