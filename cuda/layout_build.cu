// GPU builds of the CSR page layout and of its sharing plan (include/flashcore/layout_build.h).
// Both reproduce the torch code of sglang_flashcore/layout.py exactly; the GPU tests compare
// every output array.
//
// from_sglang (2 launches + a scan; 4 + a scan with the slot range): count (runs a tile), scan |
// host reads the run count | write (runs a tile), finalize (counts = end - start, row offsets).
// plan_sharing: keys -> sort -> unique ids -> per-run readers, chains and work order -> chain
// starts (max scan) -> work items -> reader and partial lists -> merge order. Up to kFusedRuns
// runs, one CTA does it all in one launch (a block radix sort, block scans); above, 9 grid
// kernels, a device radix sort and 6 device scans. The sizes stay on the device until the host
// reads scalars.
#include <cub/block/block_radix_sort.cuh>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#include <cuda/functional>
#include <cuda/std/functional>

#include <climits>

#include "flashcore/layout_build.h"
#include "flashcore/page_table.cuh"

namespace flashcore {
namespace {

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t n) { return (unsigned)((n + kThreads - 1) / kThreads); }

// torch's floor division and modulo (slots are non-negative unless the table is corrupt)
__device__ __forceinline__ int64_t floor_div(int64_t x, int64_t d) { return x >= 0 ? x / d : -((-x + d - 1) / d); }

// Token t (slot s, previous token's slot prev) starts a run: the first token, a new page, or a
// slot that does not follow the previous one inside the page.
__device__ __forceinline__ bool starts_run(int64_t t, int64_t s, int64_t prev, int page_size) {
  if (t == 0) return true;
  const int64_t page = floor_div(s, page_size), prev_page = floor_div(prev, page_size);
  return page != prev_page || s - page * page_size != prev - prev_page * page_size + 1;
}

// ------------------------------------------------------------------ from_sglang
// (with want_range: init before the count, finish after the scan)

// A thread's kCsrTokensPerThread tokens from t0 (t0 < r.len), and the token after them: their
// slots and whether each starts a run (false past the request). Returns the runs its own tokens
// start. The count and the write pass both cut runs here, so they cannot disagree.
__device__ __forceinline__ int thread_runs(const CsrFromTableArgs& a, const Request& r, int64_t t0,
                                           int64_t (&slot)[kCsrTokensPerThread + 1],
                                           bool (&start)[kCsrTokensPerThread + 1]) {
  int starts = 0;
  int64_t prev = t0 > 0 ? slot_at(a, r.row, t0 - 1) : 0;
#pragma unroll
  for (int k = 0; k <= kCsrTokensPerThread; ++k) {
    const bool in = t0 + k < r.len;
    slot[k] = in ? slot_at(a, r.row, t0 + k) : 0;
    start[k] = in && starts_run(t0 + k, slot[k], prev, a.page_size);
    if (k < kCsrTokensPerThread) starts += start[k];
    prev = slot[k];
  }
  return starts;
}
__global__ void csr_init_kernel(CsrCountBuffers buf) {
  buf.scalars[1] = LLONG_MAX;
  buf.scalars[2] = LLONG_MIN;
}

__global__ void __launch_bounds__(kCsrThreads) csr_count_kernel(CsrFromTableArgs a, CsrCountBuffers buf) {
  const int b = blockIdx.y;
  const int64_t tile_start = (int64_t)blockIdx.x * kCsrTileTokens;
  const Request r = load_request(a, b);
  int* count_out = buf.tile_counts + (int64_t)b * a.tiles_per_row + blockIdx.x;
  if (b == 0 && blockIdx.x == 0 && threadIdx.x == 0)
    buf.tile_counts[(int64_t)a.batch * a.tiles_per_row] = 0;  // the scan's padding: tile_offsets' last = runs
  if (tile_start >= r.len) {
    if (threadIdx.x == 0) *count_out = 0;
    return;
  }
  const int64_t t0 = tile_start + threadIdx.x * kCsrTokensPerThread;
  int starts = 0;
  long long lo = LLONG_MAX, hi = LLONG_MIN;
  if (t0 < r.len) {
    int64_t slot[kCsrTokensPerThread + 1];
    bool start[kCsrTokensPerThread + 1];
    starts = thread_runs(a, r, t0, slot, start);
#pragma unroll
    for (int k = 0; k < kCsrTokensPerThread; ++k) {
      if (t0 + k < r.len) {
        lo = min(lo, (long long)slot[k]);
        hi = max(hi, (long long)slot[k]);
      }
    }
  }
  using Reduce = cub::BlockReduce<long long, kCsrThreads>;
  __shared__ typename Reduce::TempStorage storage;
  const long long total = Reduce(storage).Sum((long long)starts);
  if (threadIdx.x == 0) *count_out = (int)total;
  if (!a.want_range) return;
  __syncthreads();
  const long long tile_lo = Reduce(storage).Reduce(lo, cuda::minimum<>{});
  __syncthreads();
  const long long tile_hi = Reduce(storage).Reduce(hi, cuda::maximum<>{});
  if (threadIdx.x == 0) {
    atomicMin(buf.scalars + 1, tile_lo);
    atomicMax(buf.scalars + 2, tile_hi);
  }
}

__global__ void csr_finish_count_kernel(CsrCountBuffers buf, int tiles) { buf.scalars[0] = buf.tile_offsets[tiles]; }

__global__ void __launch_bounds__(kCsrThreads) csr_write_kernel(CsrFromTableArgs a, const int* tile_offsets,
                                                                 CsrOutputs out) {
  const int b = blockIdx.y;
  const int64_t tile_start = (int64_t)blockIdx.x * kCsrTileTokens;
  const Request r = load_request(a, b);
  if (tile_start >= r.len) return;
  const int64_t t0 = tile_start + threadIdx.x * kCsrTokensPerThread;
  int64_t slot[kCsrTokensPerThread + 1];  // this thread's tokens and the next one
  bool start[kCsrTokensPerThread + 1];
  const int starts = t0 < r.len ? thread_runs(a, r, t0, slot, start) : 0;
  using Scan = cub::BlockScan<int, kCsrThreads>;
  __shared__ typename Scan::TempStorage storage;
  int before;
  Scan(storage).ExclusiveSum(starts, before);
  if (t0 >= r.len) return;
  // entries of the runs this thread starts; a token before its first start continues entry base - 1
  const int64_t base = tile_offsets[(int64_t)b * a.tiles_per_row + blockIdx.x] + before;
  int seen = 0;
#pragma unroll
  for (int k = 0; k < kCsrTokensPerThread; ++k) {
    const int64_t t = t0 + k;
    if (t >= r.len) break;
    if (start[k]) {
      const int64_t e = base + seen++;
      const int64_t page = floor_div(slot[k], a.page_size);
      out.cols[e] = (int)page;
      out.page_offsets[e] = (int)(slot[k] - page * a.page_size);
      out.positions[e] = (int)t;
    }
    if (t + 1 == r.len || start[k + 1]) out.counts[base + seen - 1] = (int)(t + 1);  // the run's end, for now
  }
}

__global__ void csr_finalize_kernel(CsrFromTableArgs a, const int* tile_offsets, int64_t nnz, CsrOutputs out) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < nnz) {
    out.counts[i] -= out.positions[i];
    out.staging_ids[i] = -1;
  }
  if (i < a.batch) {
    out.row_offsets[i] = tile_offsets[i * a.tiles_per_row];
    out.seq_lens[i] = (int)load_request(a, (int)i).len;
  }
  if (i == a.batch) out.row_offsets[i] = (int)nnz;
}

