// Paged decode: one query token per request, K/V read through SGLang's page table, over the
// plan that decode_plan.cu builds on the GPU.
//
// Work item w = a stretch of one request's req_to_token row read by the same set of requests
// (its "readers"). A task (work item, up to 32 query rows) loads the item's K/V once per KV
// head, through a 2-stage cp.async ring of 64-token tiles, and multiplies it on tensor cores
// against every query row that reads it: rows = readers x GQA group (16 per warp tile). The
// four warps split the tokens of each tile (four ways for one row tile, two ways for two) and
// merge at the end. Tasks of at most 8 rows (no sharing with a GQA group of up to 8) multiply
// token-major instead (attend_tile_narrow): S^T = K Q^T, O^T = V^T P^T; over an FP8 pool they
// widen K and V in registers (attend_tile_narrow_fp8), wider tasks a whole tile in shared memory
// (widen_tiles), which their warps then share. Each (work item,
// reader) pair writes a normalised partial output and its LSE; a second kernel merges each
// request's partials in the plan's fixed order, so results are bit-identical run to run.
// A fixed grid loops over the planner's tasks, whose count stays in device memory, so the
// launch can be captured in a CUDA graph.
#include <float.h>
#include <limits.h>

#include <type_traits>

#include "flashcore/fp8.cuh"
#include "flashcore/mma.cuh"
#include "flashcore/paged_decode.h"

namespace flashcore {
namespace {

constexpr int kThreads = 128;
constexpr int kTileN = kDecodeTileTokens;  // tokens per pipeline stage
constexpr int kStages = 2;
constexpr int kRowTile = 16;
constexpr float kLn2 = 0.6931471805599453f;

// Decode CTAs resident per SM: kDecodeCtasPerSm, but one at head dim 256, where the 16-bit K/V
// ring alone takes 128 KiB and a 16-row tile's O 128 accumulators a thread (the launch bounds
// then leave it every register it needs).
template <int D>
constexpr int kCtasPerSm = D == 256 ? 1 : kDecodeCtasPerSm;

// Shared memory: the K/V ring as loaded (TKV), for an FP8 pool one K/V tile widened to the
// model's 16-bit type, then one 16-row Q tile per row tile the launch can need (so a launch
// without sharing fits three CTAs per SM; an FP8 pool's ring and widened tile take the bytes of
// a 16-bit ring).
template <int D, typename TKV>
struct DecodeSmem {
  static constexpr int kTileBytes = kTileN * D * (int)sizeof(TKV);  // one K or V tile as loaded
  static constexpr int kRingBytes = kStages * 2 * kTileBytes;
  static constexpr int kWidenedBytes = kIsFp8<TKV> ? 2 * kTileN * D * 2 : 0;
  static constexpr int kQOffset = kRingBytes + kWidenedBytes;
  static __host__ __device__ int q_tiles(int max_rows) {
    return min(kDecodeRowsPerCta / kRowTile, (max_rows + kRowTile - 1) / kRowTile);
  }
  static __host__ __device__ size_t bytes(int max_rows) {
    return (size_t)kQOffset + (size_t)q_tiles(max_rows) * kRowTile * D * 2;
  }
};

// Element offset of a KV slot in the pool (head 0).
__device__ __forceinline__ int64_t slot_offset(const PagedDecodeParams& p, int slot) {
  const int64_t s = min(max((int64_t)slot, (int64_t)0), p.num_slots - 1);
  if (p.slots_linear) return s * p.kv_stride_tok;
  return (s / p.page_size) * p.kv_stride_page + (s % p.page_size) * p.kv_stride_tok;
}

// How one work item's (or task's) query rows are spread over the four warps: rows = readers x
// GQA group, cut into 16-row tiles (nrt of them); with few tiles the warps also split each K/V
// tile's tokens (splits) and merge at the end. It follows the item's total rows, not one task's
// share, so a reader's arithmetic does not depend on which task of the item it lands in.
struct RowSplit {
  int r0, rows, nrt, splits, my_rt, my_split;
  bool active;  // this warp has rows and a token split
};

__device__ __forceinline__ RowSplit row_split(const PagedDecodeParams& p, int w, int row_base) {
  RowSplit s;
  s.r0 = p.work_reader_offsets[w];
  s.rows = (p.work_reader_offsets[w + 1] - s.r0) * p.group;
  s.nrt = min(kDecodeRowsPerCta / kRowTile, (s.rows + kRowTile - 1) / kRowTile);
  s.splits = (kThreads / 32) / s.nrt;  // the warps left over per row tile
  const int warp = threadIdx.x / 32;
  s.my_rt = warp % s.nrt;
  s.my_split = warp / s.nrt;
  s.active = s.my_split < s.splits && row_base + s.my_rt * kRowTile < s.rows;
  return s;
}

// Query rows row_base... of a work item into q_smem (cp.async; the caller commits): row r is
// reader r / G's query head h * G + r % G.
template <typename T, int D>
__device__ __forceinline__ void load_query_rows(const PagedDecodeParams& p, const RowSplit& s, int h, int row_base,
                                                T* q_smem) {
  using Tile = SwizzledTile<D>;
  constexpr int kChunks = Tile::kChunks;
  const T* qg = reinterpret_cast<const T*>(p.q);
  const int G = p.group;
  for (int i = threadIdx.x; i < s.nrt * kRowTile * kChunks; i += kThreads) {
    int c = i % kChunks, rr = i / kChunks;
    int row = row_base + rr;
    const T* src = qg;
    int bytes = 0;
    if (row < s.rows && c * 8 < p.head_dim) {  // (columns past a smaller head dim: zeros)
      int b = p.work_readers[s.r0 + row / G];
      src = qg + b * p.q_stride_b + (int64_t)(h * G + row % G) * p.q_stride_h + c * 8;
      bytes = 16;
    }
    cp_async_16(q_smem + (rr / kRowTile) * kRowTile * D + Tile::offset(rr % kRowTile, c * 8), src, bytes);
  }
}

// The running softmax state of a thread's two queries over the tokens it has seen so far: their
// max (log2 domain) and sum, and kFrags mma accumulator fragments of their outputs.
template <int kFrags>
struct SoftmaxState {
  float m[2], l[2];
  float o[kFrags][4];
  __device__ __forceinline__ void reset() {
    m[0] = m[1] = -INFINITY;
    l[0] = l[1] = 0.f;
#pragma unroll
    for (int j = 0; j < kFrags; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
  }
  // moves both maxima to mx; alpha: the factor the sums (done here) and outputs (the caller's) take
  __device__ __forceinline__ void rebase(const float (&mx)[2], float (&alpha)[2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      alpha[r] = m[r] == -INFINITY ? 0.f : exp2_ftz(m[r] - mx[r]);
      m[r] = mx[r];
      l[r] *= alpha[r];
    }
  }
};
// The 16-row path: a thread's rows lane/4 and lane/4 + 8 of its warp's row tile; o[j] holds
// their columns 8 j + 2 (lane % 4) + {0, 1}.
template <int D>
using RowState = SoftmaxState<D / 8>;

// A raw score q.k (times the widening's factor) in the softmax's log2 domain. kSoftcap (a template
// part, so that kernels without a cap execute no select per score): the logit soft-cap.
template <bool kSoftcap>
__device__ __forceinline__ float score_log2(const PagedDecodeParams& p, float raw) {
  if constexpr (kSoftcap) return p.softcap_log2 * tanh_fast(raw * p.softcap_in);
  return raw * p.scale_log2;
}

// One 64-token K/V tile in shared memory (ks, vs) against this warp's 16 query rows: its token
// split's 16-token steps, each S = Q K^T, online softmax (log2 domain), O += P V.
template <typename T, int D, bool kSoftcap>
__device__ __forceinline__ void attend_tile(const PagedDecodeParams& p, const RowSplit& s, const T* q_tile,
                                            const T* ks, const T* vs, int tile, int ntok, RowState<D>& st) {
  using Tile = SwizzledTile<D>;
  const int lane = threadIdx.x % 32;
  for (int step = s.my_split; s.active && step < kTileN / 16; step += s.splits) {
    const int tok0 = tile * kTileN + step * 16;
    if (tok0 >= ntok) break;
    float sc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t a[4], b[4];
      ldmatrix_x4(a, q_tile + Tile::offset((lane % 8) + 8 * ((lane / 8) % 2), kk * 16 + 8 * (lane / 16)));
      ldmatrix_x4(b, ks + Tile::offset(step * 16 + (lane % 8) + 8 * (lane / 16), kk * 16 + 8 * ((lane / 8) % 2)));
      mma_16816<T>(sc[0], a, b[0], b[1]);
      mma_16816<T>(sc[1], a, b[2], b[3]);
    }
    // scale, mask tokens past the end, online softmax (log2 domain)
    float mx[2] = {st.m[0], st.m[1]};
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        int tok = tok0 + j * 8 + 2 * (lane % 4) + (e & 1);
        sc[j][e] = tok < ntok ? score_log2<kSoftcap>(p, sc[j][e]) : -INFINITY;
        mx[e / 2] = fmaxf(mx[e / 2], sc[j][e]);
      }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffff, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffff, mx[r], 2));
    }
    float alpha[2];
    st.rebase(mx, alpha);
    uint32_t pa[4];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      float e0v = exp2_ftz(sc[j][0] - st.m[0]), e1v = exp2_ftz(sc[j][1] - st.m[0]);
      float e2v = exp2_ftz(sc[j][2] - st.m[1]), e3v = exp2_ftz(sc[j][3] - st.m[1]);
      st.l[0] += e0v + e1v;
      st.l[1] += e2v + e3v;
      pa[2 * j] = Pack2<T>::from_floats(e0v, e1v);
      pa[2 * j + 1] = Pack2<T>::from_floats(e2v, e3v);
    }
    // once the running maxima settle (most tiles of a long context), no row of the warp moves
    // and the rescale of O is skipped
    if (__any_sync(0xffffffff, alpha[0] != 1.f || alpha[1] != 1.f)) {
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        st.o[j][0] *= alpha[0]; st.o[j][1] *= alpha[0];
        st.o[j][2] *= alpha[1]; st.o[j][3] *= alpha[1];
      }
    }
