// Dense attention forward for Hopper (sm_90a): TMA + wgmma, warp-specialized, persistent.
//
// A work tile = 64 x W query rows of one (sequence, query head), W consumer warpgroups (3 at
// head dim 64 as in FA3, but 2 for short causal ones; 2 at 128; dense_fwd_launch picks). One CTA
// per SM, W + 1 warpgroups:
//   warpgroup 0, one thread: the producer. Claims work tiles (the first from blockIdx.x, then
//     from an atomic counter), publishes it decoded in shared memory, TMA-loads its Q and streams
//     its K and V tiles of 128 keys through two 2-stage shared-memory rings guarded by mbarriers
//     (full: bytes landed; empty: all consumers are done with the stage). It runs ahead into the
//     next work tile while the consumers finish the current one.
//   warpgroups 1 .. W: consumers, 64 query rows each (a warpgroup whose rows all lie past its
//     request's end only keeps the barriers' count). S = Q K^T with wgmma (both operands in
//     shared memory, 128-byte swizzle), mask, online softmax in registers (the scale folded into
//     one FFMA before a flush-to-zero exp2; a row's exponent base moves only when a tile's max
//     exceeds it by 2^8, so most tiles skip the rescale of O), then O += P V with wgmma (P from
//     registers, V read as an MN-major operand). Within a warpgroup the two GEMMs are
//     software-pipelined across tiles: S(n) and P(n-1) V(n-1) are issued together. (ptxas puts
//     the wait for P(n-1) V(n-1) at the start of the softmax of S(n), not after it as written;
//     holding it later was slower at D 64 and short sequences, see the main loop.) Between the
//     warpgroups, a round robin of named barriers makes them take turns issuing, so one's
//     softmax overlaps the others' GEMMs.
// GQA maps query head h to KV head h / (Hq / Hkv). Causal masks are bottom-right aligned and
// key tiles past the diagonal are never loaded; a warpgroup none of whose rows sees the second
// half of its last key tile multiplies that tile's P V (and, when it is the only tile, its S)
// over the first 64 keys only. The LSE (natural log) is written per row. O is
// staged in shared memory and leaves by TMA tensor store while the warp starts its next tile
// (rows at a request's end, which a box would overrun, by the warp's own 16-byte stores).
//
// Paged prefix (extend over SGLang's KV pool): a request's keys may start with whole pages of
// the pool [slots, Hkv, D], TMA-loaded in place through its page list, one box per page piece
// (a page of P >= 8 tokens is P consecutive slots), followed by its packed rows of k/v (the new
// tokens). A page's length is a multiple of the box, so no box straddles the two sources.
//
// Work tile order (the order CTAs claim them). Grid order 0, the default (a device flag, so a
// plan can choose without a host sync): non-causal, query block fastest, then query head, then
// request (CTAs running together read one head's K/V from L2); causal, L2-sized sections of
// (request, query head) pairs with the query block slowest inside a section, heaviest first,
// so the long tiles start early and the short ones fill the end. Grid order 1: request
// fastest, then the query heads of one KV head, then query block, then KV head (CTAs running
// together read the same prefix pages when requests share them).
// Ragged batches enumerate batch x ceil(max_seqlen_q / kBlockM) x Hq tiles, and most can lie
// past a short request's rows (one 8K prompt beside 60 short ones: ~125K tiles, ~5K with rows).
// Skipped one claim at a time, those cost each CTA hundreds of atomics per launch (1.4x on such
// a batch); so when a quarter or more of the tiles may be empty, the launch first selects the
// ones with rows, in claim order, and the CTAs claim list positions instead.
#include <float.h>
#include <limits.h>

#include <algorithm>
#include <type_traits>

#include <cub/device/device_select.cuh>
#include <thrust/iterator/counting_iterator.h>

#include "flashcore/dense_fwd.h"
#include "flashcore/heuristics.h"
#include "flashcore/hopper.cuh"
#include "flashcore/wgmma_ops.cuh"