// ------------------------------------------------------------------ plan_sharing
// Scratch arrays of n + 1 ints each (n = runs), carved from the workspace in this order.
enum PlanArray : int {
  kRows, kIds, kSortedIds, kFlags, kScan, kUnique, kFirst, kRank, kSegStart, kFirstEntry,
  kHeadAt, kLastHead, kChained, kSource, kPrevMin, kPrevMax, kRunPlace, kPlanArrays
};

// Three sizes scanned together (one scan instead of three): x, work item w's readers (at w);
// y, run k's readers; z, run k's tokens. Their exclusive scan gives work_reader_offsets,
// reader_offsets and entry_token_offsets.
struct SumInt3 {
  __device__ __forceinline__ int3 operator()(const int3& p, const int3& q) const {
    return make_int3(p.x + q.x, p.y + q.y, p.z + q.z);
  }
};

struct PlanScratch {
  int* a[kPlanArrays];
  int3* sizes;    // [n + 1]
  int3* offsets;  // [n + 1]
  unsigned long long* keys;
  unsigned long long* sorted_keys;
  void* temp;
  size_t temp_bytes;
};

size_t align16(size_t x) { return (x + 15) & ~(size_t)15; }

size_t plan_temp_bytes(int n, int end_bit) {
  size_t most = 0, bytes = 0;
  cub::DeviceRadixSort::SortPairs(nullptr, bytes, (unsigned long long*)nullptr, (unsigned long long*)nullptr,
                                  (int*)nullptr, (int*)nullptr, n, 0, end_bit);
  most = bytes > most ? bytes : most;
  cub::DeviceScan::ExclusiveSum(nullptr, bytes, (int*)nullptr, (int*)nullptr, n + 1);
  most = bytes > most ? bytes : most;
  cub::DeviceScan::InclusiveScan(nullptr, bytes, (int*)nullptr, (int*)nullptr, cuda::maximum<>{}, n + 1);
  most = bytes > most ? bytes : most;
  cub::DeviceScan::ExclusiveScan(nullptr, bytes, (int3*)nullptr, (int3*)nullptr, SumInt3{}, make_int3(0, 0, 0), n + 1);
  return bytes > most ? bytes : most;
}

