// The dense kernel's epilogue: a consumer warp's 16 rows of normalised O and their LSE.
//
// O is staged in shared memory and leaves by TMA tensor store while the warp starts its next
// tile; rows at a request's end, which a box would overrun (a box clips only at the tensor's
// end, and the rows past a request are the next one's), leave by the warp's own 16-byte stores.
// The LSE (natural log) is written per row. Columns past the tensors' head dim (a smaller one
// served by this kernel) are staged but never written: the tensor map clips them, and so do the
// warp's stores.
#pragma once

#include <cuda.h>
#include <stdint.h>

#include "flashcore/dense/params.h"
#include "flashcore/dense/tile_scheduler.cuh"
#include "flashcore/hopper.cuh"
#include "flashcore/mma.cuh"

namespace flashcore {
namespace dense {

using namespace hopper;

// Rows of this warp (warp of consumer c): O times inv into out (through the tensor map ``to``
// or by 16-byte stores), then the LSE of rows inside the request. rows: this thread's two rows
// in the sequence.
template <typename T, int D, int W>
__device__ __forceinline__ void store_o_lse(const float (&o)[D / 2], const float (&inv)[2], const float (&lse)[2],
                                            const int (&rows)[2], const DenseFwdParams& p, const WorkTile& t,
                                            unsigned char* smem, const CUtensorMap* to, int c, int warp, int lane) {
  constexpr int kBlockM = DenseShape<W>::kBlockM;
  using S = DenseSmem<D, kBlockM>;
  T* out_rows = reinterpret_cast<T*>(p.out) + (int64_t)t.q0 * p.out_stride_row + (int64_t)t.hq * p.out_stride_head;
  const int warp_row0 = t.m_block * kBlockM + c * 64 + warp * 16;  // this warp's first row
  // The warp's 16 rows as boxes of 16 x 128 bytes (64 columns) in the 128-byte swizzle (16-byte
  // piece k of row r at piece k ^ (r % 8): the accumulator layout's 4-byte writes hit 32 banks),
  // kStageBoxes of them at a time (all of D but at 256). Rows all inside the request: one TMA
  // store a box, and the warp goes on (to its next boxes, or tile) while the copy engine writes
  // them; a request's last rows are written here.
  constexpr int kBox = 16 * 128;
  constexpr int kStageBoxes = S::kStageBoxes;
  const uint32_t stage = smem_addr(smem + S::kStage) + (c * 4 + warp) * S::kStageSwizzledWarp;
#pragma unroll
  for (int box0 = 0; box0 < D / 64; box0 += kStageBoxes) {
    if (lane == 0) tma_store_wait_read();  // the warp's previous boxes have left the slice
    __syncwarp();
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = lane / 4 + 8 * r;
#pragma unroll
      for (int j = box0 * 8; j < (box0 + kStageBoxes) * 8; ++j)
        st_shared_u32(stage + (j / 8 - box0) * kBox + row * 128 + (((j % 8) ^ (row % 8)) * 16) + (lane % 4) * 4,
                      Pack2<T>::from_floats(o[4 * j + 2 * r] * inv[r], o[4 * j + 2 * r + 1] * inv[r]));
    }
    if (warp_row0 + 16 <= t.sq) {
      fence_async_shared();
      __syncwarp();
      if (lane == 0) {
#pragma unroll
        for (int box = 0; box < kStageBoxes; ++box)
          tma_store_3d(to, smem + S::kStage + (c * 4 + warp) * S::kStageSwizzledWarp + box * kBox, (box0 + box) * 64,
                       t.hq, t.q0 + warp_row0);
        tma_store_commit();
      }
    } else {
      __syncwarp();
      constexpr int kPieces = kStageBoxes * 8;  // 16-byte pieces of a row's staged columns
      constexpr int kRowsPerStore = 32 / kPieces;
      const int row = lane / kPieces, piece = lane % kPieces;
      T* dst = out_rows + (int64_t)(warp_row0 + row) * p.out_stride_row + box0 * 64 + piece * 8;
#pragma unroll
      for (int it = 0; it < 16 / kRowsPerStore; ++it) {
        const int rr = row + it * kRowsPerStore;
        const uint4 v = ld_shared_v4(stage + (piece / 8) * kBox + rr * 128 + (((piece % 8) ^ (rr % 8)) * 16));
        if (warp_row0 + rr < t.sq && box0 * 64 + piece * 8 < p.head_dim)
          *reinterpret_cast<uint4*>(dst + (int64_t)it * kRowsPerStore * p.out_stride_row) = v;
      }
      __syncwarp();
    }
  }
  // the LSE after O: a global store before the async-proxy fence would make it wait
#pragma unroll
  for (int r = 0; r < 2; ++r)
    if (rows[r] < t.sq && lane % 4 == 0) p.lse[(int64_t)(t.q0 + rows[r]) * p.num_q_heads + t.hq] = lse[r];
}

// Before the CTA exits: shared memory outlives the warp's TMA stores' reads of it.
__device__ __forceinline__ void epilogue_drain(int lane) {
  if (lane == 0) tma_store_wait_read();
}

}  // namespace dense
}  // namespace flashcore
