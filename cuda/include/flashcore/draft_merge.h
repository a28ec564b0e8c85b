// Host-side interface of the speculative-verify draft kernel (no torch headers).
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

namespace flashcore {

// Each draft token's attention over its request's draft tokens (those its mask row allows),
// folded into the context part's (O, LSE) as one more softmax term: a verify step's second half
// in one launch. Row r = b * num_draft + i of request b's draft token i.
struct DraftMergeParams {
  const void* q;        // [rows, Hq, D] (T)
  const void* k;        // [rows, Hkv, D] (T), token and head strides below
  const void* v;
  const bool* mask;     // [batch, num_draft, num_draft]: token i sees draft token j
  const void* out_ctx;  // [rows, Hq, D] (T), the context part, normalised
  const float* lse_ctx; // [rows, Hq], natural log; -inf: no context key
  void* out;            // [rows, Hq, D] (T)
  float* lse;           // [rows, Hq]
  int64_t q_stride_tok, q_stride_head, kv_stride_tok, kv_stride_head;
  int batch, num_draft, num_q_heads, num_kv_heads, head_dim;
  float scale;   // softmax scale
  float softcap; // logit soft-cap (cap * tanh(s / cap) of the scaled score); 0: none
};

// Draft tokens per request the kernel takes (its scores stay in shared memory, one row a warp).
constexpr int kDraftMergeMaxDraft = 1024;

// dtype: 0 = fp16, 1 = bf16. Returns a CUDA error code (cudaSuccess when launched).
cudaError_t draft_merge_launch(const DraftMergeParams& p, int dtype, cudaStream_t stream);

}  // namespace flashcore
