// The dense kernel's mainloop, producer side: the mbarriers of the pipeline and the TMA loads
// of Q and of the K and V tiles into their shared-memory rings.
//
// Producer (one thread): Q by TMA, then K and V tiles of kBlockN keys (128; 64 at head dim 256) through two 2-stage rings
// guarded by mbarriers (full: bytes landed; empty: all consumers are done with the stage). The
// ring's stage and phase follow a running tile count g shared by producer and consumers.
// The consumers' side (the wgmma GEMMs, software-pipelined across tiles, and the turns the
// consumer warpgroups take) stays in the kernel's body in dense_fwd.cu: moved into functions or
// structs here, it changed how ptxas allocates the 192-row kernel's registers, up to serializing
// its wgmmas.
//
// Paged prefix: a request's keys may start with whole pages of the pool [slots, Hkv, D],
// TMA-loaded in place through its page list, one box per page piece (a page of P >= 8 tokens is
// P consecutive slots), followed by its packed rows of k/v. A page's length is a multiple of the
// box, so no box straddles the two sources.
#pragma once

#include <cuda.h>
#include <float.h>
#include <math.h>
#include <stdint.h>

#include "flashcore/dense/params.h"
#include "flashcore/dense/tile_scheduler.cuh"
#include "flashcore/hopper.cuh"
#include "flashcore/mma.cuh"
#include "flashcore/wgmma_ops.cuh"

namespace flashcore {
namespace dense {

using namespace hopper;

// (one thread) The pipeline's mbarriers: full, the producer's arrival with the bytes; empty,
// every consumer thread's.
__device__ __forceinline__ void init_barriers(uint64_t* full_k, uint64_t* empty_k, uint64_t* full_v,
                                              uint64_t* empty_v, uint64_t* q_full, uint64_t* q_empty,
                                              int consumer_threads) {
  for (int s = 0; s < kStages; ++s) {
    mbar_init(&full_k[s], 1);
    mbar_init(&empty_k[s], consumer_threads);
    mbar_init(&full_v[s], 1);
    mbar_init(&empty_v[s], consumer_threads);
  }
  mbar_init(q_full, 1);
  mbar_init(q_empty, consumer_threads);
  fence_barrier_init();
}

// ------------------------------------------------------------------------------- producer

// The work tile's Q rows (D / 64 boxes of kBlockM rows), counted on q_full.
template <int D, int kBlockM>
__device__ __forceinline__ void load_q(unsigned char* smem, const CUtensorMap* tq, uint64_t* q_full,
                                       const WorkTile& t) {
  using S = DenseSmem<D, kBlockM>;
  mbar_expect_tx(q_full, S::kQBytes);
  for (int db = 0; db < D / 64; ++db)
    tma_load_3d(smem + S::kQ + db * S::kQBlockBytes, tq, q_full, db * 64, t.hq, t.q0 + t.m_block * kBlockM);
}

// The work tile's K and V tiles into the rings, each stage once the consumers released it; g:
// K/V tiles loaded so far (moved past this work tile's). kScoreMods: the kernel serves sliding
// windows, whose work tiles start at window_first_tile (0 otherwise).
template <int D, int kBlockM, bool kScoreMods>
__device__ __forceinline__ void load_kv(unsigned char* smem, const CUtensorMap* tk, const CUtensorMap* tv,
                                        const CUtensorMap* tk_pool, const CUtensorMap* tv_pool, uint64_t* full_k,
                                        uint64_t* empty_k, uint64_t* full_v, uint64_t* empty_v,
                                        const DenseFwdParams& p, const WorkTile& t, int& g) {
  using S = DenseSmem<D, kBlockM>;
  constexpr int kBlockN = S::kBlockN;
  // tile n of K or V: boxes of box_rows keys, each from a page piece or from the packed rows
  // (rows past the packed tensor's end are zero-filled by TMA)
  auto load_tile = [&](unsigned char* dst, const CUtensorMap* packed, const CUtensorMap* pool, uint64_t* full,
                       int n) {
    for (int r = 0; r < kBlockN; r += p.box_rows) {
      const int pos = n * kBlockN + r;
      const bool in_page = pos < t.paged_keys;
      const int row =
          in_page ? t.pages[pos / p.page_size] * p.page_size + pos % p.page_size : t.k0 + pos - t.paged_keys;
      for (int db = 0; db < D / 64; ++db)
        tma_load_3d(dst + db * S::kBlockBytes + r * kRowBytes, in_page ? pool : packed, full, db * 64, t.hk, row);
    }
  };
  const int n_first = kScoreMods ? window_first_tile<kBlockM, kBlockN>(p, t) : 0;
  for (int n = 0; n < t.n_tiles; ++n, ++g) {
    const int s = g % kStages;
    const uint32_t parity = ((g / kStages) - 1) & 1;
    if (g >= kStages) mbar_wait(&empty_k[s], parity);
    mbar_expect_tx(&full_k[s], S::kTileBytes);
    load_tile(smem + S::kK + s * S::kTileBytes, tk, tk_pool, &full_k[s], n_first + n);
    if (g >= kStages) mbar_wait(&empty_v[s], parity);
    mbar_expect_tx(&full_v[s], S::kTileBytes);
    load_tile(smem + S::kV + s * S::kTileBytes, tv, tv_pool, &full_v[s], n_first + n);
  }
}

}  // namespace dense
}  // namespace flashcore