// Bytes of the scratch arrays (the rest of the workspace is cub's temporary storage).
size_t plan_array_bytes(int n) {
  return kPlanArrays * align16(sizeof(int) * (n + 1)) + 2 * align16(sizeof(int3) * (n + 1)) +
         2 * align16(sizeof(unsigned long long) * n);
}

PlanScratch carve_plan(void* workspace, size_t workspace_bytes, int n) {
  PlanScratch s;
  char* p = static_cast<char*>(workspace);
  for (int i = 0; i < kPlanArrays; ++i, p += align16(sizeof(int) * (n + 1))) s.a[i] = reinterpret_cast<int*>(p);
  s.sizes = reinterpret_cast<int3*>(p);
  p += align16(sizeof(int3) * (n + 1));
  s.offsets = reinterpret_cast<int3*>(p);
  p += align16(sizeof(int3) * (n + 1));
  s.keys = reinterpret_cast<unsigned long long*>(p);
  p += align16(sizeof(unsigned long long) * n);
  s.sorted_keys = reinterpret_cast<unsigned long long*>(p);
  p += align16(sizeof(unsigned long long) * n);
  s.temp = p;
  s.temp_bytes = workspace_bytes - plan_array_bytes(n);
  return s;
}

// Each step of the plan is a function of one index: a kernel runs it over the grid (large plans),
// the fused kernel loops over it with one CTA (small ones).
using PlanStep = void (*)(const SharingPlanArgs&, const PlanScratch&, const SharingPlanOutputs&, int);

// Entry e's request (a binary search of row_offsets: the last row whose offset is <= e).
__device__ __forceinline__ int entry_row(const SharingPlanArgs& a, int e) {
  int lo = 0, hi = a.batch;
  while (hi - lo > 1) {
    const int mid = (lo + hi) >> 1;
    if (a.row_offsets[mid] <= e) lo = mid; else hi = mid;
  }
  return lo;
}

__device__ __forceinline__ unsigned long long entry_key(const SharingPlanArgs& a, int e) {
  const unsigned long long slot = (unsigned long long)a.cols[e] * a.page_size + a.page_offsets[e];
  return slot << 32 | (unsigned long long)a.positions[e] << 11 | (unsigned long long)a.counts[e];
}

// Entry e: its request and its packed key (the input of the key sort).
__device__ void keys_step(const SharingPlanArgs& a, const PlanScratch& s, const SharingPlanOutputs& out, int e) {
  if (e == 0) out.scalars[3] = 0;  // the largest reader set, an atomic maximum (the others are assigned)
  if (e >= a.nnz) return;
  s.a[kRows][e] = entry_row(a, e);
  s.a[kIds][e] = e;
  s.keys[e] = entry_key(a, e);
}