#pragma unroll
    for (int dn = 0; dn < D / 16; ++dn) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, vs + Tile::offset(step * 16 + (lane % 8) + 8 * ((lane / 8) % 2), dn * 16 + 8 * (lane / 16)));
      mma_16816<T>(st.o[2 * dn], pa, b[0], b[1]);
      mma_16816<T>(st.o[2 * dn + 1], pa, b[2], b[3]);
    }
  }
}

// Token-major multiplication for tasks of at most 8 query rows (one reader of a GQA group of up
// to 8, or up to 8 readers at group 1): S^T = K Q^T and O^T = V^T P^T put a 16-token step on the
// mma's 16-row side and the queries on its 8-column side. On the 16-row path such a task pads
// its rows to 16; here half the MMAs and ldmatrix loads of K and V do the same work, the query
// fragments stay in registers for the whole task, and the O^T accumulator is half the size.
// Lane l holds queries 2*(l%4) and +1 of tokens l/4 and l/4 + 8 of each step.
// The token-major state: o[i] holds O^T rows d = 16 i + l/4 (+8), the lane's two query columns.
template <int D>
using NarrowState = SoftmaxState<D / 16>;

// The B fragments of Q^T (16 head-dim values x 8 queries) for every 16-column step of D, from
// the query tile in shared memory (rows past the task's end are zero).
template <typename T, int D>
__device__ __forceinline__ void load_query_frags(const T* q_tile, uint32_t (&qf)[D / 16][2]) {
  using Tile = SwizzledTile<D>;
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int kk = 0; kk < D / 16; kk += 2) {
    uint32_t r[4];
    ldmatrix_x4(r, q_tile + Tile::offset(lane % 8, kk * 16 + 8 * (lane / 8)));
    qf[kk][0] = r[0];
    qf[kk][1] = r[1];
    qf[kk + 1][0] = r[2];
    qf[kk + 1][1] = r[3];
  }
}

// The online softmax of a narrow step's scores sc (S^T's accumulator layout, log2 domain; mx: the
// lane's running maxima already taken over its own scores): the step's maxima, the sums, O^T
// rescaled, and P^T as the B operand of O^T += V^T P^T (pb0, pb1: tokens 0-7 and 8-15).
template <typename T, int D>
__device__ __forceinline__ void narrow_softmax(const float (&sc)[4], float (&mx)[2], NarrowState<D>& st,
                                               uint32_t& pb0, uint32_t& pb1) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffff, mx[r], 4));
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffff, mx[r], 8));
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffff, mx[r], 16));
  }
  float alpha[2];
  st.rebase(mx, alpha);
  const float e0 = exp2_ftz(sc[0] - st.m[0]), e1 = exp2_ftz(sc[1] - st.m[1]);
  const float e2 = exp2_ftz(sc[2] - st.m[0]), e3 = exp2_ftz(sc[3] - st.m[1]);
  st.l[0] += e0 + e2;
  st.l[1] += e1 + e3;
  // each 8-token half of P^T is the transpose of what the lane holds
  pb0 = movmatrix_trans(Pack2<T>::from_floats(e0, e1));
  pb1 = movmatrix_trans(Pack2<T>::from_floats(e2, e3));
  if (__any_sync(0xffffffff, alpha[0] != 1.f || alpha[1] != 1.f)) {
#pragma unroll
    for (int i = 0; i < D / 16; ++i) {
      st.o[i][0] *= alpha[0]; st.o[i][1] *= alpha[1];
      st.o[i][2] *= alpha[0]; st.o[i][3] *= alpha[1];
    }
  }
}

