// The dense forward kernel's launch parameters and its shapes: tile sizes, the CTA's
// warpgroups and registers, and the shared-memory layout (see dense_fwd.cu for the design).
#pragma once

#include <stdint.h>

namespace flashcore {
namespace dense {

constexpr int kBlockN = 128;    // keys per K/V tile
constexpr int kStages = 2;      // stages of the K and V rings
constexpr int kRowBytes = 128;  // one 64-column block row in the 128-byte swizzle

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
  // O staging for the epilogue: each consumer warp's 16 rows as D / 64 boxes of 16 x 128 bytes
  // in the 128-byte swizzle, whose pattern repeats every 1024 bytes (the staging area starts on
  // one). The area is sized at 16 rows of D * 2 + 16 bytes a warp, more than the boxes use.
  static constexpr int kStageRow = D * 2 + 16;
  static constexpr int kStageSwizzledWarp = 16 * D * 2;
  static constexpr int kStage = (kTileSlots + 2 * kTileSlotBytes + 1023) / 1024 * 1024;
  static constexpr int kBytes = kStage + (kBlockM / 16) * 16 * kStageRow + 1024;  // + alignment slack
};

// What the kernel reads besides its tensor maps (filled field by field in dense_fwd.cu's launch).
struct DenseFwdParams {
  void* out;
  float* lse;
  const int* cu_q;
  const int* cu_k;
  int64_t out_stride_row, out_stride_head;
  int num_q_heads, group;
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
