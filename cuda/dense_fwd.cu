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
// over the first 64 keys only. O and the LSE (natural log) leave through the epilogue
// (dense/epilogue.cuh).
//
// Paged prefix (extend over SGLang's KV pool): a request's keys may start with whole pages of
// the pool [slots, Hkv, D], TMA-loaded in place through its page list, one box per page piece
// (a page of P >= 8 tokens is P consecutive slots), followed by its packed rows of k/v (the new
// tokens). A page's length is a multiple of the box, so no box straddles the two sources.
//
// The parts, each in its own header as in FlashAttention-3's hopper/: dense/params.h (launch
// parameters, CTA shape, shared-memory layout), dense/tile_scheduler.cuh (work tiles, their claim
// order, the persistent claim counter, the ragged-batch tile list), dense/mainloop.cuh (the
// pipeline's mbarriers and the producer's TMA loads), dense/softmax.cuh (the online softmax),
// dense/epilogue.cuh (O and LSE stores). This file composes them: the kernel, whose consumer
// GEMM loop stays here (see dense/mainloop.cuh), and the host-side launch.
#include <float.h>
#include <limits.h>

#include <algorithm>
#include <type_traits>

#include <cub/device/device_select.cuh>
#include <thrust/iterator/counting_iterator.h>

#include "flashcore/dense/epilogue.cuh"
#include "flashcore/dense/mainloop.cuh"
#include "flashcore/dense/params.h"
#include "flashcore/dense/softmax.cuh"
#include "flashcore/dense/tile_scheduler.cuh"
#include "flashcore/dense_fwd.h"
#include "flashcore/heuristics.h"
#include "flashcore/hopper.cuh"
#include "flashcore/wgmma_ops.cuh"