// One 64-token K/V tile against a narrow task's queries: warp w takes the tile's 16-token step w.
template <typename T, int D, bool kSoftcap>
__device__ __forceinline__ void attend_tile_narrow(const PagedDecodeParams& p, const uint32_t (&qf)[D / 16][2],
                                                   const T* ks, const T* vs, int tile, int ntok, NarrowState<D>& st) {
  static_assert(kTileN == 16 * (kThreads / 32), "a 16-token step per warp");
  using Tile = SwizzledTile<D>;
  const int lane = threadIdx.x % 32;
  const int step = threadIdx.x / 32;
  const int tok0 = tile * kTileN + step * 16;
  if (tok0 >= ntok) return;
  // S^T, two accumulators so that the D / 16 dependent MMAs form two chains
  float sa[4] = {0.f, 0.f, 0.f, 0.f}, sb[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t a[4];
    ldmatrix_x4(a, ks + Tile::offset(step * 16 + (lane % 8) + 8 * ((lane / 8) % 2), kk * 16 + 8 * (lane / 16)));
    mma_16816<T>(kk % 2 ? sb : sa, a, qf[kk][0], qf[kk][1]);
  }
  // element e: token lane/4 + 8 (e / 2), query 2 (lane % 4) + e % 2
  float sc[4], mx[2] = {st.m[0], st.m[1]};
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const int tok = tok0 + lane / 4 + 8 * (e / 2);
    sc[e] = tok < ntok ? score_log2<kSoftcap>(p, sa[e] + sb[e]) : -INFINITY;
    mx[e % 2] = fmaxf(mx[e % 2], sc[e]);
  }
  uint32_t pb0, pb1;
  narrow_softmax<T, D>(sc, mx, st, pb0, pb1);
#pragma unroll
  for (int dn = 0; dn < D / 16; ++dn) {
    uint32_t a[4];  // V^T: 16 head-dim rows x 16 tokens
    ldmatrix_x4_trans(a, vs + Tile::offset(step * 16 + (lane % 8) + 8 * (lane / 16), dn * 16 + 8 * ((lane / 8) % 2)));
    mma_16816<T>(st.o[dn], a, pb0, pb1);
  }
}

// ---- FP8 pools. The tiles as loaded: each row's 16-byte chunks swizzled by the row, so that the
// narrow path's word loads below (K rows of opposite parity, V rows four apart) fall in different
// banks; widen_tiles reads the same offsets.
template <int D>
__device__ __forceinline__ int fp8_k_chunk_offset(int r, int c) {
  return r * D + 16 * (D >= 128 ? c ^ (4 * (r & 1)) : c);
}
template <int D>
__device__ __forceinline__ int fp8_v_chunk_offset(int r, int c) {
  return r * D + 16 * (D >= 128 ? c ^ (2 * ((r >> 2) & 3)) : c ^ ((r >> 2) & 3));
}

// The narrow path over an FP8 pool widens K and V in registers: a warp's 16-token step reads its
// bytes from the tiles as loaded, whole words at a time, straight into the mma fragments, so an
// FP8 tile needs no widened copy, no pass over shared memory and no barrier. Two permutations make
// each fragment one word of a row (tests/test_fp8_narrow_fragments.py models them lane by lane):
// * head dims: lane t's dims 2t, 2t+1, 2t+8, 2t+9 of 16-dim block kk are the four bytes at
//   16 (4 (kk / 4) + t) + 4 (kk % 4) of a K row, and Q is read in the same order, so S is
//   unchanged; O^T's rows 16 dn + g and + 8 are head dims narrow_v_dim(dn, g, 0 or 1);
// * tokens: S^T's and P^T's logical token l is row narrow_token(l) of the step, so that lane t's
//   four tokens of P^T (2t, 2t+1, 2t+8, 2t+9) are V rows 4t .. 4t+3, whose words four byte
//   permutes turn into one word (four tokens) per head dim.
__device__ __forceinline__ int narrow_token(int l) { return 4 * ((l & 7) >> 1) + (l & 1) + ((l >> 3) << 1); }
template <int D>
__device__ __forceinline__ int narrow_v_dim(int dn, int g, int h) {  // lane group g's D / 8 head dims
  return D == 64 ? 8 * g + 2 * dn + h : 16 * (8 * (dn / 8) + g) + 2 * (dn % 8) + h;
}

// The B fragments of Q^T in the permuted head-dim order, read from the query tile as 16-byte words.
template <typename T, int D>
__device__ __forceinline__ void load_query_frags_fp8(const T* q_tile, uint32_t (&qf)[D / 16][2]) {
  using Tile = SwizzledTile<D>;
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int kb = 0; kb < D / 64; ++kb) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const uint4 w = *reinterpret_cast<const uint4*>(q_tile + Tile::offset(g, 16 * (4 * kb + t) + 8 * half));
      const int kk = 4 * kb + 2 * half;
      qf[kk][0] = w.x;
      qf[kk][1] = w.y;
      qf[kk + 1][0] = w.z;
      qf[kk + 1][1] = w.w;
    }
  }
}

// Four words of four bytes transposed: byte i of out[j] is byte j of w[i].
__device__ __forceinline__ void transpose_bytes4(const uint32_t (&w)[4], uint32_t (&out)[4]) {
  const uint32_t lo01 = __byte_perm(w[0], w[1], 0x5140), hi01 = __byte_perm(w[0], w[1], 0x7362);
  const uint32_t lo23 = __byte_perm(w[2], w[3], 0x5140), hi23 = __byte_perm(w[2], w[3], 0x7362);
  out[0] = __byte_perm(lo01, lo23, 0x5410);
  out[1] = __byte_perm(lo01, lo23, 0x7632);
  out[2] = __byte_perm(hi01, hi23, 0x5410);
  out[3] = __byte_perm(hi01, hi23, 0x7632);
}