// flags[i]: sorted entry i starts a new key. (flags[n] = 0 pads the scan.)
__device__ void flags_step(const SharingPlanArgs& a, const PlanScratch& s, const SharingPlanOutputs&, int i) {
  if (i < a.nnz) s.a[kFlags][i] = i == 0 || s.sorted_keys[i] != s.sorted_keys[i - 1];
  if (i == a.nnz) s.a[kFlags][i] = 0;
}

// Unique ids in key order (the exclusive scan of the flags, less one off a run's first entry);
// each run's first sorted entry (its smallest entry: the sort is stable).
__device__ void unique_step(const SharingPlanArgs& a, const PlanScratch& s, const SharingPlanOutputs& out, int i) {
  const int n = a.nnz;
  if (i >= n) return;
  const int first = s.a[kFlags][i], u = s.a[kScan][i] + first - 1, e = s.a[kSortedIds][i];
  s.a[kUnique][e] = u;
  s.a[kFirst][e] = first;
  if (first) {
    s.a[kSegStart][u] = i;
    s.a[kFirstEntry][u] = e;
    s.a[kPrevMin][u] = INT_MAX;
    s.a[kPrevMax][u] = -1;
  }
  if (i == n - 1) {
    out.scalars[0] = u + 1;
    s.a[kSegStart][u + 1] = n;
    s.a[kFirst][n] = 0;
  }
}

// Sorted entry i: the run its request read just before (-1 at a row's start), folded into its
// run's smallest and largest predecessor (atomics: one pass over the entries, not a loop over
// each run's readers, which is long for a run shared by many requests).
__device__ void prev_step(const SharingPlanArgs& a, const PlanScratch& s, const SharingPlanOutputs&, int i) {
  if (i >= a.nnz) return;
  const int e = s.a[kSortedIds][i], u = s.a[kUnique][e];
  const int prev = e > 0 && s.a[kRows][e] == s.a[kRows][e - 1] ? s.a[kUnique][e - 1] : -1;
  atomicMin(s.a[kPrevMin] + u, prev);
  atomicMax(s.a[kPrevMax] + u, prev);
}

// For unique run u: its readers, whether it continues its predecessor's chain (every reader read
// the same run p just before, and p has as many readers), and its place k in the work order
// (rank of its first entry). Writes the work-ordered per-run arrays; k >= U pads them with 0.
__device__ void runs_step(const SharingPlanArgs& a, const PlanScratch& s, const SharingPlanOutputs& out, int i) {
  const int U = (int)out.scalars[0];
  if (i >= U) {
    if (i <= a.nnz) {
      s.a[kHeadAt][i] = 0;
      s.sizes[i].y = s.sizes[i].z = 0;
    }
    return;
  }
  const int* seg = s.a[kSegStart];
  const int readers = seg[i + 1] - seg[i];
  const int pmin = s.a[kPrevMin][i], pmax = s.a[kPrevMax][i];
  const bool chained = pmin == pmax && pmin >= 0 && seg[pmin + 1] - seg[pmin] == readers;
  const int e0 = s.a[kFirstEntry][i];
  const int k = s.a[kRank][e0];
  s.a[kRunPlace][i] = k;
  s.a[kHeadAt][k] = chained ? 0 : k;
  s.a[kChained][k] = chained;
  s.sizes[k].y = readers;
  s.sizes[k].z = a.counts[e0];
  out.entry_pages[k] = a.cols[e0];
  out.entry_offsets[k] = a.page_offsets[e0];
  out.entry_counts[k] = a.counts[e0];
}

// Run k starts a work item at a chain's head and every runs_per_item runs after it.
__device__ void item_flags_step(const SharingPlanArgs& a, const PlanScratch& s, const SharingPlanOutputs& out, int k) {
  if (k > a.nnz) return;
  const int U = (int)out.scalars[0];
  s.a[kFlags][k] = k < U && (!s.a[kChained][k] || (k - s.a[kLastHead][k]) % a.runs_per_item == 0);
  s.sizes[k].x = 0;  // work items' readers, filled at w <= k by the next step
}