namespace flashcore {
namespace {

using namespace hopper;
using namespace dense;

// Persistent: CTA i starts with work tile i, and its producer claims the next one from an atomic
// counter (dense/tile_scheduler.cuh), so CTAs that drew light (causal) tiles take more of them, and the producer loads the
// next tile's Q and first K/V while the consumers finish the previous one. The claimed tile goes
// to the consumers decoded, through a shared-memory slot published with the Q barrier (m_block -1:
// no more work), so they do not repeat its global loads at every tile boundary.
// The K/V ring's stage and phase follow a running tile count shared by producer and consumers.
// kScoreMods: sliding windows and soft-caps (OnlineSoftmax::update); launches without them run the
// kernel that has neither.
template <typename T, int D, int W, bool kScoreMods>
__global__ void __launch_bounds__(DenseShape<W>::kThreads, 1)
    dense_fwd_kernel(const __grid_constant__ CUtensorMap tq, const __grid_constant__ CUtensorMap tk,
                     const __grid_constant__ CUtensorMap tv, const __grid_constant__ CUtensorMap tk_pool,
                     const __grid_constant__ CUtensorMap tv_pool, const __grid_constant__ CUtensorMap to,
                     const DenseFwdParams p) {
  using Shape = DenseShape<W>;
  constexpr int kBlockM = Shape::kBlockM;
  constexpr int kConsumerThreads = 128 * W;
  using S = DenseSmem<D, kBlockM>;
  constexpr int kBlockN = S::kBlockN;
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
  if (threadIdx.x == 0) init_barriers(full_k, empty_k, full_v, empty_v, q_full, q_empty, kConsumerThreads);
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
      const TileScheduler<kBlockM, kBlockN, kScoreMods> scheduler(p, order);
      int g = 0, w = 0;  // K/V tiles and work tiles loaded so far
      for (int i = scheduler.first_claim();; i = scheduler.claim()) {
        WorkTile t;
        const bool valid = scheduler.next_tile(i, t);
        if (w > 0) mbar_wait(q_empty, (w - 1) & 1);  // all consumers are done with the last Q
        // slot w % 2 was last read for work tile w - 2, before the consumers released its Q
        if (!valid) t.m_block = -1;
        tile_slot[w % 2] = t;
        if (!valid) {
          mbar_arrive(q_full);  // publishes the end
          break;
        }
        load_q<D, kBlockM>(smem, &tq, q_full, t);
        ++w;
        load_kv<D, kBlockM, kScoreMods>(smem, &tk, &tv, &tk_pool, &tv_pool, full_k, empty_k, full_v, empty_v, p, t, g);
      }
      scheduler.finish();
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
  // kernel's points (S <= 1K; docs/performance.md): that kernel rebuilds them.
  constexpr bool kDescAdvance = !(D == 64 && W == 2);
  const uint64_t q_desc = smem_desc_sw128(smem + S::kQ + c * 64 * kRowBytes, 16, 1024);
  const uint64_t k_desc = smem_desc_sw128(smem + S::kK, 16, 1024);
  const uint64_t v_desc = smem_desc_sw128(smem + S::kV, S::kBlockBytes, 1024);
  // the operand ``offset`` bytes past a base whose descriptor is ``desc`` and which starts
  // ``base`` bytes into shared memory: moved, or rebuilt from its address
  auto operand = [&](uint64_t desc, int base, int offset, uint32_t lbo) {
    return kDescAdvance ? desc_advance(desc, offset) : smem_desc_sw128(smem + base + offset, lbo, 1024);
  };
  // S(n) = Q K^T of ring tile g, issued asynchronously (the caller waits): into float[kBlockN / 2],
  // all kBlockN keys; into float[kBlockN / 4], the tile's first half (the first half of the
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
  // (kKeys = kBlockN / 2: the first half only, P being zero past it). Lambda parameter types name
  // kBlockNFor<D>: the local kBlockN there crashes nvcc 13.0's front end (cudafe++).
  auto issue_pv = [&](float (&o)[D / 2], const uint32_t (&pa)[kBlockNFor<D> / 16][4], int g, auto keys) {
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
  auto pack_p = [&](const float (&sc)[kBlockNFor<D> / 2], uint32_t (&pa)[kBlockNFor<D> / 16][4]) {
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
    OnlineSoftmax sm;  // the rows' exponent base and running sums (dense/softmax.cuh)
    const int n_first = kScoreMods ? window_first_tile<kBlockM, kBlockN>(p, t) : 0;  // key tiles skipped left of a window
    // score tile n: mask, online softmax; leaves the exponentials in sc and returns each row's
    // rescale factor for O
    auto softmax = [&](float (&sc)[kBlockNFor<D> / 2], int n, float (&alpha)[2]) {
      sm.update<kScoreMods>(sc, n_first + n, alpha, p, t, t.m_block * kBlockM + c * 64, rows, lane);
    };

    const int n_tiles = t.n_tiles;
    // The last key tile of a causal diagonal (or of a sequence ending in its first half): when no
    // row of this warpgroup sees past the tile's first half, S and P V run over that half only.
    // Bit-identical: the other half's exponentials are exact zeros.
    const int key_limit = p.causal ? min(t.sk, t.m_block * kBlockM + c * 64 + 64 + t.diag) : t.sk;
    const bool half_last = n_tiles > 0 && key_limit <= (n_first + n_tiles - 1) * kBlockN + kBlockN / 2;
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
        // up to 3-6% but D 64 and S <= 1K lost 1-7% (docs/experiments.md).
        wgmma_wait<0>();
        fence_regs(o);
        mbar_arrive(&empty_v[gv % kStages]);
        OnlineSoftmax::rescale_o(o, alpha);
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

    // epilogue: normalise, write O and the natural-log LSE of rows inside the sequence
    float inv[2], lse[2];
    sm.finalize(p.scale_log2, inv, lse);
    store_o_lse<T, D, W>(o, inv, lse, rows, p, t, smem, &to, c, warp, lane);
  }
  epilogue_drain(lane);
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

// [rows, heads, d] <-> boxes of box_rows rows x 1 head x 64 columns, 128-byte swizzle, zero fill
// past the end (loads; stores clip there): of the rows, and of the columns past a head dim d
// below the kernel's (a box wholly past it loads zeros and stores nothing)
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

template <typename T, int D, int W, bool kScoreMods>
cudaError_t launch(const DenseFwdArgs& a, CUtensorMapDataType dtype, cudaStream_t stream) {
  constexpr int kBlockM = DenseShape<W>::kBlockM;
  constexpr int kBlockN = kBlockNFor<D>;
  if (a.batch == 0 || a.max_seqlen_q == 0) return cudaSuccess;
  if (kernel_head_dim_for(a.head_dim) != D) return cudaErrorInvalidValue;
  CUtensorMap tq, tk, tv, tk_pool, tv_pool, to;
  const int64_t rows_k = a.total_k > 0 ? a.total_k : 1;  // an empty K still needs a valid map
  const bool paged = a.key_pages != nullptr;
  const int box_rows = paged ? std::min(dense_page_box_rows(a.page_size), kBlockN) : kBlockN;
  if (box_rows == 0 || rows_k >= INT32_MAX || (paged && (a.pool_rows < 1 || a.pool_rows >= INT32_MAX)))
    return cudaErrorInvalidValue;
  if (!make_map(&tq, a.q, dtype, a.total_q, a.num_q_heads, a.head_dim, a.q_stride_row, a.q_stride_head, kBlockM) ||
      !make_map(&to, a.out, dtype, a.total_q, a.num_q_heads, a.head_dim, a.out_stride_row, a.out_stride_head, 16) ||
      !make_map(&tk, a.k, dtype, rows_k, a.num_kv_heads, a.head_dim, a.k_stride_row, a.k_stride_head, box_rows) ||
      !make_map(&tv, a.v, dtype, rows_k, a.num_kv_heads, a.head_dim, a.v_stride_row, a.v_stride_head, box_rows))
    return cudaErrorInvalidValue;
  if (!paged) {
    tk_pool = tk;
    tv_pool = tv;
  } else if (!make_map(&tk_pool, a.k_pool, dtype, a.pool_rows, a.num_kv_heads, a.head_dim, a.k_pool_stride_row,
                       a.k_pool_stride_head, box_rows) ||
             !make_map(&tv_pool, a.v_pool, dtype, a.pool_rows, a.num_kv_heads, a.head_dim, a.v_pool_stride_row,
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
  p.head_dim = a.head_dim;
  p.group = a.num_q_heads / a.num_kv_heads;
  p.scale_log2 = a.softmax_scale * 1.4426950408889634f;
  p.causal = a.causal ? 1 : 0;
  p.window_left = a.causal && a.window_left >= 0 ? a.window_left : -1;
  p.softcap_raw = a.softcap > 0.f ? a.softcap / a.softmax_scale : 0.f;
  p.softcap_in = a.softcap > 0.f ? a.softmax_scale / a.softcap : 0.f;
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
  auto kernel = dense_fwd_kernel<T, D, W, kScoreMods>;
  constexpr int smem = DenseSmem<D, kBlockM>::kBytes;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  kernel<<<(unsigned)ctas, DenseShape<W>::kThreads, smem, stream>>>(tq, tk, tv, tk_pool, tv_pool, to, p);
  return cudaGetLastError();
}

// Head dim 64: three consumer warpgroups (192-row work tiles), except causal with at most 1024
// query rows (there two were 3-4% faster on the H200: the diagonal's masked work grows with the
// tile's height) and launches with a window or a soft-cap (with three, their bounds and the
// soft-cap's registers spill: 152 bytes, against 8 without them); 128: always two (three would
// not fit their accumulators in the register file); 256: two, over 64-key tiles (params.h). The
// kernel with windows and soft-caps only for launches that use them.
template <typename T>
cudaError_t launch_dtype(const DenseFwdArgs& a, int head_dim, CUtensorMapDataType dtype, cudaStream_t stream) {
  constexpr int kShort = kDenseWarpgroupsD64ShortCausal, kLong = kDenseWarpgroupsD64, k128 = kDenseWarpgroupsD128,
                k256 = kDenseWarpgroupsD256;
  static_assert(kShort == 2, "score modifications run two consumer warpgroups at head dim 64");
  const bool mods = (a.causal && a.window_left >= 0) || a.softcap > 0.f;
  const bool short_causal = a.causal && a.max_seqlen_q <= kDenseShortCausalMaxRows;
  if (head_dim == 64) {
    if (mods) return launch<T, 64, kShort, true>(a, dtype, stream);
    return short_causal ? launch<T, 64, kShort, false>(a, dtype, stream) : launch<T, 64, kLong, false>(a, dtype, stream);
  }
  if (head_dim == 128)
    return mods ? launch<T, 128, k128, true>(a, dtype, stream) : launch<T, 128, k128, false>(a, dtype, stream);
  if (head_dim == 256)
    return mods ? launch<T, 256, k256, true>(a, dtype, stream) : launch<T, 256, k256, false>(a, dtype, stream);
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t dense_fwd_launch(const DenseFwdArgs& a, int dtype, int head_dim, cudaStream_t stream) {
  if (dtype == 0) return launch_dtype<__half>(a, head_dim, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, stream);
  if (dtype == 1) return launch_dtype<__nv_bfloat16>(a, head_dim, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, stream);
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