namespace flashcore {
namespace {

using namespace hopper;

constexpr int kBlockN = 128;  // keys per K/V tile
constexpr int kStages = 2;
constexpr int kRowBytes = 128;  // one 64-column block row in the 128-byte swizzle
constexpr float kLn2 = 0.6931471805599453f;
constexpr float kRescaleLog2 = 8.f;  // lazy rescale threshold, log2 units (P <= 256)

// W consumer warpgroups of 64 query rows each: the CTA's threads and its work tile's rows
template <int W>
struct DenseShape {
  static constexpr int kBlockM = 64 * W;  // query rows of a work tile
  static constexpr int kThreads = 128 * (W + 1);
  // registers per thread after setmaxnreg: the producer gives its share to the consumers (the
  // CTA's 64K registers: 128 x 40 + 256 x 232 and 128 x 32 + 384 x 160)
  static constexpr int kProducerRegs = W == 2 ? 40 : 32;
  static constexpr int kConsumerRegs = W == 2 ? 232 : 160;
  static_assert(W == 2 || W == 3, "two or three consumer warpgroups");
  // the pool setmaxnreg redistributes is what the launch gave the CTA: 65536 / kThreads rounded
  // down to 8, times kThreads (64,512 at 384 threads); a consumer's setmaxnreg.inc past it waits
  // forever (benchmarks/results/h200/dense_s21)
  static_assert(128 * kProducerRegs + 128 * W * kConsumerRegs <= 65536 / kThreads / 8 * 8 * kThreads, "register file");
};

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
  // O staging for the epilogue: each consumer warp's 16 rows, padded by 16 bytes a row so that
  // the accumulator layout's 4-byte writes hit 32 distinct banks
  // (the TMA store instead stages each warp's 16 rows as D / 64 boxes of 16 x 128 bytes in the
  // 128-byte swizzle, whose pattern repeats every 1024 bytes: the staging area starts on one)
  static constexpr int kStageRow = D * 2 + 16;
  static constexpr int kStageSwizzledWarp = 16 * D * 2;
  static constexpr int kStage = (kTileSlots + 2 * kTileSlotBytes + 1023) / 1024 * 1024;
  static constexpr int kBytes = kStage + (kBlockM / 16) * 16 * kStageRow + 1024;  // + alignment slack
};

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
  int batch, m_blocks, num_work;
  int section_pairs;  // causal CTA order (see make_work_tile)
  // persistent schedule: CTAs claim work tiles past the first gridDim.x from this zeroed counter;
  // nullptr: one work tile per CTA
  int* tile_counter;
  // ragged batches: *num_tiles_dev work tiles, tile_list[i] the i-th to claim; nullptr: all
  // num_work tiles in order, the empty ones skipped by the producer
  const int* tile_list;
  const int* num_tiles_dev;
  const int* grid_order;  // device flag (see the header comment); nullptr: 0
  // paged prefix: request b's pages are key_pages[key_page_offsets[b] ...]; nullptr: none
  const int* key_pages;
  const int* key_page_offsets;
  int page_size, box_rows;
};

// One work tile: kBlockM query rows of one (request, query head) and the keys they see.
struct WorkTile {
  int m_block, hq, hk;
  int q0, sq;         // the request's query rows
  int k0, sk;         // its packed key rows start at k0; sk keys in all (pages first)
  int paged_keys;     // keys read from whole pool pages
  const int* pages;   // its page list, or nullptr
  int diag;           // causal: row i sees keys <= i + diag
  int n_tiles;        // key tiles to visit
};

// Work tile ``lin`` (blocks of kBlockM query rows) in the CTA order ``order``; false when the
// block lies past its request's rows.
template <int kBlockM>
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
  return true;
}

// Whether work tile ``lin`` holds query rows (the selection behind the ragged-batch tile list).
template <int kBlockM>
struct TileHasRows {
  DenseFwdParams p;
  __device__ __forceinline__ bool operator()(int lin) const {
    WorkTile t;
    return make_work_tile<kBlockM>(p, p.grid_order != nullptr ? *p.grid_order : 0, lin, t);
  }
};

