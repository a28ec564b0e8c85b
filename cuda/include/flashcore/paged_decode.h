// Host-side interface of the paged CSR decode kernel (no torch headers).
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

namespace flashcore {

// Limits the launcher relies on; the Python side checks them before calling.
constexpr int kDecodeMaxChunkTokens = 1024;  // tokens of one work item
constexpr int kDecodeRowsPerCta = 64;        // query rows (readers x GQA group) per CTA

struct PagedDecodeParams {
  // q [B, Hq, D]; k/v pools addressed as base + page*kv_stride_page + head*kv_stride_head
  // + slot_in_page*kv_stride_tok (elements), covering SGLang's [slots, Hkv, D] and the
  // head-major [pages, Hkv, page_size, D] layouts.
  const void* q;
  const void* k;
  const void* v;
  int64_t q_stride_b, q_stride_h;
  int64_t kv_stride_page, kv_stride_head, kv_stride_tok;
  int num_q_heads, num_kv_heads, group;
  float scale_log2;  // softmax scale * log2(e)

  // The SharingPlan (see sglang_flashcore/layout.py), int32.
  const int* work_entry_offsets;   // [W+1]
  const int* work_reader_offsets;  // [W+1]
  const int* work_readers;         // [P]
  const int* entry_pages;          // [U]
  const int* entry_offsets;        // [U]
  const int* entry_token_offsets;  // [U+1]
  const int* merge_offsets;        // [B+1]
  const int* merge_partials;       // [P]
  int num_work, batch;
  // CUDA-graph mode: the work-item count lives in device memory (set before each replay) and a
  // fixed grid of grid_work CTAs loops over the items. Null for an ordinary launch.
  const int* num_work_dev;
  int grid_work;
  int max_rows;  // largest readers x GQA group of a work item: sizes the grid and the Q buffer

  float* partial_o;    // [P, Hq, D]
  float* partial_lse;  // [P, Hq], natural log
  void* out;           // [B, Hq, D]
  float* lse;          // [B, Hq]
  int64_t out_stride_b, out_stride_h;
};

// dtype: 0 = fp16, 1 = bf16. Returns a CUDA error code (cudaSuccess when launched).
cudaError_t paged_decode_launch(const PagedDecodeParams& p, int dtype, int head_dim, cudaStream_t stream);

}  // namespace flashcore