// attend_tile_narrow over FP8 K/V tiles as loaded (ks, vs: fp8_k/v_chunk_offset), widened in registers.
template <typename T, typename TKV, int D, bool kSoftcap>
__device__ __forceinline__ void attend_tile_narrow_fp8(const PagedDecodeParams& p, const uint32_t (&qf)[D / 16][2],
                                                       const unsigned char* ks, const unsigned char* vs, int tile,
                                                       int ntok, NarrowState<D>& st) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int step = threadIdx.x / 32;
  const int tok0 = tile * kTileN + step * 16;
  if (tok0 >= ntok) return;
  const int r0 = step * 16;  // the step's first row in the tiles
  const int k_row[2] = {r0 + narrow_token(g), r0 + narrow_token(g + 8)};
  // S^T, two accumulators so that the D / 16 dependent MMAs form two chains
  float sa[4] = {0.f, 0.f, 0.f, 0.f}, sb[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int kb = 0; kb < D / 64; ++kb) {
    const uint4 x0 = *reinterpret_cast<const uint4*>(ks + fp8_k_chunk_offset<D>(k_row[0], 4 * kb + t));
    const uint4 x1 = *reinterpret_cast<const uint4*>(ks + fp8_k_chunk_offset<D>(k_row[1], 4 * kb + t));
    const uint32_t w0[4] = {x0.x, x0.y, x0.z, x0.w}, w1[4] = {x1.x, x1.y, x1.z, x1.w};
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      uint32_t a[4];
      widen_fp8x4<T, TKV>(w0[w], a[0], a[2]);
      widen_fp8x4<T, TKV>(w1[w], a[1], a[3]);
      const int kk = 4 * kb + w;
      mma_16816<T>(kk % 2 ? sb : sa, a, qf[kk][0], qf[kk][1]);
    }
  }
  // element e: logical token g + 8 (e / 2), at row k_row[e / 2]; query 2 (lane % 4) + e % 2
  float sc[4], mx[2] = {st.m[0], st.m[1]};
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const int tok = tok0 + k_row[e / 2] - r0;
    sc[e] = tok < ntok ? score_log2<kSoftcap>(p, sa[e] + sb[e]) : -INFINITY;
    mx[e % 2] = fmaxf(mx[e % 2], sc[e]);
  }
  uint32_t pb0, pb1;
  narrow_softmax<T, D>(sc, mx, st, pb0, pb1);
  // V^T: lane (g, t) reads its head dims' bytes of V rows 4t .. 4t+3 (D / 8 a row, 16 at a time)
  constexpr int kLoadBytes = D / 8 < 16 ? D / 8 : 16;
  constexpr int kWords = kLoadBytes / 4;
#pragma unroll
  for (int kb = 0; kb < (D >= 128 ? D / 128 : 1); ++kb) {
    uint32_t rows[4][kWords];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int r = r0 + 4 * t + i;
      const unsigned char* src = D == 64 ? vs + fp8_v_chunk_offset<D>(r, g / 2) + 8 * (g % 2)
                                         : vs + fp8_v_chunk_offset<D>(r, 8 * kb + g);
      if constexpr (kWords == 4) {
        const uint4 x = *reinterpret_cast<const uint4*>(src);
        rows[i][0] = x.x;
        rows[i][1] = x.y;
        rows[i][2] = x.z;
        rows[i][3] = x.w;
      } else {
        const uint2 x = *reinterpret_cast<const uint2*>(src);
        rows[i][0] = x.x;
        rows[i][1] = x.y;
      }
    }
#pragma unroll
    for (int qw = 0; qw < kWords; ++qw) {
      const uint32_t by_token[4] = {rows[0][qw], rows[1][qw], rows[2][qw], rows[3][qw]};
      uint32_t by_dim[4];  // the lane's head dims 4 qw .. 4 qw + 3, four tokens each
      transpose_bytes4(by_token, by_dim);
#pragma unroll
      for (int pair = 0; pair < 2; ++pair) {  // O^T rows 16 dn + g (h 0) and + 8 (h 1)
        uint32_t a[4];
        widen_fp8x4<T, TKV>(by_dim[2 * pair], a[0], a[2]);
        widen_fp8x4<T, TKV>(by_dim[2 * pair + 1], a[1], a[3]);
        mma_16816<T>(st.o[8 * kb + 2 * qw + pair], a, pb0, pb1);
      }
    }
  }
}

// Where a (work item, reader) pair's partial goes: row `row` of the item is reader row / G's
// query head h * G + row % G, and the reader's chunk owns partials chunk_partial[chunk] ...
// (part_of_item: the task's part of an item the tail split cut).
__device__ __forceinline__ int partial_index(const PagedDecodeParams& p, int r0, int row, int part_of_item) {
  return p.chunk_partial[p.work_partials[r0 + row / p.group]] + part_of_item;
}

// The end of a narrow task: every warp leaves its (O^T, m, l) in ``scratch`` (the free K/V
// ring), then the CTA merges the four token splits in warp order and writes each row's
// normalised partial and natural-log LSE with whole-row stores. kPermutedDims: O^T's rows are
// the FP8 path's head dims (narrow_v_dim).
template <int D, bool kPermutedDims>
__device__ __forceinline__ void finish_narrow(const PagedDecodeParams& p, const RowSplit& s, int h, int part_of_item,
                                              NarrowState<D>& st, float* scratch) {
  constexpr int kStride = D + 4;  // a query's O row, m, l, padding to 16 bytes
  constexpr int kWarps = kThreads / 32;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    st.l[r] += __shfl_xor_sync(0xffffffff, st.l[r], 4);
    st.l[r] += __shfl_xor_sync(0xffffffff, st.l[r], 8);
    st.l[r] += __shfl_xor_sync(0xffffffff, st.l[r], 16);
  }
  float* mine = scratch + warp * kDecodeNarrowRows * kStride;
  const int q0 = 2 * (lane % 4);
#pragma unroll
  for (int i = 0; i < D / 16; ++i) {  // O^T rows 16 i + lane / 4 and + 8: head dims d and d8
    const int d = kPermutedDims ? narrow_v_dim<D>(i, lane / 4, 0) : 16 * i + lane / 4;
    const int d8 = kPermutedDims ? d + 1 : d + 8;
    mine[q0 * kStride + d] = st.o[i][0];
    mine[(q0 + 1) * kStride + d] = st.o[i][1];
    mine[q0 * kStride + d8] = st.o[i][2];
    mine[(q0 + 1) * kStride + d8] = st.o[i][3];
  }
  if (lane < 4) {
    mine[q0 * kStride + D] = st.m[0];
    mine[q0 * kStride + D + 1] = st.l[0];
    mine[(q0 + 1) * kStride + D] = st.m[1];
    mine[(q0 + 1) * kStride + D + 1] = st.l[1];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < s.rows * (D / 4); i += kThreads) {
    const int row = i / (D / 4), d0 = (i % (D / 4)) * 4;
    float m = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) m = fmaxf(m, scratch[(w * kDecodeNarrowRows + row) * kStride + D]);
    float l = 0.f;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {  // warp order: deterministic
      const float* src = scratch + (w * kDecodeNarrowRows + row) * kStride;
      const float mw = src[D];
      const float wt = mw == -INFINITY ? 0.f : exp2f(mw - m);
      const float4 v = *reinterpret_cast<const float4*>(src + d0);
      l += src[D + 1] * wt;
      acc.x += v.x * wt;
      acc.y += v.y * wt;
      acc.z += v.z * wt;
      acc.w += v.w * wt;
    }
    const int part = partial_index(p, s.r0, row, part_of_item);
    const int qh = h * p.group + row % p.group;
    const float inv = l != 0.f ? p.v_scale / l : 0.f;  // (a NaN sum stays NaN)
    *reinterpret_cast<float4*>(p.partial_o + ((int64_t)part * p.num_q_heads + qh) * D + d0) =
        make_float4(acc.x * inv, acc.y * inv, acc.z * inv, acc.w * inv);
    if (d0 == 0) p.partial_lse[(int64_t)part * p.num_q_heads + qh] = l != 0.f ? m * kLn2 + logf(l) : -INFINITY;
  }
}

