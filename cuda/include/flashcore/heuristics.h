// Every launch, chunk, wave and split policy constant of the kernels, in one place.
//
// Each literal constant stands on its own line as `constexpr int kName = <integer>;` so that a
// CPU test can parse this header with a regular expression and check it against the Python
// mirror (sglang_flashcore/heuristics.py, MIRRORED). Constants derived from others follow the
// literal ones. Host and device code include this header; it needs no CUDA headers.
#pragma once

namespace flashcore {

// ------------------------------------------------------------------------------- decode kernel

// Tokens of one decode work item at most; the decode bindings take page sizes up to this.
constexpr int kDecodeMaxChunkTokens = 1024;

// Tokens per pipeline stage of the decode kernel (one cp.async ring slot); the tail split cuts
// work items between these tiles.
constexpr int kDecodeTileTokens = 64;

// Query rows (readers x GQA group) per decode CTA. 32, not 64: query tiles for 64 rows (16 KB,
// sized at launch from B x group) left room for two CTAs per SM instead of three once
// B x group > 32.
constexpr int kDecodeRowsPerCta = 32;

// Decode CTAs resident per SM (the kernel's launch bounds and shared memory are sized for it);
// the planner's waves are this times the SM count.
constexpr int kDecodeCtasPerSm = 3;

// Query rows of a task that the token-major path takes: the n = 8 side of one mma.m16n8k16.
constexpr int kDecodeNarrowRows = 8;

// Query heads per KV head the decode kernel takes (a reader's rows may span tasks).
constexpr int kDecodeMaxGroup = 64;

// ------------------------------------------------------------------------ decode tail split
// The planner may cut up to kDecodeSplitMaxItems one-reader work items into up to
// kDecodeSplitMaxParts tasks each, with a partial of their own, so that the last wave is made
// of short tasks. Where a wave holds at most kDecodeSplitEvenWave tasks (16 or more KV heads on
// 132 SMs) an item is cut into equal parts, all after the other tasks; with longer waves the
// cut is guided: the item's first three quarters stay in place as one task and its last
// quarter becomes a second task after all the others, so the SMs that finish first take the
// short ones. The workspaces hold the extra tasks and partials.

// One-reader items the tail split may cut in one plan.
constexpr int kDecodeSplitMaxItems = 64;

// The longest wave (tasks of one KV head running at once) that is cut evenly.
constexpr int kDecodeSplitEvenWave = 32;

// Parts of a guided cut: the first three quarters, then the last quarter.
constexpr int kDecodeSplitGuidedParts = 2;

// Parts of an evenly cut item at most.
constexpr int kDecodeSplitMaxParts = 4;

// --------------------------------------------------------------------- wave-filling chunk
// (decode_plan.h, TablePlanArgs::wave_max_chunk)

// Requests the wave-filling move's no-sharing check holds (a shared-memory set of first slots).
constexpr int kWaveMaxBatch = 2048;

// Batches with more waves than this at the power-of-two chunk keep it.
constexpr int kWaveMaxWaves = 12;

// The wave-filling chunk fills the last wave at least kWaveFillNum / kWaveFillDen (85%).
constexpr int kWaveFillNum = 17;

// (the denominator of the fill fraction above)
constexpr int kWaveFillDen = 20;

// Chunk counts n the wave-filling move tries.
constexpr int kWaveCandidates = 256;

// ------------------------------------------------------------------- decode planner launches

// Threads of the planner's single-CTA kernels (block-wide scans over requests and chunks).
constexpr int kDecodePlanThreads = 1024;

// CTAs per SM of the planner's grid kernels (keys, leaders, place).
constexpr int kDecodePlanCtasPerSm = 2;

// -------------------------------------------------------------------------- decode merge

// The merge kernel's lane groups a block with few (request, query head) blocks: each group
// takes every 16th partial, which shortens a block's chain of dependent loads (H200: 3-4%
// faster at 2-4 requests).
constexpr int kDecodeMergeGroupsFew = 16;

// The merge kernel's lane groups a block with many blocks: more blocks stay resident (H200:
// 1-2.5% faster than 16 groups at 32-64 requests).
constexpr int kDecodeMergeGroupsMany = 4;

// "Few" blocks: at most this many (request, query head) blocks per SM.
constexpr int kDecodeMergeFewBlocksPerSm = 4;

// -------------------------------------------------------------------------- dense kernel

// Consumer warpgroups (64 query rows each) at head dim 128: three would not fit their
// accumulators in the register file.
constexpr int kDenseWarpgroupsD128 = 2;

// Consumer warpgroups at head dim 256 (128-row work tiles over 64-key tiles, as FA3's 128 x 80:
// O alone takes 128 accumulators a thread).
constexpr int kDenseWarpgroupsD256 = 2;

// Consumer warpgroups at head dim 64 (192-row work tiles, as in FA3).
constexpr int kDenseWarpgroupsD64 = 3;

// Consumer warpgroups at head dim 64 for short causal batches (128-row tiles: the diagonal's
// masked work grows with the tile's height; 3-4% faster on the H200).
constexpr int kDenseWarpgroupsD64ShortCausal = 2;

// "Short causal": max_seqlen_q at most this many query rows.
constexpr int kDenseShortCausalMaxRows = 1024;

// Causal CTA order: the K/V bytes of one L2 section of (request, query head) pairs, in MiB
// (about half of the H100's 50 MB L2).
constexpr int kDenseL2SectionMiB = 24;

// Ragged batches: the launch selects the work tiles that hold rows first when at least
// kDenseTileListEmptyNum / kDenseTileListEmptyDen of the tiles may be empty (a quarter).
constexpr int kDenseTileListEmptyNum = 1;

// (the denominator of the empty fraction above)
constexpr int kDenseTileListEmptyDen = 4;

// ---------------------------------------------------------------------------------- derived

// The kernels are built for head dims 64, 128 and 256. A multiple of 16 between them (Phi-3's 96,
// 80, 192) runs in the next one up: its columns past the head dim load as zeros (TMA's and
// cp.async's zero fill), add nothing to a score, and are never stored. 0: no kernel serves it.
// (Multiples of 16, not 8: an FP8 row of the head dim must still be whole 16-byte copies.)
constexpr int kernel_head_dim_for(long long d) {
  return d < 64 || d > 256 || d % 16 != 0 ? 0 : d <= 64 ? 64 : d <= 128 ? 128 : 256;
}

// A plan's tasks, sum over work items of ceil(readers x group / kDecodeRowsPerCta), are at
// most chunks x kDecodeTasksPerChunk (readers sum to the chunks; group <= kDecodeMaxGroup).
constexpr int kDecodeTasksPerChunk = kDecodeMaxGroup / kDecodeRowsPerCta + 1;

// Tasks and partials the tail split adds to a plan at most.
constexpr int kDecodeSplitExtra = kDecodeSplitMaxItems * (kDecodeSplitMaxParts - 1);

}  // namespace flashcore
