// Host-side interface of the GPU layout builders (no torch headers): ``from_sglang`` and
// ``plan_sharing`` of sglang_flashcore/layout.py, computed on the device with the same results,
// bit for bit. The torch versions take about a hundred small ops and several host syncs a step;
// these take a few launches (one for a plan of up to 2048 runs) and one sync each, for the
// output sizes.
#pragma once

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

namespace flashcore {

// ---- from_sglang: SGLang's page table -> the CSR of page runs.
//
// A run is a maximal stretch of a request's consecutive positions whose slots are consecutive
// inside one page. Tokens are cut into tiles of kCsrTileTokens per (request, tile); pass 1
// counts each tile's run starts, a scan gives each tile its first entry, pass 2 writes the runs.
constexpr int kCsrThreads = 256;
constexpr int kCsrTokensPerThread = 8;
constexpr int kCsrTileTokens = kCsrThreads * kCsrTokensPerThread;

struct CsrFromTableArgs {
  const void* req_to_token;  // [rows, max_context] int32 or int64 slots
  bool r2t_64;
  int64_t r2t_rows, r2t_stride, max_context;
  const void* req_pool_indices;  // [B]
  bool idx_64;
  const void* seq_lens;  // [B]
  bool lens_64;
  int batch, page_size;
  int tiles_per_row;  // ceil(max_context / kCsrTileTokens), at least 1
  bool want_range;    // also find the smallest and largest slot (for validation: two more launches)
};

// Device scratch of pass 1: tile_counts and tile_offsets [batch * tiles_per_row + 1] ints (the
// runs: tile_offsets' last), scalars [3] int64 (with want_range: runs, smallest slot, largest
// slot), and cub's temporary storage.
struct CsrCountBuffers {
  int* tile_counts;
  int* tile_offsets;
  long long* scalars;
  void* temp;
  size_t temp_bytes;
};
size_t csr_count_temp_bytes(int64_t tiles);
cudaError_t csr_count_launch(const CsrFromTableArgs& a, const CsrCountBuffers& buf, cudaStream_t stream);

// Pass 2, once the host knows the number of runs (scalars[0]); int32 outputs.
struct CsrOutputs {
  int* row_offsets;   // [B+1]
  int* cols;          // [nnz] page of each run
  int* page_offsets;  // [nnz] first slot of the run inside its page
  int* counts;        // [nnz]
  int* positions;     // [nnz] position of the run's first token
  int* seq_lens;      // [B] tokens of each request (clamped as read)
  int* staging_ids;   // [nnz] all -1 (every page of SGLang's pool is resident)
};
cudaError_t csr_write_launch(const CsrFromTableArgs& a, const int* tile_offsets, int64_t nnz, const CsrOutputs& out,
                             cudaStream_t stream);

// ---- plan_sharing: the transpose (unique run -> readers) and the decode work list.
//
// A unique run is keyed by (first slot, position, count), packed into 64 bits as slot << 32 |
// position << 11 | count (the caller checks they fit). The key sort groups each run's readers;
// everything else is scans over the runs in order of first appearance (the work order).
struct SharingPlanArgs {
  const int* row_offsets;  // [B+1]
  const int* cols;
  const int* page_offsets;
  const int* counts;
  const int* positions;  // [nnz] each
  int batch, nnz, page_size;
  int runs_per_item;  // max(1, chunk_tokens / page_size)
  int key_end_bit;    // bits of the packed key that can be set (fewer radix passes)
};

// Outputs with room for every run (nnz) or partial (nnz); scalars[4] int64 receives U (unique
// runs), W (work items), P (partials) and the largest reader set. The host narrows each array.
struct SharingPlanOutputs {
  int* entry_pages;          // [U]
  int* entry_offsets;        // [U]
  int* entry_counts;         // [U]
  int* entry_token_offsets;  // [U+1]
  int* reader_offsets;       // [U+1]
  int* readers;              // [nnz]
  int* work_entry_offsets;   // [W+1]
  int* work_reader_offsets;  // [W+1]
  int* work_readers;         // [P]
  int* merge_offsets;        // [B+1]
  int* merge_partials;       // [P]
  long long* scalars;        // [4]
};

// Device scratch: sharing_plan_workspace_bytes(nnz, key_end_bit) bytes, 16-byte aligned.
size_t sharing_plan_workspace_bytes(int nnz, int key_end_bit);
cudaError_t sharing_plan_launch(const SharingPlanArgs& a, void* workspace, size_t workspace_bytes,
                                const SharingPlanOutputs& out, cudaStream_t stream);

}  // namespace flashcore
