// The dense kernel's tile scheduler: which work tiles exist, the order the CTAs claim them in,
// the persistent claim counter, and the ragged-batch tile list.
//
// A work tile = kBlockM query rows of one (request, query head). Work tile order (the order
// CTAs claim them). Grid order 0, the default (a device flag, so a plan can choose without a
// host sync): non-causal, query block fastest, then query head, then request (CTAs running
// together read one head's K/V from L2); causal, L2-sized sections of (request, query head)
// pairs with the query block slowest inside a section, heaviest first, so the long tiles start
// early and the short ones fill the end. Grid order 1: request fastest, then the query heads of
// one KV head, then query block, then KV head (CTAs running together read the same prefix pages
// when requests share them).
//
// Persistent: CTA i starts with work tile i, and its producer claims the next one from an
// atomic counter, so CTAs that drew light (causal) tiles take more of them. The counter is an
// int[2] (claims, CTAs done): the last CTA to finish zeroes both, so a counter kept per stream
// needs no reset between launches.
//
// Ragged batches enumerate batch x ceil(max_seqlen_q / kBlockM) x Hq tiles, and most can lie
// past a short request's rows (one 8K prompt beside 60 short ones: ~125K tiles, ~5K with rows).
// Skipped one claim at a time, those cost each CTA hundreds of atomics per launch (1.4x on such
// a batch); so when a quarter or more of the tiles may be empty, the launch first selects the
// ones with rows, in claim order (TileHasRows), and the CTAs claim list positions instead.
#pragma once

#include <limits.h>
#include <stdint.h>

#include <algorithm>

#include "flashcore/dense/params.h"
#include "flashcore/dense_fwd.h"
#include "flashcore/heuristics.h"

namespace flashcore {
namespace dense {

// One work tile: kBlockM query rows of one (request, query head) and the keys they see.
struct WorkTile {
  int m_block, hq, hk;
  int q0, sq;         // the request's query rows
  int k0, sk;         // its packed key rows start at k0; sk keys in all (pages first)
  int paged_keys;     // keys read from whole pool pages
  const int* pages;   // its page list, or nullptr
  int diag;           // causal: row i sees keys <= i + diag (and, with a window, >= i + diag - window_left)
  int n_tiles;        // key tiles to visit, from window_first_tile on
};

// The first key tile a work tile visits: 0, or with a sliding window the tile holding its first
// row's first key. Computed where it is needed rather than kept in WorkTile: a field more there
// (the slot the producer hands the consumers) cost the plain kernel 12 bytes of spills.
template <int kBlockM, int kBlockN>
__device__ __forceinline__ int window_first_tile(const DenseFwdParams& p, const WorkTile& t) {
  return p.window_left < 0 ? 0 : max(0, t.m_block * kBlockM + t.diag - p.window_left) / kBlockN;
}

// Work tile ``lin`` (blocks of kBlockM query rows, key tiles of kBlockN) in the CTA order
// ``order``; false when the block lies past its request's rows.
// kScoreMods: the kernel serves sliding windows (its work tiles then start at window_first_tile).
template <int kBlockM, int kBlockN, bool kScoreMods = false>
__device__ __forceinline__ bool make_work_tile(const DenseFwdParams& p, int order, int lin, WorkTile& t) {
  int m_idx, b;
  if (order == 1) {
    b = lin % p.batch;
    lin /= p.batch;
    const int hg = lin % p.group;
    lin /= p.group;
    m_idx = lin % p.m_blocks;
    t.hq = (lin / p.m_blocks) * p.group + hg;
  } else if (p.causal) {
    // sections of section_pairs (request, query head) pairs whose K/V fit in L2 together; inside
    // a section the query block is slowest, so its heaviest tiles are claimed first
    const int pairs = p.num_q_heads * p.batch;
    const int section = lin / (p.section_pairs * p.m_blocks);
    const int first_pair = section * p.section_pairs;
    const int size = min(p.section_pairs, pairs - first_pair);
    lin -= first_pair * p.m_blocks;
    m_idx = lin / size;
    const int pair = first_pair + lin % size;
    t.hq = pair % p.num_q_heads;
    b = pair / p.num_q_heads;
  } else {
    m_idx = lin % p.m_blocks;
    lin /= p.m_blocks;
    t.hq = lin % p.num_q_heads;
    b = lin / p.num_q_heads;
  }
  t.m_block = p.causal ? p.m_blocks - 1 - m_idx : m_idx;
  t.q0 = p.cu_q[b];
  t.sq = p.cu_q[b + 1] - t.q0;
  if (t.m_block * kBlockM >= t.sq) return false;
  t.hk = t.hq / p.group;
  t.pages = p.key_pages != nullptr ? p.key_pages + p.key_page_offsets[b] : nullptr;
  t.paged_keys = t.pages != nullptr ? (p.key_page_offsets[b + 1] - p.key_page_offsets[b]) * p.page_size : 0;
  t.k0 = p.cu_k[b];
  t.sk = p.cu_k[b + 1] - t.k0 + t.paged_keys;
  t.diag = t.sk - t.sq;
  t.n_tiles = (t.sk + kBlockN - 1) / kBlockN;
  if (p.causal) {
    const int last_key = min(t.sk - 1, t.m_block * kBlockM + kBlockM - 1 + t.diag);
    t.n_tiles = last_key < 0 ? 0 : min(t.n_tiles, last_key / kBlockN + 1);
  }
  if (kScoreMods && p.window_left >= 0)  // (causal only) the tiles left of the block's first row's window are skipped
    t.n_tiles = max(0, t.n_tiles - window_first_tile<kBlockM, kBlockN>(p, t));
  return true;
}

// The CTA order flag the launch passed on the device (0 when none).
__device__ __forceinline__ int grid_order(const DenseFwdParams& p) {
  return p.grid_order != nullptr ? *p.grid_order : 0;
}

// Whether work tile ``lin`` holds query rows (the selection behind the ragged-batch tile list).
template <int kBlockM>
struct TileHasRows {
  DenseFwdParams p;
  __device__ __forceinline__ bool operator()(int lin) const {
    WorkTile t;  // (whether it holds rows does not depend on the key tile)
    return make_work_tile<kBlockM, 128>(p, grid_order(p), lin, t);
  }
};

// The producer's side of the persistent schedule: claims go first to blockIdx.x, then to the
// counter (past the first gridDim.x); with no counter a CTA takes its one work tile.
template <int kBlockM, int kBlockN, bool kScoreMods>
struct TileScheduler {
  const DenseFwdParams& p;
  const int order;
  const int num_claims;  // claims that name a work tile: list positions or all work tiles

