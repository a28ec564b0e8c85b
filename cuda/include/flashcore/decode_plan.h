// Host-side interface of the page-table decode planner (no torch headers).
//
// The planner turns SGLang's page table (req_to_token, req_pool_indices, seq_lens) straight
// into the decode kernel's work list on the GPU, in a few fixed-grid launches with no host
// sync, so it runs every step and before every CUDA-graph replay at a few microseconds of
// host time. Layout of the plan:
//
// * chunk i = (request b, positions [c*C, min(len_b, (c+1)*C))) for every request, numbered
//   request-major: request b owns chunks chunk_base[b] .. chunk_base[b+1]. Chunk i's partial
//   result is partial i, so request b's partials are merged in position order.
// * chunks of different requests that cover the same positions with the same KV slots form
//   one work item (found by hashing (last slot, end position), then checked slot by slot):
//   its K/V is loaded once and multiplied against every reader's query rows. The radix
//   cache guarantees that the same slot at the same position holds the same token.
// * a task = (work item, 32-row group of readers x GQA group): the decode kernel's grid loops
//   over tasks, whose count stays in device memory. The tail split (TablePlanArgs) cuts some
//   one-reader items into several tasks, each with a partial of its own: partials are then
//   numbered by chunk_partial (chunk i owns chunk_partial[i] .. chunk_partial[i + 1]), still in
//   request, position order.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "flashcore/heuristics.h"

namespace flashcore {

// Device-side counters of a plan (int32 slots at the start of the int workspace).
enum TablePlanMeta : int {
  kMetaChunkTokens = 0,  // C, chosen on the device
  kMetaChunks = 1,       // P: chunks = partial results
  kMetaWorkItems = 2,    // W
  kMetaTasks = 3,        // T
  kMetaTokens = 4,       // tokens requested (sum of clamped lengths)
  kMetaUniqueTokens = 5, // tokens of all work items (each loaded once per KV head)
  kMetaClamped = 6,      // requests whose length or pool row was out of range (clamped)
  kMetaHashSize = 7,     // the hash table's size for this plan (a power of two)
  kMetaCount = 8,
};

// Where each array of a plan lives, carved out of one int32 workspace and one int64 hash table.
struct TablePlanBuffers {
  int max_batch, max_chunks, hash_size;  // capacities (hash_size: a power of two >= 2 * max_chunks)
  int* meta;                 // [kMetaCount]
  int* chunk_base;           // [max_batch + 1]
  int* chunk_request;        // [max_chunks] b of chunk i
  int* chunk_hash_slot;      // [max_chunks]
  int* chunk_leader;         // [max_chunks] the chunk whose K/V this chunk reads (itself if it leads)
  int* chunk_readers;        // [max_chunks] for a leader: how many chunks read it
  int* chunk_work;           // [max_chunks] for a leader: its work item
  int* hash_min_chunk;       // [hash_size]
  int* work_row;             // [max_chunks] req_to_token row of the leader
  int* work_pos0;            // [max_chunks] first position
  int* work_ntok;            // [max_chunks] tokens
  int* work_reader_offsets;  // [max_chunks + 1]
  int* work_fill;            // [max_chunks] placement cursor
  int* work_readers;         // [max_chunks] request of each reader
  int* work_partials;        // [max_chunks] partial (= chunk) of each reader
  int* tasks;                // [2 * table_plan_task_capacity] (work item, first row)
  int* chunk_partial;        // [max_chunks + 1] first partial of chunk i (a split chunk has several)
  unsigned long long* hash_keys;  // [hash_size]
};

// Ints a workspace for these capacities needs (carve_table_plan lays them out).
int64_t table_plan_ints(int max_batch, int max_chunks);
int table_plan_hash_size(int max_chunks);
int table_plan_task_capacity(int max_chunks);  // kDecodeTasksPerChunk x chunks + the tail split's
TablePlanBuffers carve_table_plan(int* ints, unsigned long long* hash_keys, int max_batch, int max_chunks);

struct TablePlanArgs {
  const void* req_to_token;  // [rows, row_stride] int32 or int64 slots
  const void* req_pool_indices;  // [B] int32 or int64
  const void* seq_lens;          // [B] int32 or int64
  bool r2t_64, idx_64, lens_64;  // element width of each
  int64_t r2t_rows, r2t_stride, max_context;  // max_context = columns of req_to_token
  int batch;
  int group;         // query heads per KV head (sizes the tasks)
  int rows_per_task; // query rows of one task (kDecodeRowsPerCta)
  int fixed_chunk;   // > 0: use this C; 0: choose from the lengths
  bool share;        // group identical chunks of different requests into one work item; off, every
                     // chunk is its own (a request's arithmetic then never depends on its batch)
  int min_chunk, max_auto_chunk;  // bounds of the automatic choice
  int64_t target_items;           // work items x KV heads the automatic choice aims for
  // Tail split: with more than one wave of tasks (resident_ctas / num_kv_heads of them run at
  // once, at most kDecodeSplitMaxItems), the last one-reader items, up to a wave of them, are cut
  // into split_parts tasks at the end of the task list, as long as all tasks fit grid_work CTAs a
  // KV head (one task each, so the hardware starts them in list order and the short ones fill
  // the last wave).
  int num_kv_heads, resident_ctas, grid_work;
  int split_parts;  // 1: no split; at most kDecodeSplitMaxParts
  // Wave-filling chunk (automatic choice only; 0: off). Without sharing (no two requests with one
  // first slot) and where the tail split never cuts (a wave of more than kDecodeSplitMaxItems
  // tasks: 12 or fewer KV heads), a batch of at most kWaveMaxWaves waves of (chunk, KV head) tasks takes the
  // longest chunk of at most wave_max_chunk tokens, ceil(longest / n) for n = 1, 2, ..., whose
  // tasks leave the last wave of resident_ctas at least kWaveFillNum / kWaveFillDen full, and
  // no shorter than half the power-of-two choice. Why: a last wave on a part of the GPU costs up
  // to 10% with 8 KV heads, and a task's start-up argues against simply shorter chunks
  // (docs/performance.md).
  int wave_max_chunk;
};

cudaError_t table_plan_launch(const TablePlanArgs& a, const TablePlanBuffers& buf, int num_sms,
                              cudaStream_t stream);

}  // namespace flashcore