// Work item w = item_id (the scan of the flags): its first run and its readers (its first run's).
__device__ void items_step(const SharingPlanArgs& a, const PlanScratch& s, const SharingPlanOutputs& out, int k) {
  if (k > a.nnz) return;
  s.a[kFirst][k] = 0;  // reused by readers_step
  const int U = (int)out.scalars[0];
  if (k == a.nnz) {
    const int W = s.a[kScan][k];
    out.scalars[1] = W;
    out.work_entry_offsets[W] = U;
    return;
  }
  if (!s.a[kFlags][k]) return;
  const int w = s.a[kScan][k], readers = s.sizes[k].y;
  out.work_entry_offsets[w] = k;
  s.sizes[w].x = readers;
  atomicMax(out.scalars + 3, (long long)readers);
}

// The offsets (i <= n), and sorted entry i's place in the transpose (work order) and, when its run
// starts a work item, in the item's partials: one per reader of the item's first run.
__device__ void readers_step(const SharingPlanArgs& a, const PlanScratch& s, const SharingPlanOutputs& out, int i) {
  if (i > a.nnz) return;
  const int3 o = s.offsets[i];
  out.work_reader_offsets[i] = o.x;
  out.reader_offsets[i] = o.y;
  out.entry_token_offsets[i] = o.z;
  if (i == 0) out.scalars[2] = s.offsets[out.scalars[1]].x;
  if (i == a.nnz) return;
  const int e = s.a[kSortedIds][i], u = s.a[kUnique][e];
  const int j = i - s.a[kSegStart][u], k = s.a[kRunPlace][u], row = s.a[kRows][e];
  out.readers[s.offsets[k].y + j] = row;
  if (!s.a[kFlags][k]) return;
  const int p = s.offsets[s.a[kScan][k]].x + j;
  out.work_readers[p] = row;
  s.a[kSource][p] = e;
  s.a[kFirst][e] = 1;  // reused: entry is some partial's source
}

// Merge order: partials by their source entry (request, then position); merge_offsets from the
// same ranks at each row's first entry.
__device__ void merge_step(const SharingPlanArgs& a, const PlanScratch& s, const SharingPlanOutputs& out, int i) {
  if (i < (int)out.scalars[2]) out.merge_partials[s.a[kRank][s.a[kSource][i]]] = i;
  if (i <= a.batch) out.merge_offsets[i] = s.a[kRank][min(max(a.row_offsets[i], 0), a.nnz)];
}

template <PlanStep step>
__global__ void plan_step_kernel(SharingPlanArgs a, PlanScratch s, SharingPlanOutputs out) {
  step(a, s, out, blockIdx.x * blockDim.x + threadIdx.x);
}

// ---- the fused plan: one CTA, one launch, for plans of at most kFusedRuns runs. Launches cost
// the host 5-9 us each on the GPU box, so the 20-30 launches of the grid path are most of its time.
// Up to 2048 runs: on the H200 the one-CTA plan took 0.13 ms of host wall time at 2048 runs, the
// grid path 0.20 ms at 14K; at 8192 runs one CTA (sorting 16 keys a thread) took 0.30 ms, longer
// than the grid: its phases wait on memory with one SM's warps.
constexpr int kFusedThreads = 512;
constexpr int kFusedItems = 4;  // keys a thread sorts
constexpr int kFusedRuns = kFusedThreads * kFusedItems;
constexpr int kScanItems = 8;  // elements a thread scans per tile (blocked)
using FusedSort = cub::BlockRadixSort<unsigned long long, kFusedThreads, kFusedItems, int>;

template <PlanStep step>
__device__ __forceinline__ void fused_for(const SharingPlanArgs& a, const PlanScratch& s, const SharingPlanOutputs& out,
                                          int m) {
  for (int i = threadIdx.x; i < m; i += kFusedThreads) step(a, s, out, i);
  __syncthreads();
}

