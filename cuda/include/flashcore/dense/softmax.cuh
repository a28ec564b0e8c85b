// The dense kernel's online softmax: a consumer thread's two query rows (lane / 4 and + 8 of
// its warp's 16) over the key tiles seen so far, in the log2 domain with the scale folded into
// one FFMA per score.
//
// Lazy rescale: a row keeps its exponent base until a tile's max exceeds it by more than
// kRescaleLog2 (then P <= 2^8 and O, l stay exact in fp32), so most tiles skip the rescale of
// O; the final O / l and LSE use the same base, so the result is exact.
#pragma once

#include <float.h>
#include <math.h>

#include "flashcore/dense/params.h"
#include "flashcore/dense/tile_scheduler.cuh"
#include "flashcore/mma.cuh"

namespace flashcore {
namespace dense {

constexpr float kLn2 = 0.6931471805599453f;
constexpr float kRescaleLog2 = 8.f;  // lazy rescale threshold, log2 units (P <= 256)

struct OnlineSoftmax {
  // m: the rows' exponent base in raw-score units (their running max, or a stale max at most
  // kRescaleLog2 below it); l: the thread's share of the running sum of exponentials
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

  // Score tile n of S (this thread's kBlockN / 2 scores of the accumulator layout): the soft-cap, the mask
  // (past the sequence end; causal; left of a sliding window), then the online update.
  // kScoreMods: the kernel serves sliding windows and soft-caps (launch arguments); without it
  // neither costs an instruction or a register. Leaves the exponentials in sc and returns
  // each row's rescale factor for O. first_row: the warpgroup's first query row in the
  // sequence; rows: this thread's two.
  template <bool kScoreMods, int kScores>
  __device__ __forceinline__ void update(float (&sc)[kScores], int n, float (&alpha)[2], const DenseFwdParams& p,
                                         const WorkTile& t, int first_row, const int (&rows)[2], int lane) {
    constexpr int kBlockN = 2 * kScores;
    const bool windowed = kScoreMods && p.window_left >= 0;
    if constexpr (kScoreMods) {
      if (p.softcap_in != 0.f) {  // (a launch-wide branch) the soft-cap, still in raw-score units
#pragma unroll
        for (int i = 0; i < kBlockN / 2; ++i) sc[i] = p.softcap_raw * tanh_fast(sc[i] * p.softcap_in);
      }
    }
    // (a window's left edge: some row of the warpgroup's 64 starts its window inside or past this tile)
    const bool edge = (n + 1) * kBlockN > t.sk || (p.causal && (n + 1) * kBlockN - 1 > first_row + t.diag) ||
                      (windowed && n * kBlockN < first_row + 63 + t.diag - p.window_left);
    // Masking is one compare and select per score against each row's key limit, in its own
    // loop behind one branch: written inside the max loop, ptxas turned it into a branch per
    // score (BSSY/BSYNC pairs in every tile, masked or not), 7-10% slower at D 128.
    if (edge) {
      int limit[2], low[2];  // keys at or past limit are masked (the sequence end, causally row + diag + 1),
                             // and keys before low (a window's first key, row + diag - window_left)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        limit[r] = p.causal ? min(t.sk, rows[r] + t.diag + 1) : t.sk;
        low[r] = windowed ? rows[r] + t.diag - p.window_left : 0;
      }
      const int col0 = n * kBlockN + 2 * (lane % 4);
#pragma unroll
      for (int i = 0; i < kBlockN / 2; ++i) {
        const int col = col0 + (i / 4) * 8 + (i % 2);
        const int r = (i / 2) % 2;
        sc[i] = col < limit[r] && (!windowed || col >= low[r]) ? sc[i] : -INFINITY;
      }
    }
    float mx[2][2] = {{m[0], m[0]}, {m[1], m[1]}};  // two partial maxima per row: shorter chains
#pragma unroll
    for (int i = 0; i < kBlockN / 2; ++i) mx[(i / 2) % 2][i % 2] = fmaxf(mx[(i / 2) % 2][i % 2], sc[i]);
    float base[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float row_max = fmaxf(mx[r][0], mx[r][1]);
      row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffff, row_max, 1));
      row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffff, row_max, 2));
      // lazy: keep the base while this tile's max stays within 2^kRescaleLog2 of it
      const bool keep = m[r] != -INFINITY && (row_max - m[r]) * p.scale_log2 <= kRescaleLog2;
      if (keep) row_max = m[r];
      base[r] = row_max == -INFINITY ? 0.f : row_max * p.scale_log2;  // a row that sees nothing yet stays at 0
      alpha[r] = m[r] == -INFINITY ? 0.f : (keep ? 1.f : exp2_ftz(m[r] * p.scale_log2 - base[r]));
      m[r] = row_max;
      l[r] *= alpha[r];
    }
    float sum[2][2] = {{0.f, 0.f}, {0.f, 0.f}};  // two partial sums per row: shorter add chains
#pragma unroll
    for (int i = 0; i < kBlockN / 2; ++i) {
      const int r = (i / 2) % 2;
      sc[i] = exp2_ftz(fmaf(sc[i], p.scale_log2, -base[r]));
      sum[r][i % 2] += sc[i];
    }
    l[0] += sum[0][0] + sum[0][1];
    l[1] += sum[1][0] + sum[1][1];
  }

  // O's rows times their factors, skipped when no row of the warp moved its base (warp-uniform).
  template <int N>
  __device__ __forceinline__ static void rescale_o(float (&o)[N], const float (&alpha)[2]) {
    if (__any_sync(0xffffffff, alpha[0] != 1.f || alpha[1] != 1.f)) {  // warp-uniform skip
#pragma unroll
      for (int i = 0; i < N; ++i) o[i] *= alpha[(i / 2) % 2];
    }
  }

  // The rows' sums over their quad, 1 / l and the natural-log LSE (-inf for a row that saw no
  // key). One MUFU each for 1 / l and log2 l, and no branch: with IEEE division and logf
  // (slow-path branches, divergent under lane % 4 == 0) this part took a third of the epilogue,
  // which short sequences pay at every work tile.
  __device__ __forceinline__ void finalize(float scale_log2, float (&inv)[2], float (&lse)[2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      l[r] += __shfl_xor_sync(0xffffffff, l[r], 1);
      l[r] += __shfl_xor_sync(0xffffffff, l[r], 2);
      const bool seen = l[r] != 0.f;  // a NaN sum (a NaN or +inf score) stays NaN, like SDPA
      inv[r] = seen ? rcp_approx(l[r]) : 0.f;
      lse[r] = seen ? (m[r] * scale_log2 + log2_approx(l[r])) * kLn2 : -INFINITY;
    }
  }
};

}  // namespace dense
}  // namespace flashcore
