// Host-side interface of the dense Hopper forward kernel (no torch headers).
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

namespace flashcore {

// Ragged (varlen) attention: q [total_q, Hq, D], k/v [total_k, Hkv, D], rows of sequence b at
// cu_seqlens[b] .. cu_seqlens[b+1]. Strides in elements; the last dim is contiguous.
struct DenseFwdArgs {
  const void* q;
  const void* k;
  const void* v;
  void* out;    // [total_q, Hq, D], like q
  float* lse;   // [total_q, Hq]
  const int* cu_seqlens_q;
  const int* cu_seqlens_k;
  int64_t total_q, total_k;
  int64_t q_stride_row, q_stride_head;
  int64_t k_stride_row, k_stride_head;
  int64_t v_stride_row, v_stride_head;
  int64_t out_stride_row, out_stride_head;
  int batch, num_q_heads, num_kv_heads, max_seqlen_q;
  float softmax_scale;
  bool causal;  // aligned bottom-right: query i of Sq sees keys j <= i + Sk - Sq
  // causal: launch the query blocks with the most key tiles first, so the light ones fill the
  // tail of the grid instead of the heavy ones
  bool heavy_first;
};

// dtype: 0 = fp16, 1 = bf16. Returns a CUDA error code (cudaSuccess when launched).
cudaError_t dense_fwd_launch(const DenseFwdArgs& a, int dtype, int head_dim, cudaStream_t stream);

}  // namespace flashcore
