// Page-table decode planner: SGLang's req_to_token -> the decode kernel's work list, on the GPU.
// See include/flashcore/decode_plan.h for the plan's layout. Five launches, no host sync:
//   1. chunks  (1 CTA): lengths -> C, chunk_base (a scan), cleared hash table
//   2. keys    (grid) : chunk -> hash of (last slot, end position); the smallest chunk per key
//   3. leaders (grid) : each chunk checks its candidate leader slot by slot (a warp per chunk)
//   4. work    (1 CTA): scans over leaders -> work items, reader offsets, tasks (the tail
//                      split's last ones cut in parts) and each chunk's first partial
//   5. place   (grid) : readers into their work item's list
// Reader order inside a work item comes from atomics; it does not change any result bit: each
// query row is computed independently, partial i is chunk i, and merging follows chunk order.
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include "flashcore/decode_plan.h"
#include "flashcore/heuristics.h"
#include "flashcore/page_table.cuh"
#include "flashcore/paged_decode.h"

namespace flashcore {
namespace {

constexpr int kPlanThreads = kDecodePlanThreads;
constexpr unsigned long long kEmptyKey = ~0ull;

__device__ __forceinline__ unsigned long long mix64(unsigned long long x) {  // splitmix64's finaliser
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

struct MaxOp {
  __device__ __forceinline__ long long operator()(long long x, long long y) const { return x > y ? x : y; }
};
struct SumOp {  // cub::Sum is gone from CUDA 13's CCCL
  __device__ __forceinline__ long long operator()(long long x, long long y) const { return x + y; }
};

using IntScan = cub::BlockScan<int, kPlanThreads>;
using LongReduce = cub::BlockReduce<long long, kPlanThreads>;

// A block-wide reduction whose result every thread gets (cub leaves it in thread 0 only).
template <typename Op>
__device__ long long block_all_reduce(long long x, Op op, typename LongReduce::TempStorage& tmp,
                                      long long* shared_out) {
  x = LongReduce(tmp).Reduce(x, op);
  if (threadIdx.x == 0) *shared_out = x;
  __syncthreads();
  x = *shared_out;
  __syncthreads();  // tmp and shared_out are free for the next reduction
  return x;
}

// Sum over requests of ceil(len / C) (all threads get the result).
__device__ long long count_chunks(const TablePlanArgs& a, long long C, typename LongReduce::TempStorage& tmp,
                                  long long* shared_out) {
  long long n = 0;
  for (int b = threadIdx.x; b < a.batch; b += kPlanThreads) n += (load_request(a, b).len + C - 1) / C;
  return block_all_reduce(n, SumOp(), tmp, shared_out);
}

// Whether two non-empty requests start at the same KV slot: the radix cache's sign of a shared
// prefix (a set of first slots in shared memory; the caller syncs before reusing it).
constexpr int kFirstSlotSetSize = 2 * kWaveMaxBatch;
constexpr int kFirstSlotHashShift = 20;  // a 32-bit multiplicative hash's top 12 bits index the set
static_assert(kFirstSlotSetSize == 1 << (32 - kFirstSlotHashShift), "the set's size is the hash's range");
__device__ bool any_shared_first_slot(const TablePlanArgs& a, unsigned* set, int* s_found) {
  constexpr unsigned kEmpty = ~0u;
  for (int i = threadIdx.x; i < kFirstSlotSetSize; i += kPlanThreads) set[i] = kEmpty;
  if (threadIdx.x == 0) *s_found = 0;
  __syncthreads();
  for (int b = threadIdx.x; b < a.batch; b += kPlanThreads) {
    const Request r = load_request(a, b);
    if (r.len == 0) continue;
    unsigned key = (unsigned)slot_at(a, r.row, 0);
    if (key == kEmpty) key = kEmpty - 1;  // (a corrupt slot: at worst a missed chunk change)
    for (unsigned h = (key * 2654435761u) >> kFirstSlotHashShift;; h = (h + 1) & (kFirstSlotSetSize - 1)) {
      const unsigned prev = atomicCAS(&set[h], kEmpty, key);
      if (prev == kEmpty) break;
      if (prev == key) {
        *s_found = 1;
        break;
      }
    }
  }
  __syncthreads();
  return *s_found != 0;
}

// Tasks of one KV head that run at once (a wave): the resident CTAs over the KV heads (> 0).
__device__ __forceinline__ long long wave_tasks(const TablePlanArgs& a) {
  return (a.resident_ctas + a.num_kv_heads - 1) / a.num_kv_heads;
}

// The wave-filling chunk (TablePlanArgs::wave_max_chunk), or C0 where it does not apply; every
// thread gets the same answer. A warp per candidate n, 32 candidates a pass, the first that
// fills its last wave wins (candidates in increasing n, so the longest chunk).
__device__ long long wave_filling_chunk(const TablePlanArgs& a, long long C0, long long longest, long long chunks0,
                                        unsigned* set, int* s_found, long long* s_pick) {
  const long long S = a.resident_ctas;
  const long long per_chunk = (long long)a.num_kv_heads * ((a.group + a.rows_per_task - 1) / a.rows_per_task);
  // (with 16 or more KV heads a wave is short, the tail split evens it out: the move measured 0-0.5% slower there)
  if (a.wave_max_chunk <= 0 || a.batch > kWaveMaxBatch || longest <= 0 || S <= 0 || per_chunk <= 0 ||
      wave_tasks(a) <= kDecodeSplitEvenWave || chunks0 * per_chunk > kWaveMaxWaves * S)
    return C0;
  if (any_shared_first_slot(a, set, s_found)) return C0;  // shared chunks want the shorter C0
  const long long lowest = max((long long)a.min_chunk, C0 / 2);
  const long long n0 = (longest + a.wave_max_chunk - 1) / a.wave_max_chunk;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int first = 0; first < kWaveCandidates; first += kPlanThreads / 32) {
    const long long n = n0 + first + warp;
    const long long C = (longest + n - 1) / n;
    long long pick = 0;
    if (C >= lowest) {  // warp-uniform
      long long chunks = 0;
      for (int b = lane; b < a.batch; b += 32) chunks += (load_request(a, b).len + C - 1) / C;
#pragma unroll
      for (int off = 16; off > 0; off /= 2) chunks += __shfl_xor_sync(0xffffffff, chunks, off);
      const long long X = chunks * per_chunk;
      const long long k = (X + S - 1) / S;
      if (kWaveFillDen * (X - (k - 1) * S) >= kWaveFillNum * S) pick = C;
    }
    if (lane == 0) s_pick[warp] = pick;
    __syncthreads();
    long long found = 0;
    for (int w = 0; w < kPlanThreads / 32 && !found; ++w) found = s_pick[w];
    __syncthreads();  // s_pick is rewritten by the next pass
    if (found) return found;
    const long long last = n0 + first + kPlanThreads / 32 - 1;
    if ((longest + last - 1) / last < lowest) break;
  }
  return C0;
}

__global__ void __launch_bounds__(kPlanThreads) plan_chunks_kernel(const TablePlanArgs a, const TablePlanBuffers buf) {
  __shared__ union {
    typename IntScan::TempStorage scan;
    typename LongReduce::TempStorage reduce;
  } tmp;
  __shared__ long long s_total;
  __shared__ int s_carry;
  __shared__ unsigned s_first_slots[kFirstSlotSetSize];
  __shared__ int s_shared_prefix;
  __shared__ long long s_pick[kPlanThreads / 32];

  long long tokens = 0, clamped = 0, longest = 0;
  for (int b = threadIdx.x; b < a.batch; b += kPlanThreads) {
    Request r = load_request(a, b);
    tokens += r.len;
    clamped += r.clamped;
    longest = max(longest, (long long)r.len);
  }
  tokens = block_all_reduce(tokens, SumOp(), tmp.reduce, &s_total);
  clamped = block_all_reduce(clamped, SumOp(), tmp.reduce, &s_total);
  longest = block_all_reduce(longest, MaxOp(), tmp.reduce, &s_total);

  // C: the largest power of two (within bounds) that still gives about target_items chunks, moved
  // to fill whole waves where that applies, then doubled until the chunks fit the workspace (it
  // always fits once C >= longest).
  long long C = a.fixed_chunk;
  if (C <= 0) {
    C = a.max_auto_chunk;
    while (C > a.min_chunk && tokens < a.target_items * C) C >>= 1;
  }
  long long chunks = count_chunks(a, C, tmp.reduce, &s_total);
  if (a.fixed_chunk <= 0) {
    const long long moved = wave_filling_chunk(a, C, longest, chunks, s_first_slots, &s_shared_prefix, s_pick);
    if (moved != C) {  // (block-uniform)
      C = moved;
      chunks = count_chunks(a, C, tmp.reduce, &s_total);
    }
  }
  while (chunks > buf.max_chunks && C < longest) {
    C <<= 1;
    chunks = count_chunks(a, C, tmp.reduce, &s_total);
  }

  // chunk_base: exclusive scan of chunks per request
  if (threadIdx.x == 0) s_carry = 0;
  __syncthreads();
  for (int start = 0; start < a.batch; start += kPlanThreads) {
    const int b = start + threadIdx.x;
    int n = b < a.batch ? (int)((load_request(a, b).len + C - 1) / C) : 0;
    int offset, block_total;
    IntScan(tmp.scan).ExclusiveSum(n, offset, block_total);
    const int carry = s_carry;
    if (b < a.batch) buf.chunk_base[b] = carry + offset;
    __syncthreads();
    if (threadIdx.x == 0) s_carry = carry + block_total;
    __syncthreads();
  }
  const int P = (int)chunks;
  int hash_size = 64;
  while (hash_size < 2 * P) hash_size <<= 1;
  hash_size = min(hash_size, buf.hash_size);
  for (int i = threadIdx.x; i < hash_size; i += kPlanThreads) {
    buf.hash_keys[i] = kEmptyKey;
    buf.hash_min_chunk[i] = 0x7fffffff;
  }
  for (int i = threadIdx.x; i < P; i += kPlanThreads) buf.chunk_readers[i] = 0;
  if (threadIdx.x == 0) {
    buf.chunk_base[a.batch] = P;
    buf.meta[kMetaChunkTokens] = (int)C;
    buf.meta[kMetaChunks] = P;
    buf.meta[kMetaWorkItems] = 0;
    buf.meta[kMetaTasks] = 0;
    buf.meta[kMetaTokens] = (int)min(tokens, (long long)0x7fffffff);
    buf.meta[kMetaUniqueTokens] = 0;
    buf.meta[kMetaClamped] = (int)clamped;
    buf.meta[kMetaHashSize] = hash_size;
  }
}

// The request owning chunk i: the last b with chunk_base[b] <= i (empty requests own no chunk).
__device__ __forceinline__ int chunk_request(const int* chunk_base, int batch, int i) {
  int lo = 0, hi = batch - 1;
  while (lo < hi) {
    int mid = (lo + hi + 1) >> 1;
    if (chunk_base[mid] <= i) lo = mid; else hi = mid - 1;
  }
  return lo;
}

struct Chunk {
  int b;
  int64_t row, pos0, end;
};
__device__ __forceinline__ Chunk load_chunk(const TablePlanArgs& a, const TablePlanBuffers& buf, int i, int b) {
  const int C = buf.meta[kMetaChunkTokens];
  Request r = load_request(a, b);
  Chunk ch;
  ch.b = b;
  ch.row = r.row;
  ch.pos0 = (int64_t)(i - buf.chunk_base[b]) * C;
  ch.end = min(r.len, ch.pos0 + C);
  return ch;
}

__global__ void plan_keys_kernel(const TablePlanArgs a, const TablePlanBuffers buf) {
  const int P = buf.meta[kMetaChunks];
  const unsigned mask = (unsigned)buf.meta[kMetaHashSize] - 1;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < P; i += gridDim.x * blockDim.x) {
    const int b = chunk_request(buf.chunk_base, a.batch, i);
    const Chunk ch = load_chunk(a, buf, i, b);
    const unsigned long long last = (unsigned long long)(uint32_t)slot_at(a, ch.row, ch.end - 1);
    const unsigned long long key = (last << 32) | (uint32_t)ch.end;  // end < 2^31: never kEmptyKey
    unsigned h = (unsigned)mix64(key) & mask;
    while (true) {  // linear probing; the table is at least twice the number of chunks
      unsigned long long prev = atomicCAS(&buf.hash_keys[h], kEmptyKey, key);
      if (prev == kEmptyKey || prev == key) break;
      h = (h + 1) & mask;
    }
    atomicMin(&buf.hash_min_chunk[h], i);
    buf.chunk_request[i] = b;
    buf.chunk_hash_slot[i] = (int)h;
  }
}

// A warp per chunk: read the candidate's K/V only if every slot of the chunk is the same.
__global__ void plan_leaders_kernel(const TablePlanArgs a, const TablePlanBuffers buf) {
  const int P = buf.meta[kMetaChunks];
  const int lane = threadIdx.x % 32;
  const int warps = gridDim.x * blockDim.x / 32;
  for (int i = (blockIdx.x * blockDim.x + threadIdx.x) / 32; i < P; i += warps) {
    const int cand = buf.hash_min_chunk[buf.chunk_hash_slot[i]];
    int leader = i;
    if (cand != i && a.share) {
      const Chunk mine = load_chunk(a, buf, i, buf.chunk_request[i]);
      const Chunk theirs = load_chunk(a, buf, cand, buf.chunk_request[cand]);
      // (warp-uniform loop: every lane votes each round)
      bool same = mine.pos0 == theirs.pos0 && mine.end == theirs.end;
      for (int64_t base = mine.pos0; same && base < mine.end; base += 32) {
        const int64_t pos = base + lane;
        const bool eq = pos >= mine.end || slot_at(a, mine.row, pos) == slot_at(a, theirs.row, pos);
        same = __all_sync(0xffffffff, eq);
      }
      if (same) leader = cand;
    }
    if (lane == 0) {
      buf.chunk_leader[i] = leader;
      atomicAdd(&buf.chunk_readers[leader], 1);
    }
  }
}

struct Add4 {
  __device__ __forceinline__ int4 operator()(const int4& x, const int4& y) const {
    return make_int4(x.x + y.x, x.y + y.y, x.z + y.z, x.w + y.w);
  }
};
struct Add2 {
  __device__ __forceinline__ int2 operator()(const int2& x, const int2& y) const {
    return make_int2(x.x + y.x, x.y + y.y);
  }
};

// What chunk i adds to the work list: a work item if it leads, its readers and tasks, and whether
// the tail split may cut it (one reader, one task, at least two 64-token tiles).
struct ChunkWork {
  bool lead, splittable;
  int readers, ntasks, tiles;
  Chunk ch;
};
__device__ __forceinline__ ChunkWork chunk_work(const TablePlanArgs& a, const TablePlanBuffers& buf, int i, int P) {
  ChunkWork c{};
  c.lead = i < P && buf.chunk_leader[i] == i;
  if (!c.lead) return c;
  c.readers = buf.chunk_readers[i];
  c.ntasks = (c.readers * a.group + a.rows_per_task - 1) / a.rows_per_task;
  c.ch = load_chunk(a, buf, i, buf.chunk_request[i]);
  c.tiles = (int)((c.ch.end - c.ch.pos0 + kDecodeTileTokens - 1) / kDecodeTileTokens);
  c.splittable = c.readers == 1 && c.ntasks == 1 && c.tiles >= 2;
  return c;
}

// split_wave: the wave of tasks running at once, or 0 where the split never cuts (then the
// planner skips the pass that counts the batch's tasks).
__device__ __forceinline__ long long split_wave(const TablePlanArgs& a, int parts) {
  if (parts <= 1 || a.num_kv_heads <= 0) return 0;
  return wave_tasks(a);
}

// A guided split (a wave longer than kDecodeSplitEvenWave) keeps an item's first three quarters
// as one task in place and makes its last quarter one more (kDecodeSplitGuidedParts).
__device__ __forceinline__ bool split_guided(long long wave) { return wave > kDecodeSplitEvenWave; }
__device__ __forceinline__ int split_part_count(bool guided, int parts, int tiles) {
  return guided ? min(parts, kDecodeSplitGuidedParts) : min(parts, tiles);
}

// How many one-reader items the tail split cuts (see TablePlanArgs): a wave of tasks (at most
// kDecodeSplitMaxItems), when there is more than one wave and every task still gets a CTA of its
// own. Each part pays a task's start-up (about 5 us of dependent loads before its first K/V tile
// lands, H200 trace): with 16 or more KV heads a wave is at most 25 tasks and the even split read
// 0.5-1.8% faster; with 8 (a wave of 50, a quarter of a 32 x 8K batch) the even split read -2% to
// +4% depending on the machine, and the guided one -0.2% to +3.3% over the wave-filling chunks
// (within one wave it lost 1.6%, hence the same more-than-a-wave rule; H200,
// docs/performance.md).
__device__ __forceinline__ int split_items(const TablePlanArgs& a, long long wave, long long tasks, long long splittable,
                                           int parts) {
  if (wave == 0 || tasks <= wave || a.grid_work <= tasks) return 0;
  return (int)min(min(min(splittable, wave), (long long)kDecodeSplitMaxItems), (a.grid_work - tasks) / (parts - 1));
}

__global__ void __launch_bounds__(kPlanThreads) plan_work_kernel(const TablePlanArgs a, const TablePlanBuffers buf) {
  using Scan4 = cub::BlockScan<int4, kPlanThreads>;
  using Scan2 = cub::BlockScan<int2, kPlanThreads>;
  __shared__ union {
    typename Scan4::TempStorage scan4;
    typename Scan2::TempStorage scan2;
    typename LongReduce::TempStorage reduce;
  } tmp;
  __shared__ int4 s_carry;   // work items, readers, tasks before the split, splittable items
  __shared__ int2 s_carry2;  // extra partials (parts - 1 of each split item), split items
  __shared__ long long s_total;
  const int P = buf.meta[kMetaChunks];
  const int parts = min(a.split_parts, kDecodeSplitMaxParts);

  // pass 1: the totals the split policy needs (none where it never cuts: the same branch for
  // every thread, as the reductions' barriers require)
  const long long wave = split_wave(a, parts);
  long long tasks = 0, splittable = 0;
  if (wave > 0) {
    for (int i = threadIdx.x; i < P; i += kPlanThreads) {
      const ChunkWork c = chunk_work(a, buf, i, P);
      tasks += c.ntasks;
      splittable += c.splittable;
    }
    tasks = block_all_reduce(tasks, SumOp(), tmp.reduce, &s_total);
    splittable = block_all_reduce(splittable, SumOp(), tmp.reduce, &s_total);
  }
  const int m = split_items(a, wave, tasks, splittable, parts);  // the last m splittable items are cut
  const bool guided = split_guided(wave);
  // the split items' tasks (even), or their last quarters' parts (guided), follow these
  const int unsplit_tasks = guided ? (int)tasks : (int)tasks - m;

  // pass 2: work items, their readers' offsets, tasks and partial numbers
  if (threadIdx.x == 0) {
    s_carry = make_int4(0, 0, 0, 0);
    s_carry2 = make_int2(0, 0);
  }
  __syncthreads();
  long long unique = 0;
  for (int start = 0; start < P; start += kPlanThreads) {
    const int i = start + threadIdx.x;
    const ChunkWork c = chunk_work(a, buf, i, P);
    int4 off, total;
    Scan4(tmp.scan4).ExclusiveScan(make_int4(c.lead, c.readers, c.ntasks, c.splittable), off, make_int4(0, 0, 0, 0),
                                   Add4(), total);
    const int4 carry = s_carry;
    const bool split = m > 0 && c.splittable && carry.w + off.w >= (int)splittable - m;
    const int nparts = split ? split_part_count(guided, parts, c.tiles) : 1;
    __syncthreads();  // tmp is reused
    int2 off2, total2;
    Scan2(tmp.scan2).ExclusiveScan(make_int2(nparts - 1, split), off2, make_int2(0, 0), Add2(), total2);
    const int2 carry2 = s_carry2;
    const int extra_before = carry2.x + off2.x, splits_before = carry2.y + off2.y;
    if (i < P) buf.chunk_partial[i] = i + extra_before;
    if (c.lead) {
      const int w = carry.x + off.x;
      buf.chunk_work[i] = w;
      buf.work_row[w] = (int)c.ch.row;
      buf.work_pos0[w] = (int)c.ch.pos0;
      buf.work_ntok[w] = (int)(c.ch.end - c.ch.pos0);
      buf.work_reader_offsets[w] = carry.y + off.y;
      buf.work_fill[w] = 0;
      if (split && guided) {  // the head in place, the last quarter's parts after every other task
        const int head = carry.z + off.z, t0 = unsplit_tasks + extra_before - 1;
        for (int sp = 0; sp < nparts; ++sp) {
          const int t = sp == 0 ? head : t0 + sp;
          buf.tasks[2 * t] = w;
          buf.tasks[2 * t + 1] = ~(kDecodeSplitGuidedBit | (sp << 8) | nparts);
        }
      } else if (split) {  // after every unsplit task, in chunk order
        const int t0 = unsplit_tasks + splits_before + extra_before;
        for (int sp = 0; sp < nparts; ++sp) {
          buf.tasks[2 * (t0 + sp)] = w;
          buf.tasks[2 * (t0 + sp) + 1] = ~((sp << 8) | nparts);
        }
      } else {
        const int t0 = carry.z + off.z - (guided ? 0 : splits_before);
        for (int k = 0; k < c.ntasks; ++k) {
          buf.tasks[2 * (t0 + k)] = w;
          buf.tasks[2 * (t0 + k) + 1] = k * a.rows_per_task;
        }
      }
      unique += c.ch.end - c.ch.pos0;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      s_carry = make_int4(carry.x + total.x, carry.y + total.y, carry.z + total.z, carry.w + total.w);
      s_carry2 = make_int2(carry2.x + total2.x, carry2.y + total2.y);
    }
    __syncthreads();
  }
  unique = LongReduce(tmp.reduce).Sum(unique);
  if (threadIdx.x == 0) {
    const int4 t = s_carry;
    const int extra = s_carry2.x;
    buf.work_reader_offsets[t.x] = t.y;
    buf.chunk_partial[P] = P + extra;
    buf.meta[kMetaWorkItems] = t.x;
    buf.meta[kMetaTasks] = t.z + extra;
    buf.meta[kMetaUniqueTokens] = (int)min(unique, (long long)0x7fffffff);
  }
}

__global__ void plan_place_kernel(const TablePlanBuffers buf) {
  const int P = buf.meta[kMetaChunks];
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < P; i += gridDim.x * blockDim.x) {
    const int w = buf.chunk_work[buf.chunk_leader[i]];
    const int r = buf.work_reader_offsets[w] + atomicAdd(&buf.work_fill[w], 1);
    buf.work_readers[r] = buf.chunk_request[i];
    buf.work_partials[r] = i;
  }
}

}  // namespace

