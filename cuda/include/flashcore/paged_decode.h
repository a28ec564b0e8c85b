// Host-side interface of the paged decode kernel (no torch headers).
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "flashcore/heuristics.h"

namespace flashcore {

// In a split task's ~(first row) (PagedDecodeParams::chunk_partial): a guided part.
constexpr int kDecodeSplitGuidedBit = 1 << 16;

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
  // q's head dim: the kernel's (paged_decode_launch's head_dim), or less (heuristics.h's
  // kernel_head_dim_for): the columns past it load as zeros, and O's are not stored. The
  // partials keep the kernel's head dim.
  int head_dim;
  float scale_log2;  // softmax scale * K's dequantization scale (FP8 pools) * log2(e)
  float v_scale;     // V's dequantization scale (FP8 pools; 1 for 16-bit pools)
  // Logit soft-cap (SGLang's layer.logit_cap): a score's log2-domain value becomes
  // softcap_log2 * tanh(raw * softcap_in), softcap_log2 = cap * log2(e), softcap_in = scale_log2 /
  // softcap_log2 (set at launch, after the FP8 widening's factor joins scale_log2); 0: none
  float softcap_log2 = 0.f, softcap_in = 0.f;

  // The plan (the page-table planner of decode_plan.h), int32: work item w reads positions
  // work_pos0[w] + [0, work_ntok[w]) of req_to_token row work_row[w]; its readers are
  // work_readers[work_reader_offsets[w] ...]; reader r writes partial
  // chunk_partial[work_partials[r]] (work_partials: the reader's chunk); the grid loops over
  // *num_tasks_dev (work item, first row) tasks. merge_offsets = chunk_base: request b's chunks.
  const int* work_reader_offsets;  // [W+1]
  const int* work_readers;         // [P]
  const int* merge_offsets;        // [B+1]
  int batch;
  int grid_work;  // CTAs per KV head of the fixed grid that loops over the tasks
  int max_rows;   // largest readers x GQA group of a task: sizes the Q buffer

  const int* req_to_token;  // int32 slots
  int64_t r2t_stride;
  const int* work_row;
  const int* work_pos0;
  const int* work_ntok;
  const int* work_partials;
  const int* tasks;  // [2T]
  const int* num_tasks_dev;
  // chunk i's first partial (its parts are chunk_partial[i] .. chunk_partial[i + 1]); request b
  // merges partials chunk_partial[merge_offsets[b]] .. chunk_partial[merge_offsets[b + 1]].
  // A task (w, first row) with first row < 0 is part s of n of one-reader item w: ~first row
  // = s << 8 | n, tiles [s * tiles / n, (s + 1) * tiles / n) of the item's 64-token tiles; with
  // kDecodeSplitGuidedBit set, part 0 is the first tiles - q tiles (q = ceil(tiles / 4)) and
  // parts 1..n-1 cut the last q evenly (n = 2: part 1 is the last q tiles).
  const int* chunk_partial;
  int64_t num_slots;  // slots are clamped into the pool: a corrupt table cannot read out of bounds
  int page_size;      // slot -> (page, offset) for head-major pools
  bool slots_linear;  // SGLang's [slots, Hkv, D] pool: element offset = slot * kv_stride_tok
  // SGLang's pool: the copy loop's short address path (paged_decode.cu,
  // load_tile); false keeps the general slot -> (page, offset) path (head-major pools, or rows
  // whose bytes exceed 32 bits).
  bool linear_rows;

  int merge_groups;  // the merge kernel's lane groups a block: 16 (few requests) or 4 (many)
  float* partial_o;    // [P, Hq, kernel head dim]
  float* partial_lse;  // [P, Hq], natural log
  void* out;           // [B, Hq, D]
  float* lse;          // [B, Hq]
  int64_t out_stride_b, out_stride_h;
};

// The K/V pool's element type (paged_decode_launch's kv_dtype).
constexpr int kDecodeKvSameAsQuery = 0;
constexpr int kDecodeKvFp8E4m3 = 1;
constexpr int kDecodeKvFp8E5m2 = 2;

// dtype (q and out): 0 = fp16, 1 = bf16; kv_dtype: one of the codes above. Returns a CUDA error
// code (cudaSuccess when launched).
cudaError_t paged_decode_launch(const PagedDecodeParams& p, int dtype, int kv_dtype, int head_dim,
                                cudaStream_t stream);

}  // namespace flashcore