// out[i] = in[0] op ... op in[i] (inclusive) or in[0] op ... op in[i-1] (exclusive), identity first.
template <bool kInclusive, typename T, typename Op>
__device__ void fused_scan(const T* in, T* out, int m, Op op, T identity) {
  using Scan = cub::BlockScan<T, kFusedThreads>;
  __shared__ typename Scan::TempStorage storage;
  T carry = identity;
  for (int base = 0; base < m; base += kFusedThreads * kScanItems) {
    const int first = base + threadIdx.x * kScanItems;
    T x[kScanItems], y[kScanItems], total;
#pragma unroll
    for (int j = 0; j < kScanItems; ++j) x[j] = first + j < m ? in[first + j] : identity;
    if (kInclusive) Scan(storage).InclusiveScan(x, y, op, total);
    else Scan(storage).ExclusiveScan(x, y, identity, op, total);
#pragma unroll
    for (int j = 0; j < kScanItems; ++j)
      if (first + j < m) out[first + j] = op(carry, y[j]);
    carry = op(carry, total);
    __syncthreads();
  }
}

__global__ void __launch_bounds__(kFusedThreads) plan_fused_kernel(SharingPlanArgs a, PlanScratch s,
                                                                    SharingPlanOutputs out) {
  extern __shared__ __align__(16) unsigned char fused_smem[];
  const int n = a.nnz;
  // the key sort in shared memory: entries in order (blocked), padding keys last; stable
  unsigned long long keys[kFusedItems];
  int ids[kFusedItems];
#pragma unroll
  for (int j = 0; j < kFusedItems; ++j) {
    const int e = threadIdx.x * kFusedItems + j;
    ids[j] = e;
    keys[j] = e < n ? entry_key(a, e) : ~0ull;
    if (e < n) s.a[kRows][e] = entry_row(a, e);
  }
  if (threadIdx.x == 0) out.scalars[3] = 0;
  FusedSort(*reinterpret_cast<FusedSort::TempStorage*>(fused_smem)).Sort(keys, ids, 0, a.key_end_bit);
#pragma unroll
  for (int j = 0; j < kFusedItems; ++j) {
    const int i = threadIdx.x * kFusedItems + j;
    if (i < n) {
      s.sorted_keys[i] = keys[j];
      s.a[kSortedIds][i] = ids[j];
    }
  }
  __syncthreads();
  const auto plus = cuda::std::plus<>{};
  fused_for<flags_step>(a, s, out, n + 1);
  fused_scan<false>(s.a[kFlags], s.a[kScan], n + 1, plus, 0);
  fused_for<unique_step>(a, s, out, n);
  fused_for<prev_step>(a, s, out, n);
  fused_scan<false>(s.a[kFirst], s.a[kRank], n + 1, plus, 0);
  fused_for<runs_step>(a, s, out, n + 1);
  fused_scan<true>(s.a[kHeadAt], s.a[kLastHead], n + 1, cuda::maximum<>{}, 0);
  fused_for<item_flags_step>(a, s, out, n + 1);
  fused_scan<false>(s.a[kFlags], s.a[kScan], n + 1, plus, 0);
  fused_for<items_step>(a, s, out, n + 1);
  fused_scan<false>(s.sizes, s.offsets, n + 1, SumInt3{}, make_int3(0, 0, 0));
  fused_for<readers_step>(a, s, out, n + 1);
  fused_scan<false>(s.a[kFirst], s.a[kRank], n + 1, plus, 0);
  fused_for<merge_step>(a, s, out, max(n + 1, a.batch + 1));
}

}  // namespace

// ------------------------------------------------------------------ host side
size_t csr_count_temp_bytes(int64_t tiles) {
  size_t bytes = 0;
  cub::DeviceScan::ExclusiveSum(nullptr, bytes, (int*)nullptr, (int*)nullptr, tiles + 1);
  return bytes;
}

cudaError_t csr_count_launch(const CsrFromTableArgs& a, const CsrCountBuffers& buf, cudaStream_t stream) {
  const int64_t tiles = (int64_t)a.batch * a.tiles_per_row;
  if (a.want_range) csr_init_kernel<<<1, 1, 0, stream>>>(buf);
  if (a.batch > 0) {
    csr_count_kernel<<<dim3(a.tiles_per_row, a.batch), kCsrThreads, 0, stream>>>(a, buf);
  } else {
    cudaError_t err = cudaMemsetAsync(buf.tile_counts, 0, sizeof(int), stream);  // the padding alone
    if (err != cudaSuccess) return err;
  }
  size_t bytes = buf.temp_bytes;
  cudaError_t err = cub::DeviceScan::ExclusiveSum(buf.temp, bytes, buf.tile_counts, buf.tile_offsets, tiles + 1, stream);
  if (err != cudaSuccess) return err;
  if (a.want_range) csr_finish_count_kernel<<<1, 1, 0, stream>>>(buf, (int)tiles);
  return cudaGetLastError();
}