// The end of a work item (or task): warps that split one row tile's tokens merge through
// ``scratch`` (shared memory no load is writing; the caller syncs before reusing it), then one
// normalised partial per (work item, reader) and its natural-log LSE.
template <int D>
__device__ __forceinline__ void finish_rows(const PagedDecodeParams& p, const RowSplit& s, int h, int row_base,
                                            int part_of_item, RowState<D>& st, float* scratch) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    st.l[r] += __shfl_xor_sync(0xffffffff, st.l[r], 1);
    st.l[r] += __shfl_xor_sync(0xffffffff, st.l[r], 2);
  }
  if (s.splits > 1) {
    constexpr int kStride = D + 2;  // O row, then m and l
    if (s.active && s.my_split > 0) {
      float* base = scratch + ((s.my_split - 1) * s.nrt + s.my_rt) * kRowTile * kStride;
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        int col = j * 8 + 2 * (lane % 4);
        base[(lane / 4) * kStride + col] = st.o[j][0];
        base[(lane / 4) * kStride + col + 1] = st.o[j][1];
        base[(lane / 4 + 8) * kStride + col] = st.o[j][2];
        base[(lane / 4 + 8) * kStride + col + 1] = st.o[j][3];
      }
      if (lane % 4 == 0) {
        base[(lane / 4) * kStride + D] = st.m[0];
        base[(lane / 4) * kStride + D + 1] = st.l[0];
        base[(lane / 4 + 8) * kStride + D] = st.m[1];
        base[(lane / 4 + 8) * kStride + D + 1] = st.l[1];
      }
    }
    __syncthreads();
    if (s.active && s.my_split == 0) {
      for (int sp = 1; sp < s.splits; ++sp) {
        const float* base = scratch + ((sp - 1) * s.nrt + s.my_rt) * kRowTile * kStride;
        float ms[2] = {base[(lane / 4) * kStride + D], base[(lane / 4 + 8) * kStride + D]};
        float ls[2] = {base[(lane / 4) * kStride + D + 1], base[(lane / 4 + 8) * kStride + D + 1]};
        float wa[2], wb[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          float mn = fmaxf(st.m[r], ms[r]);
          wa[r] = mn == -INFINITY ? 0.f : exp2f(st.m[r] - mn);
          wb[r] = mn == -INFINITY ? 0.f : exp2f(ms[r] - mn);
          st.l[r] = st.l[r] * wa[r] + ls[r] * wb[r];
          st.m[r] = mn;
        }
#pragma unroll
        for (int j = 0; j < D / 8; ++j) {
          int col = j * 8 + 2 * (lane % 4);
          st.o[j][0] = st.o[j][0] * wa[0] + base[(lane / 4) * kStride + col] * wb[0];
          st.o[j][1] = st.o[j][1] * wa[0] + base[(lane / 4) * kStride + col + 1] * wb[0];
          st.o[j][2] = st.o[j][2] * wa[1] + base[(lane / 4 + 8) * kStride + col] * wb[1];
          st.o[j][3] = st.o[j][3] * wa[1] + base[(lane / 4 + 8) * kStride + col + 1] * wb[1];
        }
      }
    }
  }
  if (!s.active || s.my_split != 0) return;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    int row = row_base + s.my_rt * kRowTile + lane / 4 + 8 * r;
    if (row >= s.rows) continue;
    int part = partial_index(p, s.r0, row, part_of_item);
    int qh = h * p.group + row % p.group;
    float inv = st.l[r] != 0.f ? p.v_scale / st.l[r] : 0.f;  // (a NaN sum stays NaN)
    float* dst = p.partial_o + ((int64_t)part * p.num_q_heads + qh) * D;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      float2 val = make_float2(st.o[j][2 * r] * inv, st.o[j][2 * r + 1] * inv);
      *reinterpret_cast<float2*>(dst + j * 8 + 2 * (lane % 4)) = val;
    }
    if (lane % 4 == 0)
      p.partial_lse[(int64_t)part * p.num_q_heads + qh] = st.l[r] != 0.f ? st.m[r] * kLn2 + logf(st.l[r]) : -INFINITY;
  }
}

// An FP8 K/V tile pair of the ring (D bytes a row, fp8_k/v_chunk_offset) widened into the swizzled
// 16-bit tiles the wide path's MMA loops read: each thread widens 16-byte chunks (16 values) into
// two 16-byte chunks.
template <typename T, typename TKV, int D>
__device__ __forceinline__ void widen_tiles(const unsigned char* ring_stage, T* widened) {
  using Tile = SwizzledTile<D>;
  constexpr int kChunksPerRow = D / 16;
  constexpr int kChunksPerTile = kTileN * kChunksPerRow;
  for (int i = threadIdx.x; i < 2 * kChunksPerTile; i += kThreads) {
    const int kv = i / kChunksPerTile, r = (i % kChunksPerTile) / kChunksPerRow, c = i % kChunksPerRow;
    const int at = kv == 0 ? fp8_k_chunk_offset<D>(r, c) : kTileN * D + fp8_v_chunk_offset<D>(r, c);
    const uint4 raw = *reinterpret_cast<const uint4*>(ring_stage + at);
    uint4 a, b;
    widen_fp8x4<T, TKV>(raw.x, a.x, a.y);
    widen_fp8x4<T, TKV>(raw.y, a.z, a.w);
    widen_fp8x4<T, TKV>(raw.z, b.x, b.y);
    widen_fp8x4<T, TKV>(raw.w, b.z, b.w);
    T* tile = widened + kv * kTileN * D;
    *reinterpret_cast<uint4*>(tile + Tile::offset(r, c * 16)) = a;
    *reinterpret_cast<uint4*>(tile + Tile::offset(r, c * 16 + 8)) = b;
  }
}

