// The dense forward kernel's launch parameters and its shapes: tile sizes, the CTA's
// warpgroups and registers, and the shared-memory layout (see dense_fwd.cu for the design).
#pragma once

#include <stdint.h>

namespace flashcore {
namespace dense {

constexpr int kStages = 2;      // stages of the K and V rings
constexpr int kRowBytes = 128;  // one 64-column block row in the 128-byte swizzle

// Keys per K/V tile: 128, but 64 at head dim 256, where two 2-stage rings of 128-key tiles (256
// KiB) would not fit shared memory and a 128-key score tile beside O's 128 accumulators would not
// fit a consumer's registers (FA3 picks 80 there; a power of two keeps the 128-byte swizzle's
// boxes whole and every page size's box a divisor of the tile).
template <int D>
constexpr int kBlockNFor = D == 256 ? 64 : 128;

// W consumer warpgroups of 64 query rows each: the CTA's threads and its work tile's rows
template <int W>
struct DenseShape {
  static constexpr int kBlockM = 64 * W;  // query rows of a work tile
  static constexpr int kThreads = 128 * (W + 1);
  static constexpr int kConsumerThreads = 128 * W;
  // registers per thread after setmaxnreg: the producer gives its share to the consumers (the
  // CTA's 64K registers: 128 x 40 + 256 x 232 and 128 x 32 + 384 x 160)
  static constexpr int kProducerRegs = W == 2 ? 40 : 32;
  static constexpr int kConsumerRegs = W == 2 ? 232 : 160;
  static_assert(W == 2 || W == 3, "two or three consumer warpgroups");
  // the pool setmaxnreg redistributes is what the launch gave the CTA: 65536 / kThreads rounded
  // down to 8, times kThreads (64,512 at 384 threads); a consumer's setmaxnreg.inc past it waits
  // forever
  static_assert(128 * kProducerRegs + 128 * W * kConsumerRegs <= 65536 / kThreads / 8 * 8 * kThreads, "register file");
};

// Shared memory, in bytes from a 1024-byte aligned base: Q, the K ring, the V ring, the
// mbarriers, two decoded work tiles, the O staging of the epilogue.
template <int D, int kBlockM>
struct DenseSmem {
  static constexpr int kBlockN = kBlockNFor<D>;
  static constexpr int kTileBytes = kBlockN * D * 2;  // a K or V tile
  static constexpr int kBlockBytes = kBlockN * kRowBytes;  // one 64-column block of a K or V tile
  static constexpr int kQBytes = kBlockM * D * 2;
  static constexpr int kQBlockBytes = kBlockM * kRowBytes;  // one 64-column block of the Q tile
  static constexpr int kQ = 0;
  static constexpr int kK = kQBytes;
  static constexpr int kV = kK + kStages * kTileBytes;
  static constexpr int kBars = kV + kStages * kTileBytes;
  static constexpr int kTileSlots = kBars + 8 * (4 * kStages + 2);  // two claimed work tiles
  static constexpr int kTileSlotBytes = 64;                           // one decoded WorkTile
  // O staging for the epilogue: each consumer warp's 16 rows as boxes of 16 x 128 bytes (64
  // columns) in the 128-byte swizzle, whose pattern repeats every 1024 bytes (the staging area
  // starts on one). A warp stages up to two boxes at once: all of D at 64 and 128, half of it at
  // a time at 256, where a whole row block would not fit beside the rings.
  static constexpr int kStageBoxes = D / 64 < 2 ? D / 64 : 2;
  static constexpr int kStageSwizzledWarp = kStageBoxes * 16 * 128;
  static constexpr int kStage = (kTileSlots + 2 * kTileSlotBytes + 1023) / 1024 * 1024;
  static constexpr int kBytes = kStage + (kBlockM / 16) * kStageSwizzledWarp + 1024;  // + alignment slack
  static_assert(kBytes <= 227 * 1024, "the CTA's shared memory fits an SM");
};

// What the kernel reads besides its tensor maps (filled field by field in dense_fwd.cu's launch).
struct DenseFwdParams {
  void* out;
  float* lse;
  const int* cu_q;
  const int* cu_k;
  int64_t out_stride_row, out_stride_head;
  int num_q_heads, group;
  int head_dim;  // the tensors' (DenseFwdArgs::head_dim): O's columns past it are not stored
  float scale_log2;
  // causal (aligned bottom-right); the query blocks are then claimed heaviest first
  int causal;
  int window_left;  // causal sliding window (DenseFwdArgs::window_left); -1: none
  // logit soft-cap in raw-score units (the softmax scale stays folded into the exponent):
  // s_raw -> softcap_raw * tanh(s_raw * softcap_in), softcap_raw = cap / scale, softcap_in = scale /
  // cap; softcap_in 0: none
  float softcap_raw, softcap_in;
  int batch, m_blocks, num_work;
  int section_pairs;  // causal CTA order (see make_work_tile)
  // persistent schedule: CTAs claim work tiles past the first gridDim.x from this zeroed counter;
  // nullptr: one work tile per CTA
  int* tile_counter;
  // ragged batches: *num_tiles_dev work tiles, tile_list[i] the i-th to claim; nullptr: all
  // num_work tiles in order, the empty ones skipped by the producer
  const int* tile_list;
  const int* num_tiles_dev;
  const int* grid_order;  // device flag (see tile_scheduler.cuh); nullptr: 0
  // paged prefix: request b's pages are key_pages[key_page_offsets[b] ...]; nullptr: none
  const int* key_pages;
  const int* key_page_offsets;
  int page_size, box_rows;
};

}  // namespace dense
}  // namespace flashcore