// Persistent: CTA i starts with work tile i, and its producer claims the next one from an atomic
// counter, so CTAs that drew light (causal) tiles take more of them, and the producer loads the
// next tile's Q and first K/V while the consumers finish the previous one. The claimed tile goes
// to the consumers decoded, through a shared-memory slot published with the Q barrier (m_block -1:
// no more work), so they do not repeat its global loads at every tile boundary.
// The K/V ring's stage and phase follow a running tile count shared by producer and consumers.
template <typename T, int D, int W>
__global__ void __launch_bounds__(DenseShape<W>::kThreads, 1)
    dense_fwd_kernel(const __grid_constant__ CUtensorMap tq, const __grid_constant__ CUtensorMap tk,
                     const __grid_constant__ CUtensorMap tv, const __grid_constant__ CUtensorMap tk_pool,
                     const __grid_constant__ CUtensorMap tv_pool, const __grid_constant__ CUtensorMap to,
                     const DenseFwdParams p) {
  using Shape = DenseShape<W>;
  constexpr int kBlockM = Shape::kBlockM;
  constexpr int kConsumerThreads = 128 * W;
  using S = DenseSmem<D, kBlockM>;
  extern __shared__ unsigned char smem_raw[];
  // the 128-byte swizzle pattern repeats every 1024 bytes: tiles start on such a boundary
  unsigned char* smem = reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  uint64_t* full_k = reinterpret_cast<uint64_t*>(smem + S::kBars);
  uint64_t* empty_k = full_k + kStages;
  uint64_t* full_v = empty_k + kStages;
  uint64_t* empty_v = full_v + kStages;
  uint64_t* q_full = empty_v + kStages;
  uint64_t* q_empty = q_full + 1;
  WorkTile* tile_slot = reinterpret_cast<WorkTile*>(smem + S::kTileSlots);
  static_assert(sizeof(WorkTile) <= S::kTileSlotBytes, "a decoded work tile fits its slot");
  const int order = p.grid_order != nullptr ? *p.grid_order : 0;

  const int warpgroup = threadIdx.x / 128;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(&full_k[s], 1);
      mbar_init(&empty_k[s], kConsumerThreads);
      mbar_init(&full_v[s], 1);
      mbar_init(&empty_v[s], kConsumerThreads);
    }
    mbar_init(q_full, 1);
    mbar_init(q_empty, kConsumerThreads);
    fence_barrier_init();
  }
  __syncthreads();

  if (warpgroup == 0) {  // ------------------------------------------------ producer
    setmaxnreg_dec<Shape::kProducerRegs>();
    if (threadIdx.x == 0) {
      prefetch_tensor_map(&tq);
      prefetch_tensor_map(&tk);
      prefetch_tensor_map(&tv);
      if (p.key_pages != nullptr) {
        prefetch_tensor_map(&tk_pool);
        prefetch_tensor_map(&tv_pool);
      }
      auto claim = [&] {
        return p.tile_counter != nullptr ? (int)gridDim.x + atomicAdd(p.tile_counter, 1) : INT_MAX;
      };
      const int num_claims = p.tile_list != nullptr ? *p.num_tiles_dev : p.num_work;
      int g = 0, w = 0;  // K/V tiles and work tiles loaded so far
      for (int i = blockIdx.x;; i = claim()) {
        WorkTile t;
        bool valid = false;
        for (; i < num_claims; i = claim())
          if ((valid = make_work_tile<kBlockM>(p, order, p.tile_list != nullptr ? p.tile_list[i] : i, t))) break;
        if (w > 0) mbar_wait(q_empty, (w - 1) & 1);  // all consumers are done with the last Q
        // slot w % 2 was last read for work tile w - 2, before the consumers released its Q
        if (!valid) t.m_block = -1;
        tile_slot[w % 2] = t;
        if (!valid) {
          mbar_arrive(q_full);  // publishes the end
          break;
        }
        mbar_expect_tx(q_full, S::kQBytes);
        for (int db = 0; db < D / 64; ++db)
          tma_load_3d(smem + S::kQ + db * S::kQBlockBytes, &tq, q_full, db * 64, t.hq, t.q0 + t.m_block * kBlockM);
        ++w;
        // tile n of K or V: boxes of box_rows keys, each from a page piece or from the packed rows
        // (rows past the packed tensor's end are zero-filled by TMA)
        auto load_tile = [&](unsigned char* dst, const CUtensorMap* packed, const CUtensorMap* pool, uint64_t* bar,
                             int n) {
          for (int r = 0; r < kBlockN; r += p.box_rows) {
            const int pos = n * kBlockN + r;
            const bool in_page = pos < t.paged_keys;
            const int row =
                in_page ? t.pages[pos / p.page_size] * p.page_size + pos % p.page_size : t.k0 + pos - t.paged_keys;
            for (int db = 0; db < D / 64; ++db)
              tma_load_3d(dst + db * S::kBlockBytes + r * kRowBytes, in_page ? pool : packed, bar, db * 64, t.hk, row);
          }
        };
        for (int n = 0; n < t.n_tiles; ++n, ++g) {
          const int s = g % kStages;
          const uint32_t parity = ((g / kStages) - 1) & 1;
          if (g >= kStages) mbar_wait(&empty_k[s], parity);
          mbar_expect_tx(&full_k[s], S::kTileBytes);
          load_tile(smem + S::kK + s * S::kTileBytes, &tk, &tk_pool, &full_k[s], n);
          if (g >= kStages) mbar_wait(&empty_v[s], parity);
          mbar_expect_tx(&full_v[s], S::kTileBytes);
          load_tile(smem + S::kV + s * S::kTileBytes, &tv, &tv_pool, &full_v[s], n);
        }
      }
      // Every CTA has made its last claim (the one past the end) once all have counted
      // themselves done: the last to do so zeroes the counter for the next launch on its stream.
      if (p.tile_counter != nullptr) {
        __threadfence();
        if (atomicAdd(p.tile_counter + 1, 1) == (int)gridDim.x - 1) {
          atomicExch(p.tile_counter, 0);
          atomicExch(p.tile_counter + 1, 0);
        }
      }
    }
    return;
  }

  // ----------------------------------------------------------------- consumers
  setmaxnreg_inc<Shape::kConsumerRegs>();
  const int c = warpgroup - 1;  // rows c*64 .. c*64+63 of the tile
  const int warp = (threadIdx.x % 128) / 32, lane = threadIdx.x % 32;

  // Round robin: the consumers take turns issuing their GEMMs (named barrier 1 + c is "my
  // turn"; a turn ends by passing it to consumer c + 1), so one warpgroup's softmax runs while
  // another's GEMMs hold the tensor cores. Every consumer takes the same number of turns (they
  // walk the same work tiles); the last opens with an arrive that lets consumer 0 go first, and
  // consumer 0 closes with a wait that consumes the last one's final arrive, so every barrier
  // ends balanced.
  auto turn_begin = [&] { named_bar_sync(1 + c, 256); };
  auto turn_end = [&] { named_bar_arrive(1 + (c + 1) % W, 256); };
  if (c == W - 1) named_bar_arrive(1, 256);

  // Operand descriptors: those of this warpgroup's Q rows and of the K and V tiles of stage 0,
  // moved by each GEMM's offset (desc_advance: one add, where rebuilding a descriptor from its
  // address costs about five instructions a wgmma; 2-3% fewer in the main loop). That was
  // faster on 70 of 76 grid points, up to 7.5%, but 1-2% slower on the causal 128-row D 64
  // kernel's points (S <= 1K; dense_ab/desc_advance_ab.json): that kernel rebuilds them.
  constexpr bool kDescAdvance = !(D == 64 && W == 2);
  const uint64_t q_desc = smem_desc_sw128(smem + S::kQ + c * 64 * kRowBytes, 16, 1024);
  const uint64_t k_desc = smem_desc_sw128(smem + S::kK, 16, 1024);
  const uint64_t v_desc = smem_desc_sw128(smem + S::kV, S::kBlockBytes, 1024);
  // the operand ``offset`` bytes past a base whose descriptor is ``desc`` and which starts
  // ``base`` bytes into shared memory: moved, or rebuilt from its address
  auto operand = [&](uint64_t desc, int base, int offset, uint32_t lbo) {
    return kDescAdvance ? desc_advance(desc, offset) : smem_desc_sw128(smem + base + offset, lbo, 1024);
  };
  // S(n) = Q K^T of ring tile g, issued asynchronously (the caller waits): into float[64], all
  // 128 keys; into float[32], the tile's first 64 keys (the first half of the 128-key
  // accumulator layout), for a last tile whose other half every row of this warpgroup masks.
  auto issue_qk = [&](auto& acc, int g) {
    constexpr int kKeys = 2 * (int)(sizeof(acc) / sizeof(float));
    const int stage_bytes = (g % kStages) * S::kTileBytes;
    const uint64_t dk = desc_advance(k_desc, stage_bytes);
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < D / 16; ++k) {
      const int within = (k % 4) * 32;
      const int q_off = (k / 4) * S::kQBlockBytes + within, k_off = (k / 4) * S::kBlockBytes + within;
      Wgmma<T, kKeys, 0>::ss(acc, operand(q_desc, S::kQ + c * 64 * kRowBytes, q_off, 16),
                             operand(dk, S::kK + stage_bytes, k_off, 16), k > 0);
    }
    wgmma_commit();
  };
  // O += P V of ring tile g, issued asynchronously; V is [keys][D], read as an MN-major B operand
  // (kKeys = 64: the first 64 keys only, P being zero past them)
  auto issue_pv = [&](float (&o)[D / 2], const uint32_t (&pa)[kBlockN / 16][4], int g, auto keys) {
    constexpr int kKeys = decltype(keys)::value;
    const int stage_bytes = (g % kStages) * S::kTileBytes;
    const uint64_t dv = desc_advance(v_desc, stage_bytes);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk)
      Wgmma<T, D, 1>::rs(o, pa[kk], operand(dv, S::kV + stage_bytes, kk * 16 * kRowBytes, S::kBlockBytes), 1);
    wgmma_commit();
  };
  using AllKeys = std::integral_constant<int, kBlockN>;
  using HalfKeys = std::integral_constant<int, kBlockN / 2>;
  auto pack_p = [&](const float (&sc)[kBlockN / 2], uint32_t (&pa)[kBlockN / 16][4]) {
#pragma unroll
    for (int j = 0; j < kBlockN / 8; ++j) {
      pa[j / 2][2 * (j % 2)] = Pack2<T>::from_floats(sc[4 * j], sc[4 * j + 1]);
      pa[j / 2][2 * (j % 2) + 1] = Pack2<T>::from_floats(sc[4 * j + 2], sc[4 * j + 3]);
    }
  };

  // A warpgroup whose rows all lie past its request's end (in the request's last work tile) walks
  // the tiles with the same turns and barrier arrivals as the GEMM path below, but computes
  // nothing. It waits for each stage to fill before releasing it, so that its arrival counts
  // toward that use of the stage and not an earlier one. (A separate path: predicating the
  // GEMMs inside the main loop makes ptxas serialize the wgmmas.)
  auto walk_idle = [&](int n_tiles, int g0) {
    if (n_tiles == 0) mbar_arrive(q_empty);
    for (int n = 0; n <= n_tiles && n_tiles > 0; ++n) {
      const int gk = g0 + n, gv = gk - 1;
      turn_begin();
      if (n < n_tiles) mbar_wait(&full_k[gk % kStages], (gk / kStages) & 1);
      if (n > 0) mbar_wait(&full_v[gv % kStages], (gv / kStages) & 1);
      turn_end();
      if (n < n_tiles) mbar_arrive(&empty_k[gk % kStages]);
      if (n == n_tiles - 1) mbar_arrive(q_empty);
      if (n > 0) mbar_arrive(&empty_v[gv % kStages]);
    }
  };

  int g = 0;  // K/V tiles consumed so far
  for (int w = 0;; ++w) {
    mbar_wait(q_full, w & 1);
    const WorkTile t = tile_slot[w % 2];
    if (t.m_block < 0) break;
    const int row_a = t.m_block * kBlockM + c * 64 + warp * 16 + lane / 4;  // in the sequence
    const int rows[2] = {row_a, row_a + 8};
    if (t.m_block * kBlockM + c * 64 >= t.sq) {  // all 64 rows past the request's end
      walk_idle(t.n_tiles, g);
      g += t.n_tiles;
      continue;
    }

    float o[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
    // m: the rows' exponent base in raw-score units (their running max, or with lazy rescaling
    // a stale max at most kRescaleLog2 below it); l: running sum of exponentials
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

    // mask (past the sequence end; causal), online softmax in the log2 domain with the scale
    // folded into one FFMA per score: leaves the exponentials in sc and returns each row's
    // rescale factor for O
    auto softmax = [&](float (&sc)[kBlockN / 2], int n, float (&alpha)[2]) {
      const bool edge =
          (n + 1) * kBlockN > t.sk || (p.causal && (n + 1) * kBlockN - 1 > t.m_block * kBlockM + c * 64 + t.diag);
      // Masking is one compare and select per score against each row's key limit, in its own
      // loop behind one branch: written inside the max loop, ptxas turned it into a branch per
      // score (BSSY/BSYNC pairs in every tile, masked or not), 7-10% slower at D 128.
      if (edge) {
        int limit[2];  // keys at or past it are masked: the sequence end, causally row + diag + 1
#pragma unroll
        for (int r = 0; r < 2; ++r) limit[r] = p.causal ? min(t.sk, rows[r] + t.diag + 1) : t.sk;
        const int col0 = n * kBlockN + 2 * (lane % 4);
#pragma unroll
        for (int i = 0; i < kBlockN / 2; ++i) {
          const int col = col0 + (i / 4) * 8 + (i % 2);
          sc[i] = col < limit[(i / 2) % 2] ? sc[i] : -INFINITY;
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
        // lazy: keep the base while this tile's max stays within 2^kRescaleLog2 of it, so most
        // tiles need no rescale of O (the final O / l and LSE use the same base: exact)
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
    };

    const int n_tiles = t.n_tiles;
    // The last key tile of a causal diagonal (or of a sequence ending in its first half): when no
    // row of this warpgroup sees past its 64th key, S and P V run over those 64 keys only.
    // Bit-identical: the other half's exponentials are exact zeros.
    const int key_limit = p.causal ? min(t.sk, t.m_block * kBlockM + c * 64 + 64 + t.diag) : t.sk;
    const bool half_last = n_tiles > 0 && key_limit <= (n_tiles - 1) * kBlockN + kBlockN / 2;
    // (its S runs half-width only when it is the work tile's only key tile, and its P V as the
    // last: a half-width wgmma inside the loop, beside the P V in flight, makes ptxas serialize
    // the loop's wgmmas)
    const bool half_first = half_last && n_tiles == 1;
    if (n_tiles == 0) mbar_arrive(q_empty);
    if (n_tiles > 0) {
      float sc[kBlockN / 2];
      uint32_t pa[kBlockN / 16][4];
      float alpha[2];
      turn_begin();
      mbar_wait(&full_k[g % kStages], (g / kStages) & 1);
      if (half_first) {  // (its own accumulator: ptxas serializes the wgmmas otherwise)
        float sh[kBlockN / 4];
        issue_qk(sh, g);
        turn_end();
        wgmma_wait<0>();
        fence_regs(sh);
#pragma unroll
        for (int i = 0; i < kBlockN / 2; ++i) sc[i] = i < kBlockN / 4 ? sh[i] : -INFINITY;
      } else {
        issue_qk(sc, g);
        turn_end();
        wgmma_wait<0>();
        fence_regs(sc);
      }
      mbar_arrive(&empty_k[g % kStages]);
      if (n_tiles == 1) mbar_arrive(q_empty);
      softmax(sc, 0, alpha);
      pack_p(sc, pa);
      for (int n = 1; n < n_tiles; ++n) {
        const int gk = g + n, gv = gk - 1;
        turn_begin();
        mbar_wait(&full_k[gk % kStages], (gk / kStages) & 1);
        issue_qk(sc, gk);
        mbar_wait(&full_v[gv % kStages], (gv / kStages) & 1);
        fence_regs(o);
        issue_pv(o, pa, gv, AllKeys{});
        turn_end();
        wgmma_wait<1>();  // S(n) is done; P(n-1) V(n-1) may still run
        fence_regs(sc);
        mbar_arrive(&empty_k[gk % kStages]);
        if (n == n_tiles - 1) mbar_arrive(q_empty);  // the last read of Q
        softmax(sc, n, alpha);
        // pa and o are free again. ptxas moves this wait to the top of the softmax's basic block
        // (after the mask branch), and V's stage goes back right after it. A block boundary
        // holds it later: after the softmax or halfway through it, long D 128 sequences gained
        // up to 3-6% but D 64 and S <= 1K lost 1-7% (results/h200/dense_ab/README.md).
        wgmma_wait<0>();
        fence_regs(o);
        mbar_arrive(&empty_v[gv % kStages]);
        if (__any_sync(0xffffffff, alpha[0] != 1.f || alpha[1] != 1.f)) {  // warp-uniform skip
#pragma unroll
          for (int i = 0; i < D / 2; ++i) o[i] *= alpha[(i / 2) % 2];
        }
        pack_p(sc, pa);
      }
      const int last = g + n_tiles - 1;
      turn_begin();
      mbar_wait(&full_v[last % kStages], (last / kStages) & 1);
      fence_regs(o);
      if (half_last) issue_pv(o, pa, last, HalfKeys{});
      else issue_pv(o, pa, last, AllKeys{});
      turn_end();
      wgmma_wait<0>();
      fence_regs(o);
      mbar_arrive(&empty_v[last % kStages]);
      g += n_tiles;
    }

    // epilogue: normalise, write O and the natural-log LSE of rows inside the sequence. One MUFU
    // each for 1 / l and log2 l, and no branch but the stores' predicates: with IEEE division and
    // logf (slow-path branches, divergent under lane % 4 == 0) this part took a third of the
    // epilogue, which short sequences pay at every work tile.
    float inv[2], lse[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      l[r] += __shfl_xor_sync(0xffffffff, l[r], 1);
      l[r] += __shfl_xor_sync(0xffffffff, l[r], 2);
      const bool seen = l[r] > 0.f;
      inv[r] = seen ? rcp_approx(l[r]) : 0.f;
      lse[r] = seen ? (m[r] * p.scale_log2 + log2_approx(l[r])) * kLn2 : -INFINITY;
    }
    T* out_rows = reinterpret_cast<T*>(p.out) + (int64_t)t.q0 * p.out_stride_row + (int64_t)t.hq * p.out_stride_head;
    const int warp_row0 = t.m_block * kBlockM + c * 64 + warp * 16;  // this warp's first row
    {
      // The warp's 16 rows as D / 64 boxes of 16 x 128 bytes in the 128-byte swizzle (16-byte
      // piece k of row r at piece k ^ (r % 8): the accumulator layout's 4-byte writes hit 32
      // banks). Rows all inside the request: one TMA store a box, and the warp goes on to its
      // next tile while the copy engine writes them; a request's last rows are written here
      // (a box clips only at the tensor's end, and the rows past a request are the next one's).
      constexpr int kBox = 16 * 128;
      const uint32_t stage = smem_addr(smem + S::kStage) + (c * 4 + warp) * S::kStageSwizzledWarp;
      if (lane == 0) tma_store_wait_read();  // the warp's previous tile has left the slice
      __syncwarp();
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = lane / 4 + 8 * r;
#pragma unroll
        for (int j = 0; j < D / 8; ++j)
          st_shared_u32(stage + (j / 8) * kBox + row * 128 + (((j % 8) ^ (row % 8)) * 16) + (lane % 4) * 4,
                        Pack2<T>::from_floats(o[4 * j + 2 * r] * inv[r], o[4 * j + 2 * r + 1] * inv[r]));
      }
      if (warp_row0 + 16 <= t.sq) {
        fence_async_shared();
        __syncwarp();
        if (lane == 0) {
#pragma unroll
          for (int box = 0; box < D / 64; ++box) tma_store_3d(&to, smem + S::kStage + (c * 4 + warp) * S::kStageSwizzledWarp + box * kBox, box * 64, t.hq, t.q0 + warp_row0);
          tma_store_commit();
        }
      } else {
        __syncwarp();
        constexpr int kPieces = D * 2 / 16;  // 16-byte pieces of a row
        constexpr int kRowsPerStore = 32 / kPieces;
        const int row = lane / kPieces, piece = lane % kPieces;
        T* dst = out_rows + (int64_t)(warp_row0 + row) * p.out_stride_row + piece * 8;
#pragma unroll
        for (int it = 0; it < 16 / kRowsPerStore; ++it) {
          const int rr = row + it * kRowsPerStore;
          const uint4 v = ld_shared_v4(stage + (piece / 8) * kBox + rr * 128 + (((piece % 8) ^ (rr % 8)) * 16));
          if (warp_row0 + rr < t.sq) *reinterpret_cast<uint4*>(dst + (int64_t)it * kRowsPerStore * p.out_stride_row) = v;
        }
        __syncwarp();
      }
    }
    // the LSE after O: a global store before the async-proxy fence would make it wait
#pragma unroll
    for (int r = 0; r < 2; ++r)
      if (rows[r] < t.sq && lane % 4 == 0) p.lse[(int64_t)(t.q0 + rows[r]) * p.num_q_heads + t.hq] = lse[r];
  }
  if (lane == 0) tma_store_wait_read();  // shared memory outlives the stores' reads
  if (c == 0) named_bar_sync(1, 256);  // the last consumer's final arrive
}

// ------------------------------------------------------------------ host side
using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                 const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                 CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

EncodeTiled encode_fn() {
  static EncodeTiled fn = nullptr;
  if (!fn) {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult status;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault, &status) ==
            cudaSuccess &&
        status == cudaDriverEntryPointSuccess)
      fn = reinterpret_cast<EncodeTiled>(ptr);
  }
  return fn;
}