// One task of a work item (kDecodeRowsPerCta rows, or one part of a one-reader item that the
// tail split cut; see PagedDecodeParams::chunk_partial) for KV head h. TKV: the pool's element
// type, T or an FP8 type (loaded as is; widened in registers by narrow tasks, in shared memory
// tile by tile by wide ones, whose tiles several warps read).
template <typename T, typename TKV, int D, bool kSoftcap>
__device__ __forceinline__ void decode_work_item(const PagedDecodeParams& p, const int w, const int h,
                                                 const int task_rows, unsigned char* smem_raw) {
  using Tile = SwizzledTile<D>;
  using Smem = DecodeSmem<D, TKV>;
  constexpr bool kFp8 = kIsFp8<TKV>;
  constexpr int kChunks = D * (int)sizeof(TKV) / 16;  // 16-byte chunks of a K/V row as loaded
  // Each thread copies two 16-byte columns of a tile row, so a row's slot lookup and address
  // arithmetic serve two copies: on the H200 this read 3-5% more of cuDNN's speed with 8 KV heads
  // than one column per thread (docs/performance.md).
  constexpr int kChunksPerThread = 2;
  constexpr int kThreadsPerRow = kChunks / kChunksPerThread;
  constexpr int kRowsPerPass = kThreads / kThreadsPerRow;
  constexpr int kRowsPerThread = kTileN / kRowsPerPass;  // tile rows each thread copies
  T* widened = reinterpret_cast<T*>(smem_raw + Smem::kRingBytes);  // FP8 pools: the tiles the MMAs read
  T* q_smem = reinterpret_cast<T*>(smem_raw + Smem::kQOffset);

  const int row_base = max(task_rows, 0);
  const RowSplit s = row_split(p, w, row_base);
  if (row_base >= s.rows) return;
  int ntok = p.work_ntok[w], part_of_item = 0;
  int first = 0;
  if (task_rows < 0) {  // part sp of n: a contiguous share of the item's 64-token tiles
    const int code = ~task_rows;
    const int sp = (code >> 8) & 0xff, n = code & 0xff;
    const int tiles = (ntok + kTileN - 1) / kTileN;
    int t0 = sp * tiles / n, t1 = (sp + 1) * tiles / n;
    if (code & kDecodeSplitGuidedBit) {  // the first three quarters, then the last quarter (cut evenly)
      const int q = (tiles + 3) / 4, head = tiles - q;
      t0 = sp == 0 ? 0 : head + (sp - 1) * q / (n - 1);
      t1 = sp == 0 ? head : head + sp * q / (n - 1);
    }
    first = t0 * kTileN;
    ntok = min(ntok, t1 * kTileN) - first;
    part_of_item = sp;
  }
  // the task's positions in its item's req_to_token row
  const int* slots = p.req_to_token + (int64_t)p.work_row[w] * p.r2t_stride + p.work_pos0[w] + first;
  load_query_rows<T, D>(p, s, h, row_base, q_smem);

  const TKV* kg = reinterpret_cast<const TKV*>(p.k) + (int64_t)h * p.kv_stride_head;
  const TKV* vg = reinterpret_cast<const TKV*>(p.v) + (int64_t)h * p.kv_stride_head;
  const int ntiles = (ntok + kTileN - 1) / kTileN;
  // Thread i copies 16-byte columns i % kThreadsPerRow + j * kThreadsPerRow of tile rows
  // i / kThreadsPerRow + k * kRowsPerPass (one copy instruction covers whole 128-byte lines).
  const int my_c = threadIdx.x % kThreadsPerRow, my_r = threadIdx.x / kThreadsPerRow;
  // The slots of the next tile to issue, loaded a tile ahead so their latency hides.
  int next_slot[kRowsPerThread];
  auto fetch_slots = [&](int tile) {
#pragma unroll
    for (int k = 0; k < kRowsPerThread; ++k) {
      const int t = tile * kTileN + my_r + k * kRowsPerPass;
      next_slot[k] = t < ntok ? slots[t] : -1;
    }
  };
  // SGLang's pool (linear_rows): a slot's row is the head's base plus slot x the row's bytes, one
  // wide multiply-add for K and one for V after a 32-bit clamp of the slot. The general path
  // below clamps in 64 bits and splits each row's slot into a page and an offset; the loop's
  // earlier form, which took that path for every pool, made the kernel execute a third more
  // instructions (ncu: 1,010 M against 763 M, docs/performance.md).
  const bool linear_rows = p.linear_rows;
  const int row_bytes = (int)(p.kv_stride_tok * sizeof(TKV));
  const int last_slot = (int)min(p.num_slots - 1, (int64_t)INT_MAX);
  const char* k_col = reinterpret_cast<const char*>(kg) + my_c * 16;
  const char* v_col = reinterpret_cast<const char*>(vg) + my_c * 16;
  // A head dim below the kernel's (heuristics.h): this thread's chunks past it load as zeros. Every
  // head dim a kernel serves covers the first half of its columns, so only chunks of the second
  // half test it (none at head dim 64), against the launch parameter where the copy is issued.
  constexpr int kHalfChunks = kChunks / 2;
  static_assert(kernel_head_dim_for(D / 2) != D, "every head dim the kernel serves covers its first half");
  auto chunk_in_row = [&](int j) {
    return D == 64 || (j + 1) * kThreadsPerRow <= kHalfChunks ||
           (my_c + j * kThreadsPerRow) * 16 < p.head_dim * (int)sizeof(TKV);
  };
  // a 16-byte chunk's byte offset in a K or V tile: swizzled 16-bit rows (read by ldmatrix), or
  // FP8 rows (fp8_k/v_chunk_offset)
  auto k_chunk_at = [](int r, int chunk) { return kFp8 ? fp8_k_chunk_offset<D>(r, chunk) : Tile::offset(r, chunk * 8) * 2; };
  auto v_chunk_at = [](int r, int chunk) { return kFp8 ? fp8_v_chunk_offset<D>(r, chunk) : Tile::offset(r, chunk * 8) * 2; };
  auto load_tile = [&](int tile) {
    unsigned char* ks = smem_raw + (tile % kStages) * 2 * Smem::kTileBytes;
    unsigned char* vs = ks + Smem::kTileBytes;
#pragma unroll
    for (int k = 0; k < kRowsPerThread; ++k) {
      const int r = my_r + k * kRowsPerPass;
      const int t = tile * kTileN + r;
      const int bytes = t < ntok ? 16 : 0;  // zero-fill past the end: 0 * garbage could be NaN
      int64_t off = 0;  // the row's byte offset from the head's base
      if (linear_rows) {
        const uint32_t slot = (uint32_t)min(max(next_slot[k], 0), last_slot);  // (a 32 x 32-bit wide multiply)
        off = (int64_t)((uint64_t)slot * (uint32_t)row_bytes);
      } else {
        off = t < ntok ? slot_offset(p, next_slot[k]) * (int64_t)sizeof(TKV) : 0;
      }
      const char* k_row = k_col + off;
      const char* v_row = v_col + off;
#pragma unroll
      for (int j = 0; j < kChunksPerThread; ++j) {
        const int c = my_c + j * kThreadsPerRow;
        const int chunk_bytes = chunk_in_row(j) ? bytes : 0;
        cp_async_16(ks + k_chunk_at(r, c), k_row + j * kThreadsPerRow * 16, chunk_bytes);
        cp_async_16(vs + v_chunk_at(r, c), v_row + j * kThreadsPerRow * 16, chunk_bytes);
      }
    }
  };
  // The K/V stream: tile n + 1's copies fly while tile n is multiplied by attend(n, ks, vs), the
  // tiles as loaded, or (widen_in_smem: an FP8 pool's wide tasks) the widened 16-bit tiles.
  auto stream_tiles = [&](auto widen_in_smem, auto&& attend) {
    fetch_slots(0);
    load_tile(0);
    cp_async_commit();
    fetch_slots(1);
    for (int tile = 0; tile < ntiles; ++tile) {
      if (tile + 1 < ntiles) {
        load_tile(tile + 1);
        fetch_slots(tile + 2);
      }
      cp_async_commit();
      cp_async_wait<1>();
      __syncthreads();
      const unsigned char* stage = smem_raw + (tile % kStages) * 2 * Smem::kTileBytes;
      if constexpr (decltype(widen_in_smem)::value) {
        widen_tiles<T, TKV, D>(stage, widened);
        __syncthreads();
        attend(tile, reinterpret_cast<const unsigned char*>(widened),
               reinterpret_cast<const unsigned char*>(widened + kTileN * D));
      } else {
        attend(tile, stage, stage + Smem::kTileBytes);
      }
      __syncthreads();  // the stage (and the widened tiles) are rewritten next iteration
    }
  };
  // (after the stream the K/V ring, and the widened tiles, are free: the finishing merge's scratch)
  float* scratch = reinterpret_cast<float*>(smem_raw);
  auto as_t = [](const unsigned char* tile) { return reinterpret_cast<const T*>(tile); };
  if (s.rows <= kDecodeNarrowRows) {  // one task holds the item's rows: row_base is 0
    NarrowState<D> st;
    st.reset();
    uint32_t qf[D / 16][2];
    stream_tiles(std::false_type{}, [&](int tile, const unsigned char* ks, const unsigned char* vs) {
      if constexpr (kFp8) {
        if (tile == 0) load_query_frags_fp8<T, D>(q_smem, qf);  // landed with tile 0
        attend_tile_narrow_fp8<T, TKV, D, kSoftcap>(p, qf, ks, vs, tile, ntok, st);
      } else {
        if (tile == 0) load_query_frags<T, D>(q_smem, qf);
        attend_tile_narrow<T, D, kSoftcap>(p, qf, as_t(ks), as_t(vs), tile, ntok, st);
      }
    });
    finish_narrow<D, kFp8>(p, s, h, part_of_item, st, scratch);
  } else {
    RowState<D> st;
    st.reset();
    const T* q_tile = q_smem + s.my_rt * kRowTile * D;
    stream_tiles(std::integral_constant<bool, kFp8>{}, [&](int tile, const unsigned char* ks, const unsigned char* vs) {
      attend_tile<T, D, kSoftcap>(p, s, q_tile, as_t(ks), as_t(vs), tile, ntok, st);
    });
    finish_rows<D>(p, s, h, row_base, part_of_item, st, scratch);
  }
}