cudaError_t csr_write_launch(const CsrFromTableArgs& a, const int* tile_offsets, int64_t nnz, const CsrOutputs& out,
                             cudaStream_t stream) {
  if (a.batch > 0 && nnz > 0)
    csr_write_kernel<<<dim3(a.tiles_per_row, a.batch), kCsrThreads, 0, stream>>>(a, tile_offsets, out);
  const int64_t n = nnz > a.batch ? nnz : a.batch + 1;
  csr_finalize_kernel<<<blocks_for(n), kThreads, 0, stream>>>(a, tile_offsets, nnz, out);
  return cudaGetLastError();
}

size_t sharing_plan_workspace_bytes(int nnz, int key_end_bit) {
  return plan_array_bytes(nnz) + (nnz <= kFusedRuns ? 0 : align16(plan_temp_bytes(nnz, key_end_bit)));
}

cudaError_t sharing_plan_launch(const SharingPlanArgs& a, void* workspace, size_t workspace_bytes,
                                const SharingPlanOutputs& out, cudaStream_t stream) {
  const int n = a.nnz;
  PlanScratch s = carve_plan(workspace, workspace_bytes, n);
  cudaError_t err = cudaSuccess;
  if (n <= kFusedRuns) {
    const int smem = (int)sizeof(FusedSort::TempStorage);
    err = cudaFuncSetAttribute(plan_fused_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
    plan_fused_kernel<<<1, kFusedThreads, smem, stream>>>(a, s, out);
    return cudaGetLastError();
  }
  const unsigned grid = blocks_for(n + 1);
  size_t bytes = s.temp_bytes;
#define FC_CUB(call)                      \
  do {                                    \
    bytes = s.temp_bytes;                 \
    err = (call);                         \
    if (err != cudaSuccess) return err;   \
  } while (0)
#define FC_STEP(step, threads) plan_step_kernel<step><<<blocks_for(threads), kThreads, 0, stream>>>(a, s, out)
  FC_STEP(keys_step, n);
  FC_CUB(cub::DeviceRadixSort::SortPairs(s.temp, bytes, s.keys, s.sorted_keys, s.a[kIds], s.a[kSortedIds], n, 0,
                                         a.key_end_bit, stream));
  FC_STEP(flags_step, n + 1);
  FC_CUB(cub::DeviceScan::ExclusiveSum(s.temp, bytes, s.a[kFlags], s.a[kScan], n + 1, stream));
  FC_STEP(unique_step, n);
  FC_STEP(prev_step, n);
  FC_CUB(cub::DeviceScan::ExclusiveSum(s.temp, bytes, s.a[kFirst], s.a[kRank], n + 1, stream));
  FC_STEP(runs_step, n + 1);
  FC_CUB(cub::DeviceScan::InclusiveScan(s.temp, bytes, s.a[kHeadAt], s.a[kLastHead], cuda::maximum<>{}, n + 1, stream));
  FC_STEP(item_flags_step, n + 1);
  FC_CUB(cub::DeviceScan::ExclusiveSum(s.temp, bytes, s.a[kFlags], s.a[kScan], n + 1, stream));
  FC_STEP(items_step, n + 1);
  FC_CUB(cub::DeviceScan::ExclusiveScan(s.temp, bytes, s.sizes, s.offsets, SumInt3{}, make_int3(0, 0, 0), n + 1, stream));
  FC_STEP(readers_step, n + 1);
  FC_CUB(cub::DeviceScan::ExclusiveSum(s.temp, bytes, s.a[kFirst], s.a[kRank], n + 1, stream));
  FC_STEP(merge_step, n + 1 > a.batch + 1 ? n + 1 : a.batch + 1);
#undef FC_STEP
#undef FC_CUB
  return cudaGetLastError();
}

}  // namespace flashcore