// [rows, heads, D] <-> boxes of box_rows rows x 1 head x 64 columns, 128-byte swizzle, zero fill
// past the end (loads; stores clip there)
bool make_map(CUtensorMap* map, const void* base, CUtensorMapDataType dtype, int64_t rows, int heads, int d,
              int64_t stride_row, int64_t stride_head, int box_rows) {
  EncodeTiled encode = encode_fn();
  if (!encode) return false;
  cuuint64_t dims[3] = {(cuuint64_t)d, (cuuint64_t)heads, (cuuint64_t)rows};
  cuuint64_t strides[2] = {(cuuint64_t)stride_head * 2, (cuuint64_t)stride_row * 2};
  cuuint32_t box[3] = {64, 1, (cuuint32_t)box_rows};
  cuuint32_t elem[3] = {1, 1, 1};
  return encode(map, dtype, 3, const_cast<void*>(base), dims, strides, box, elem, CU_TENSOR_MAP_INTERLEAVE_NONE,
                CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// Causal CTA order: how many (request, query head) pairs make one L2 section, so that the K/V
// the section's CTAs read at once stays in L2 (about half of the H100's 50 MB) while each
// section still runs its heaviest query blocks first. Whole GQA groups: query heads of one KV
// head share its K/V.
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

template <typename T, int D, int W>
cudaError_t launch(const DenseFwdArgs& a, CUtensorMapDataType dtype, cudaStream_t stream) {
  constexpr int kBlockM = DenseShape<W>::kBlockM;
  if (a.batch == 0 || a.max_seqlen_q == 0) return cudaSuccess;
  CUtensorMap tq, tk, tv, tk_pool, tv_pool, to;
  const int64_t rows_k = a.total_k > 0 ? a.total_k : 1;  // an empty K still needs a valid map
  const bool paged = a.key_pages != nullptr;
  const int box_rows = paged ? dense_page_box_rows(a.page_size) : kBlockN;
  if (box_rows == 0 || rows_k >= INT32_MAX || (paged && (a.pool_rows < 1 || a.pool_rows >= INT32_MAX)))
    return cudaErrorInvalidValue;
  if (!make_map(&tq, a.q, dtype, a.total_q, a.num_q_heads, D, a.q_stride_row, a.q_stride_head, kBlockM) ||
      !make_map(&to, a.out, dtype, a.total_q, a.num_q_heads, D, a.out_stride_row, a.out_stride_head, 16) ||
      !make_map(&tk, a.k, dtype, rows_k, a.num_kv_heads, D, a.k_stride_row, a.k_stride_head, box_rows) ||
      !make_map(&tv, a.v, dtype, rows_k, a.num_kv_heads, D, a.v_stride_row, a.v_stride_head, box_rows))
    return cudaErrorInvalidValue;
  if (!paged) {
    tk_pool = tk;
    tv_pool = tv;
  } else if (!make_map(&tk_pool, a.k_pool, dtype, a.pool_rows, a.num_kv_heads, D, a.k_pool_stride_row,
                       a.k_pool_stride_head, box_rows) ||
             !make_map(&tv_pool, a.v_pool, dtype, a.pool_rows, a.num_kv_heads, D, a.v_pool_stride_row,
                       a.v_pool_stride_head, box_rows)) {
    return cudaErrorInvalidValue;
  }
  const int m_blocks = (a.max_seqlen_q + kBlockM - 1) / kBlockM;
  const int64_t work = (int64_t)m_blocks * a.num_q_heads * a.batch;
  if (work >= INT32_MAX) return cudaErrorInvalidValue;
  DenseFwdParams p{};
  p.out = a.out;
  p.lse = a.lse;
  p.cu_q = a.cu_seqlens_q;
  p.cu_k = a.cu_seqlens_k;
  p.out_stride_row = a.out_stride_row;
  p.out_stride_head = a.out_stride_head;
  p.num_q_heads = a.num_q_heads;
  p.group = a.num_q_heads / a.num_kv_heads;
  p.scale_log2 = a.softmax_scale * 1.4426950408889634f;
  p.causal = a.causal ? 1 : 0;
  p.batch = a.batch;
  p.m_blocks = m_blocks;
  p.num_work = (int)work;
  p.section_pairs = causal_section_pairs<D>(a);
  p.tile_counter = nullptr;
  p.tile_list = nullptr;
  p.num_tiles_dev = nullptr;
  p.grid_order = a.grid_order;
  p.key_pages = a.key_pages;
  p.key_page_offsets = a.key_page_offsets;
  p.page_size = paged ? a.page_size : 1;
  p.box_rows = box_rows;
  // persistent: one CTA per SM (the kernel holds a whole SM), claiming work tiles past the first
  // wave from a counter that is zero here (and that the kernel leaves zero); one CTA per work
  // tile when they are no more than the SMs
  if (a.tile_counter == nullptr || a.num_sms <= 0) return cudaErrorInvalidValue;
  int ctas = (int)work;
  if (work > a.num_sms) {
    ctas = a.num_sms;
    p.tile_counter = a.tile_counter;
    if (a.zero_counter) {
      cudaError_t err = cudaMemsetAsync(a.tile_counter, 0, 2 * sizeof(int), stream);
      if (err != cudaSuccess) return err;
    }
  }
  if (p.tile_counter != nullptr && a.tile_list != nullptr) {
    // the work tiles that hold rows, in claim order, and their count in tile_list[0]
    if (a.select_temp == nullptr || work + 1 > dense_tile_list_capacity(a)) return cudaErrorInvalidValue;
    size_t temp_bytes = a.select_temp_bytes;
    cudaError_t err = cub::DeviceSelect::If(a.select_temp, temp_bytes, thrust::counting_iterator<int>(0),
                                            a.tile_list + 1, a.tile_list, work, TileHasRows<kBlockM>{p}, stream);
    if (err != cudaSuccess) return err;
    p.tile_list = a.tile_list + 1;
    p.num_tiles_dev = a.tile_list;
  }
  auto kernel = dense_fwd_kernel<T, D, W>;
  constexpr int smem = DenseSmem<D, kBlockM>::kBytes;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  kernel<<<(unsigned)ctas, DenseShape<W>::kThreads, smem, stream>>>(tq, tk, tv, tk_pool, tv_pool, to, p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t dense_fwd_launch(const DenseFwdArgs& a, int dtype, int head_dim, cudaStream_t stream) {
  const CUtensorMapDataType f16 = CU_TENSOR_MAP_DATA_TYPE_FLOAT16, bf16 = CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  // head dim 64: three consumer warpgroups (192-row work tiles), except causal with at most 1024
  // query rows (there two were 3-4% faster on the H200: the diagonal's masked work grows with
  // the tile's height); 128: always two (three would not fit their accumulators in the
  // register file)
  constexpr int kShort = kDenseWarpgroupsD64ShortCausal, kLong = kDenseWarpgroupsD64, k128 = kDenseWarpgroupsD128;
  const bool short_causal = a.causal && a.max_seqlen_q <= kDenseShortCausalMaxRows;
  if (dtype == 0 && head_dim == 64)
    return short_causal ? launch<__half, 64, kShort>(a, f16, stream) : launch<__half, 64, kLong>(a, f16, stream);
  if (dtype == 0 && head_dim == 128) return launch<__half, 128, k128>(a, f16, stream);
  if (dtype == 1 && head_dim == 64)
    return short_causal ? launch<__nv_bfloat16, 64, kShort>(a, bf16, stream)
                        : launch<__nv_bfloat16, 64, kLong>(a, bf16, stream);
  if (dtype == 1 && head_dim == 128) return launch<__nv_bfloat16, 128, k128>(a, bf16, stream);
  return cudaErrorInvalidValue;
}

int64_t dense_tile_list_capacity(const DenseFwdArgs& a) {
  constexpr int64_t kMinBlockM = 128;  // the smallest work tile (two consumer warpgroups)
  if (a.batch <= 0 || a.max_seqlen_q <= 0) return 0;
  const int64_t work = (int64_t)a.batch * ((a.max_seqlen_q + kMinBlockM - 1) / kMinBlockM) * a.num_q_heads;
  const int64_t with_rows = std::min<int64_t>(work, (a.total_q / kMinBlockM + a.batch) * a.num_q_heads);
  // a quarter of the tiles or more are empty
  return with_rows * kDenseTileListEmptyDen <= work * (kDenseTileListEmptyDen - kDenseTileListEmptyNum) ? work + 1 : 0;
}

size_t dense_tile_select_temp_bytes(int64_t capacity) {
  size_t bytes = 0, bytes192 = 0;
  DenseFwdParams p{};
  cub::DeviceSelect::If(nullptr, bytes, thrust::counting_iterator<int>(0), (int*)nullptr, (int*)nullptr, capacity,
                        TileHasRows<128>{p});
  cub::DeviceSelect::If(nullptr, bytes192, thrust::counting_iterator<int>(0), (int*)nullptr, (int*)nullptr, capacity,
                        TileHasRows<192>{p});
  return std::max(bytes, bytes192);
}

}  // namespace flashcore