// Programmatic dependent launch of the merge kernel: each decode CTA signals at its start, so once
// the last one has started, the merge blocks are launched into the SM slots the decode tail leaves
// free and wait there (merge_wait) for the whole decode grid to finish and flush, instead of being
// launched after it.
__device__ __forceinline__ void allow_merge_launch() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }
__device__ __forceinline__ void merge_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }

// A fixed grid loops over the planner's (work item, first row) tasks. The KV head is
// the grid's fastest index (blockIdx.x), so the CTAs resident at one time read every head of
// the same tokens: SGLang's pool keeps a token's heads side by side ([slots, Hkv, D]), and
// reading them together keeps DRAM rows open instead of visiting each row once per head.
template <typename T, typename TKV, int D, bool kSoftcap>
__global__ void __launch_bounds__(kThreads, kCtasPerSm<D>) paged_decode_table_kernel(const PagedDecodeParams p) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  allow_merge_launch();
  const int num_tasks = *p.num_tasks_dev;
  const int h = blockIdx.x;
  const int first = blockIdx.y;
  const int stride = gridDim.y;
  for (int t = first; t < num_tasks; t += stride) {
    decode_work_item<T, TKV, D, kSoftcap>(p, p.tasks[2 * t], h, p.tasks[2 * t + 1], smem_raw);
    __syncthreads();
  }
}

// One block per (request, query head). The block's kMergeSplit groups of kLanes lanes (D / 4
// lanes of 4 columns, but 32 lanes of 8 at head dim 256: a group stays within one warp's
// shuffles) take every kMergeSplit-th partial: pass 1 finds the largest LSE, pass 2 sums weight *
// partial with independent loads; the groups' sums are then added in group order through shared
// memory. Every reduction has a fixed shape, so results are deterministic. Few requests with many
// partials (2 x 128K tokens: 64 chunks each, more after the tail split) leave few blocks, each a
// chain of dependent load rounds: 16 groups keep that chain short (with 4, the merge of such a
// batch took 12-22 us on the H200, against 5 for other batches); many blocks run better with 4.
// The binding picks (PagedDecodeParams::merge_groups).
template <int D>
constexpr int kMergeLanes = D / 4 < 32 ? D / 4 : 32;  // lanes per group: 16 (D=64), 32 (D=128, 256)