int table_plan_task_capacity(int max_chunks) { return kDecodeTasksPerChunk * max_chunks + kDecodeSplitExtra; }

int table_plan_hash_size(int max_chunks) {
  int h = 64;
  while (h < 2 * max_chunks) h <<= 1;
  return h;
}

int64_t table_plan_ints(int max_batch, int max_chunks) {
  const int64_t P = max_chunks;
  return kMetaCount + (max_batch + 1) + 5 * P + table_plan_hash_size(max_chunks) + 3 * P + (P + 1) + 3 * P +
         2 * (int64_t)table_plan_task_capacity(max_chunks) + (P + 1);
}

TablePlanBuffers carve_table_plan(int* ints, unsigned long long* hash_keys, int max_batch, int max_chunks) {
  TablePlanBuffers b{};
  b.max_batch = max_batch;
  b.max_chunks = max_chunks;
  b.hash_size = table_plan_hash_size(max_chunks);
  int* p = ints;
  auto take = [&p](int64_t n) {
    int* out = p;
    p += n;
    return out;
  };
  const int64_t P = max_chunks;
  b.meta = take(kMetaCount);
  b.chunk_base = take(max_batch + 1);
  b.chunk_request = take(P);
  b.chunk_hash_slot = take(P);
  b.chunk_leader = take(P);
  b.chunk_readers = take(P);
  b.chunk_work = take(P);
  b.hash_min_chunk = take(b.hash_size);
  b.work_row = take(P);
  b.work_pos0 = take(P);
  b.work_ntok = take(P);
  b.work_reader_offsets = take(P + 1);
  b.work_fill = take(P);
  b.work_readers = take(P);
  b.work_partials = take(P);
  b.tasks = take(2 * (int64_t)table_plan_task_capacity(max_chunks));  // (work item, first row) of each task
  b.chunk_partial = take(P + 1);
  b.hash_keys = hash_keys;
  return b;
}

cudaError_t table_plan_launch(const TablePlanArgs& a, const TablePlanBuffers& buf, int num_sms, cudaStream_t stream) {
  const int grid = kDecodePlanCtasPerSm * num_sms;
  plan_chunks_kernel<<<1, kPlanThreads, 0, stream>>>(a, buf);
  plan_keys_kernel<<<grid, 256, 0, stream>>>(a, buf);
  plan_leaders_kernel<<<grid, 256, 0, stream>>>(a, buf);
  plan_work_kernel<<<1, kPlanThreads, 0, stream>>>(a, buf);
  plan_place_kernel<<<grid, 256, 0, stream>>>(buf);
  return cudaGetLastError();
}

}  // namespace flashcore