  __device__ __forceinline__ TileScheduler(const DenseFwdParams& params, int order_)
      : p(params), order(order_), num_claims(params.tile_list != nullptr ? *params.num_tiles_dev : params.num_work) {}

  __device__ __forceinline__ int first_claim() const { return blockIdx.x; }
  __device__ __forceinline__ int claim() const {
    return p.tile_counter != nullptr ? (int)gridDim.x + atomicAdd(p.tile_counter, 1) : INT_MAX;
  }
  // From claim ``i`` on, the first work tile that holds rows, into ``t`` (``i`` moves past the
  // empty ones); false once the claims run out.
  __device__ __forceinline__ bool next_tile(int& i, WorkTile& t) const {
    bool valid = false;
    for (; i < num_claims; i = claim())
      if ((valid = make_work_tile<kBlockM, kBlockN, kScoreMods>(p, order, p.tile_list != nullptr ? p.tile_list[i] : i, t)))
        break;
    return valid;
  }
  // After the CTA's last claim (the one past the end): every CTA has made its last claim once all
  // have counted themselves done, and the last to do so zeroes the counter for the next launch
  // on its stream.
  __device__ __forceinline__ void finish() const {
    if (p.tile_counter != nullptr) {
      __threadfence();
      if (atomicAdd(p.tile_counter + 1, 1) == (int)gridDim.x - 1) {
        atomicExch(p.tile_counter, 0);
        atomicExch(p.tile_counter + 1, 0);
      }
    }
  }
};

// ---------------------------------------------------------------------------------- host side

// Causal CTA order: how many (request, query head) pairs make one L2 section, so that the K/V
// the section's CTAs read at once stays in L2 (kDenseL2SectionMiB) while each section still
// runs its heaviest query blocks first. Whole GQA groups: query heads of one KV head share its
// K/V.
template <int D>
int causal_section_pairs(const DenseFwdArgs& a) {
  constexpr int64_t kL2Budget = (int64_t)kDenseL2SectionMiB << 20;
  const int group = a.num_q_heads / a.num_kv_heads;
  const int64_t keys = std::max<int64_t>(std::max<int64_t>(a.total_k / std::max(a.batch, 1), a.max_seqlen_q), 1);
  const int64_t kv_bytes_per_pair = std::max<int64_t>(keys * D * 2 * 2 / group, 1);  // K and V, 16-bit
  const int64_t pairs = (int64_t)a.batch * a.num_q_heads;
  int64_t section = std::max<int64_t>(kL2Budget / kv_bytes_per_pair / group, 1) * group;
  return (int)std::min(section, pairs);
}

}  // namespace dense
}  // namespace flashcore