template <typename T, int D, int kMergeSplit>
__global__ void __launch_bounds__(kMergeLanes<D> * kMergeSplit) merge_partials_kernel(const PagedDecodeParams p) {
  constexpr int kLanes = kMergeLanes<D>;
  constexpr int kVec = D / 4 / kLanes;  // float4 columns per lane
  __shared__ float s_m[kMergeSplit], s_l[kMergeSplit];
  __shared__ float4 s_acc[kMergeSplit][kVec][kLanes];
  const int b = blockIdx.x, head = blockIdx.y;
  const int x = threadIdx.x, g = threadIdx.y;
  // the plan was complete before the decode kernel started: read it while the decode finishes
  // request b's chunks, then their partials (a split chunk has several), in merge order
  const int i0 = p.chunk_partial[p.merge_offsets[b]], i1 = p.chunk_partial[p.merge_offsets[b + 1]];
  merge_wait();  // the partials
  const float* lse_col = p.partial_lse + head;
  auto part_at = [](int i) -> int64_t { return i; };
  auto lse_at = [&](int i) { return lse_col[part_at(i) * p.num_q_heads]; };

  // pass 1: the block's largest LSE; a NaN partial (NaN or +inf scores) makes it NaN, and so the
  // output and LSE (fmaxf alone would drop it and, were every partial NaN, return an empty row)
  float m = -INFINITY;
  for (int i = i0 + g * kLanes + x; i < i1; i += kLanes * kMergeSplit) m = nan_max(m, lse_at(i));
#pragma unroll
  for (int off = kLanes / 2; off > 0; off /= 2) m = nan_max(m, __shfl_xor_sync(0xffffffff, m, off, kLanes));
  if (x == 0) s_m[g] = m;
  __syncthreads();
  m = s_m[0];
#pragma unroll
  for (int j = 1; j < kMergeSplit; ++j) m = nan_max(m, s_m[j]);

  // pass 2: this group's partials i0 + g, i0 + g + kSplit, ...; lane x has columns 4 (x + v kLanes) ..
  float l = 0.f;
  float4 acc[kVec];
  const int d0 = x * 4;
#pragma unroll
  for (int v = 0; v < kVec; ++v) acc[v] = make_float4(0.f, 0.f, 0.f, 0.f);
  if (m != -INFINITY) {
#pragma unroll 8
    for (int i = i0 + g; i < i1; i += kMergeSplit) {
      const int64_t part = part_at(i);
      const float w = __expf(lse_col[part * p.num_q_heads] - m);
      const float* src = p.partial_o + (part * p.num_q_heads + head) * D + d0;
      l += w;
#pragma unroll
      for (int v = 0; v < kVec; ++v) {
        const float4 o = *reinterpret_cast<const float4*>(src + v * 4 * kLanes);
        acc[v].x += w * o.x;
        acc[v].y += w * o.y;
        acc[v].z += w * o.z;
        acc[v].w += w * o.w;
      }
    }
  }
#pragma unroll
  for (int v = 0; v < kVec; ++v) s_acc[g][v][x] = acc[v];
  if (x == 0) s_l[g] = l;
  __syncthreads();
  if (g != 0) return;
  l = 0.f;
#pragma unroll
  for (int v = 0; v < kVec; ++v) acc[v] = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
  for (int j = 0; j < kMergeSplit; ++j) {  // group order: deterministic
    l += s_l[j];
#pragma unroll
    for (int v = 0; v < kVec; ++v) {
      acc[v].x += s_acc[j][v][x].x;
      acc[v].y += s_acc[j][v][x].y;
      acc[v].z += s_acc[j][v][x].z;
      acc[v].w += s_acc[j][v][x].w;
    }
  }
  const float inv = l != 0.f ? 1.f / l : 0.f;
  T* out = reinterpret_cast<T*>(p.out) + b * p.out_stride_b + (int64_t)head * p.out_stride_h + d0;
#pragma unroll
  for (int v = 0; v < kVec; ++v) {
    if (d0 + v * 4 * kLanes >= p.head_dim) break;  // (a head dim below the kernel's)
    T* dst = out + v * 4 * kLanes;
    dst[0] = Pack2<T>::from_float(acc[v].x * inv);
    dst[1] = Pack2<T>::from_float(acc[v].y * inv);
    dst[2] = Pack2<T>::from_float(acc[v].z * inv);
    dst[3] = Pack2<T>::from_float(acc[v].w * inv);
  }
  if (x == 0) p.lse[(int64_t)b * p.num_q_heads + head] = l != 0.f ? m + logf(l) : -INFINITY;
}

template <typename T, typename TKV, int D>
cudaError_t launch(const PagedDecodeParams& params, cudaStream_t stream) {
  if (params.batch == 0) return cudaSuccess;
  if (params.tasks == nullptr || kernel_head_dim_for(params.head_dim) != D) return cudaErrorInvalidValue;
  PagedDecodeParams p = params;
  p.scale_log2 *= widened_unscale<T, TKV>();  // the MMAs see K and V times 2^-112 (fp8.cuh)
  p.v_scale *= widened_unscale<T, TKV>();
  p.softcap_in = p.softcap_log2 > 0.f ? p.scale_log2 / p.softcap_log2 : 0.f;
  {
    const size_t smem = DecodeSmem<D, TKV>::bytes(p.max_rows);
    auto kernel = p.softcap_log2 > 0.f ? paged_decode_table_kernel<T, TKV, D, true>
                                       : paged_decode_table_kernel<T, TKV, D, false>;
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (err != cudaSuccess) return err;
    const dim3 grid(p.num_kv_heads, p.grid_work, 1);
    kernel<<<grid, kThreads, smem, stream>>>(p);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(p.batch, p.num_q_heads);
  const bool few = p.merge_groups == kDecodeMergeGroupsFew;
  config.blockDim = dim3(kMergeLanes<D>, few ? kDecodeMergeGroupsFew : kDecodeMergeGroupsMany);
  config.stream = stream;
  cudaLaunchAttribute pdl;
  pdl.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  pdl.val.programmaticStreamSerializationAllowed = 1;
  config.attrs = &pdl;
  config.numAttrs = 1;  // a dependent of the decode kernel launched above
  const cudaError_t merged = few ? cudaLaunchKernelEx(&config, merge_partials_kernel<T, D, kDecodeMergeGroupsFew>, p)
                                  : cudaLaunchKernelEx(&config, merge_partials_kernel<T, D, kDecodeMergeGroupsMany>, p);
  return merged;
}

template <typename T, typename TKV>
cudaError_t launch_head_dim(const PagedDecodeParams& p, int head_dim, cudaStream_t stream) {
  if (head_dim == 64) return launch<T, TKV, 64>(p, stream);
  if (head_dim == 128) return launch<T, TKV, 128>(p, stream);
  if (head_dim == 256) return launch<T, TKV, 256>(p, stream);
  return cudaErrorInvalidValue;
}

template <typename T>
cudaError_t launch_kv(const PagedDecodeParams& p, int kv_dtype, int head_dim, cudaStream_t stream) {
  if (kv_dtype == kDecodeKvSameAsQuery) return launch_head_dim<T, T>(p, head_dim, stream);
  if (kv_dtype == kDecodeKvFp8E4m3) return launch_head_dim<T, __nv_fp8_e4m3>(p, head_dim, stream);
  if (kv_dtype == kDecodeKvFp8E5m2) return launch_head_dim<T, __nv_fp8_e5m2>(p, head_dim, stream);
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t paged_decode_launch(const PagedDecodeParams& p, int dtype, int kv_dtype, int head_dim,
                                cudaStream_t stream) {
  if (dtype == 0) return launch_kv<__half>(p, kv_dtype, head_dim, stream);
  if (dtype == 1) return launch_kv<__nv_bfloat16>(p, kv_dtype, head_dim, stream);
  return cudaErrorInvalidValue;
}

}  // namespace flashcore
