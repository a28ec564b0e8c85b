// Torch entry points of FlashCore's CUDA kernels: check inputs, allocate outputs, launch.
// The Python API (sglang_flashcore/api.py) validates first with friendlier messages; these
// checks are the last line before a kernel sees a pointer.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <cmath>
#include <cstdlib>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "flashcore/decode_plan.h"
#include "flashcore/dense_fwd.h"
#include "flashcore/draft_merge.h"
#include "flashcore/heuristics.h"
#include "flashcore/paged_decode.h"
#ifdef FLASHCORE_PREBUILT
// written by setup.py for an ahead-of-time build: the torch and CUDA versions it is built against
#include "flashcore_prebuilt.h"
#endif

namespace {

// Error messages are assembled without iostreams and thrown as std exceptions (pybind11 turns
// std::invalid_argument into ValueError, std::runtime_error into RuntimeError). On the GPU box,
// formatting a number through c10::str / std::ostream inside this extension crashed the process
// (a libstdc++ other than the compiler's is loaded there), so numbers go through std::to_string.
void append(std::string& s, const char* x) { s += x; }
void append(std::string& s, const std::string& x) { s += x; }
template <typename I, std::enable_if_t<std::is_integral_v<I>, int> = 0>
void append(std::string& s, I x) {
  s += std::to_string(x);
}
void append(std::string& s, at::IntArrayRef xs) {
  s += "[";
  for (size_t i = 0; i < xs.size(); ++i) s += (i ? ", " : "") + std::to_string(xs[i]);
  s += "]";
}
void append(std::string& s, at::ScalarType t) { s += c10::toString(t); }
void append(std::string& s, const at::Device& d) { s += d.str(); }

template <typename E, typename... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  std::string msg = "flashcore: ";
  (append(msg, parts), ...);
  throw E(msg);
}

#define FC_CHECK(cond, ...)                                          \
  do {                                                               \
    if (!(cond)) fail<std::invalid_argument>(__VA_ARGS__);           \
  } while (0)
#define FC_CHECK_CUDA(err, what)                                                          \
  do {                                                                                    \
    const cudaError_t e_ = (err);                                                         \
    if (e_ != cudaSuccess) fail<std::runtime_error>(what, " failed: ", cudaGetErrorString(e_)); \
  } while (0)

// The kernel head dim that serves q's head dim d (heuristics.h: 64, 128 or 256, the multiples of
// 16 between them in the next one up), or a clear error naming the kernel.
int64_t kernel_head_dim(int64_t d, const char* kernel) {
  const int64_t kernel_d = flashcore::kernel_head_dim_for(d);
  FC_CHECK(kernel_d != 0, "q: the ", kernel, " kernel supports head dims 64 to 256 in multiples of 16, got ", d);
  return kernel_d;
}

int dtype_code(const at::Tensor& t, const char* name) {
  if (t.scalar_type() == at::kHalf) return 0;
  if (t.scalar_type() == at::kBFloat16) return 1;
  FC_CHECK(false, name, ": the CUDA kernels take float16 or bfloat16, got ", t.scalar_type());
  return -1;
}

void check_cuda(const at::Tensor& t, const at::Tensor& like, const char* name) {
  FC_CHECK(t.is_cuda(), name, ": expected a CUDA tensor");
  FC_CHECK(t.device() == like.device(), name, ": expected a tensor on ", like.device(), ", got ", t.device());
}

void check_rows_16b(const at::Tensor& t, const char* name) {
  FC_CHECK(t.stride(-1) == 1, name, ": expected the last dimension contiguous, got strides ", t.strides());
  const int64_t per_16b = 16 / (int64_t)t.element_size();
  for (int64_t i = 0; i + 1 < t.dim(); ++i)
    FC_CHECK(t.size(i) <= 1 || t.stride(i) % per_16b == 0, name, ": stride ", t.stride(i), " of dim ", i,
             " must be a multiple of ", per_16b, " elements (16-byte rows)");
  FC_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, name, ": data must be 16-byte aligned");
}

const int* index_ptr(const at::Tensor& t, const at::Tensor& like, const char* name) {
  check_cuda(t, like, name);
  FC_CHECK(t.scalar_type() == at::kInt, name, ": expected int32, got ", t.scalar_type());
  FC_CHECK(t.dim() == 1 && t.is_contiguous(), name, ": expected a contiguous 1-D tensor");
  return t.data_ptr<int>();
}

// The decode kernel's code for a pool's element type: q's own, or an FP8 format.
int kv_dtype_code(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  FC_CHECK(k.scalar_type() == v.scalar_type(), "k_cache/v_cache: expected one dtype, got ", k.scalar_type(), " and ",
           v.scalar_type());
  if (k.scalar_type() == q.scalar_type()) return flashcore::kDecodeKvSameAsQuery;
  if (k.scalar_type() == at::kFloat8_e4m3fn) return flashcore::kDecodeKvFp8E4m3;
  if (k.scalar_type() == at::kFloat8_e5m2) return flashcore::kDecodeKvFp8E5m2;
  FC_CHECK(false, "k_cache/v_cache: expected dtype ", q.scalar_type(), ", float8_e4m3fn or float8_e5m2, got ",
           k.scalar_type());
  return -1;
}

// Checks q and the pools and fills the launch parameters they determine.
flashcore::PagedDecodeParams pool_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                         int64_t page_size, double scale, int* dtype, int* kv_dtype) {
  check_cuda(q, q, "q");
  check_cuda(k, q, "k_cache");
  check_cuda(v, q, "v_cache");
  *dtype = dtype_code(q, "q");
  *kv_dtype = kv_dtype_code(q, k, v);
  FC_CHECK(q.dim() == 3, "q: expected [B, Hq, D], got ", q.sizes());
  FC_CHECK(k.dim() == 3 || k.dim() == 4, "k_cache: expected [slots, Hkv, D] or [pages, Hkv, page_size, D]");
  FC_CHECK(k.sizes() == v.sizes() && k.strides() == v.strides(), "k_cache and v_cache: expected the same shape and strides");
  const int64_t Hq = q.size(1), D = q.size(2), Hkv = k.size(1);
  kernel_head_dim(D, "decode");
  FC_CHECK(k.size(-1) == D, "k_cache: head dim ", k.size(-1), " differs from q's ", D);
  FC_CHECK(Hkv > 0 && Hq % Hkv == 0, "q has ", Hq, " heads, k_cache has ", Hkv, ": not a multiple");
  FC_CHECK(page_size >= 1 && page_size <= flashcore::kDecodeMaxChunkTokens, "page_size: expected 1..",
           flashcore::kDecodeMaxChunkTokens, ", got ", page_size);
  check_rows_16b(q, "q");
  check_rows_16b(k, "k_cache");
  check_rows_16b(v, "v_cache");
  FC_CHECK((k.numel() * (int64_t)k.element_size() + 15) / 16 <= (int64_t)UINT32_MAX,
           "k_cache: pools over 2^36 bytes are not supported");

  flashcore::PagedDecodeParams p{};
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.q_stride_b = q.stride(0);
  p.q_stride_h = q.stride(1);
  p.head_dim = (int)D;
  if (k.dim() == 3) {  // SGLang's pool: slot = page * page_size + offset
    p.kv_stride_tok = k.stride(0);
    p.kv_stride_page = k.stride(0) * page_size;
    p.num_slots = k.size(0);
    p.slots_linear = true;
  } else {  // head-major pages
    FC_CHECK(k.size(2) == page_size, "k_cache: ", k.size(2), " tokens per page, layout says ", page_size);
    p.kv_stride_page = k.stride(0);
    p.kv_stride_tok = k.stride(2);
    p.num_slots = k.size(0) * page_size;
    p.slots_linear = false;
  }
  p.page_size = (int)page_size;
  p.kv_stride_head = k.stride(1);
  p.num_q_heads = (int)Hq;
  p.num_kv_heads = (int)Hkv;
  p.group = (int)(Hq / Hkv);
  p.scale_log2 = (float)(scale * 1.4426950408889634);
  p.v_scale = 1.f;
  p.batch = (int)q.size(0);
  return p;
}

// The planner's buffers inside its two workspaces (allocated by sglang_flashcore/decode_plan.py).
flashcore::TablePlanBuffers table_buffers(const at::Tensor& ints, const at::Tensor& hash, const at::Tensor& like,
                                          int64_t max_batch, int64_t max_chunks) {
  check_cuda(ints, like, "plan workspace");
  check_cuda(hash, like, "plan hash table");
  FC_CHECK(max_batch >= 0 && max_chunks >= std::max<int64_t>(max_batch, 1) && max_chunks < (1 << 28),
           "planner capacities: expected max_batch <= max_chunks < 2^28, got ", max_batch, " and ", max_chunks);
  FC_CHECK(ints.scalar_type() == at::kInt && ints.is_contiguous() &&
               ints.numel() >= flashcore::table_plan_ints((int)max_batch, (int)max_chunks),
           "plan workspace: expected a contiguous int32 tensor of table_plan_ints(", max_batch, ", ", max_chunks,
           ") elements");
  FC_CHECK(hash.scalar_type() == at::kLong && hash.is_contiguous() &&
               hash.numel() >= flashcore::table_plan_hash_size((int)max_chunks),
           "plan hash table: expected a contiguous int64 tensor of table_plan_hash_size(", max_chunks, ") elements");
  return flashcore::carve_table_plan(ints.data_ptr<int>(), reinterpret_cast<unsigned long long*>(hash.data_ptr<int64_t>()),
                                     (int)max_batch, (int)max_chunks);
}

// Partials a planner with max_chunks chunks may write: one per chunk, plus the tail split's.
int64_t table_partials(int64_t max_chunks) { return max_chunks + flashcore::kDecodeSplitExtra; }

bool index_64(const at::Tensor& t, const at::Tensor& like, const char* name) {
  check_cuda(t, like, name);
  FC_CHECK(t.scalar_type() == at::kInt || t.scalar_type() == at::kLong, name, ": expected int32 or int64, got ",
           t.scalar_type());
  return t.scalar_type() == at::kLong;
}

// Checks SGLang's page table and fills the planner's page-table fields (see flashcore/page_table.cuh).
void fill_page_table(flashcore::TablePlanArgs& a, const at::Tensor& req_to_token, const at::Tensor& req_pool_indices,
                     const at::Tensor& seq_lens) {
  a.r2t_64 = index_64(req_to_token, req_to_token, "req_to_token");
  a.idx_64 = index_64(req_pool_indices, req_to_token, "req_pool_indices");
  a.lens_64 = index_64(seq_lens, req_to_token, "seq_lens");
  FC_CHECK(req_to_token.dim() == 2 && req_to_token.stride(1) == 1, "req_to_token: expected a 2-D tensor with contiguous rows, got ",
           req_to_token.sizes());
  FC_CHECK(req_pool_indices.dim() == 1 && req_pool_indices.is_contiguous() && seq_lens.dim() == 1 &&
               seq_lens.is_contiguous() && seq_lens.numel() == req_pool_indices.numel(),
           "req_pool_indices/seq_lens: expected contiguous 1-D tensors of one length, got ", req_pool_indices.sizes(),
           " and ", seq_lens.sizes());
  FC_CHECK(req_to_token.size(1) < (1LL << 31) - 1, "req_to_token: rows over 2^31 positions are not supported");
  a.req_to_token = req_to_token.data_ptr();
  a.req_pool_indices = req_pool_indices.data_ptr();
  a.seq_lens = seq_lens.data_ptr();
  a.r2t_rows = req_to_token.size(0);
  a.r2t_stride = req_to_token.stride(0);
  a.max_context = req_to_token.size(1);
  a.batch = (int)seq_lens.numel();
}

// Plans one decode step from SGLang's page table into the planner's workspaces (no host sync).
void plan_decode_table(const at::Tensor& req_to_token, const at::Tensor& req_pool_indices, const at::Tensor& seq_lens,
                       const at::Tensor& ints, const at::Tensor& hash, int64_t max_batch, int64_t max_chunks,
                       int64_t group, int64_t fixed_chunk, int64_t min_chunk, int64_t max_auto_chunk,
                       int64_t target_items, int64_t num_kv_heads, int64_t grid_work, int64_t split_parts,
                       int64_t wave_max_chunk, bool share) {
  flashcore::TablePlanArgs a{};
  fill_page_table(a, req_to_token, req_pool_indices, seq_lens);
  FC_CHECK(seq_lens.numel() <= max_batch, "seq_lens: ", seq_lens.numel(), " requests, the planner holds ", max_batch);
  FC_CHECK(group >= 1 && group <= flashcore::kDecodeMaxGroup, "group: expected 1..", flashcore::kDecodeMaxGroup,
           " query heads per KV head, got ", group);
  FC_CHECK(fixed_chunk >= 0 && min_chunk >= 1 && max_auto_chunk >= min_chunk && target_items >= 0,
           "chunk policy: expected fixed_chunk >= 0 and 1 <= min_chunk <= max_auto_chunk");
  FC_CHECK(wave_max_chunk >= 0 && wave_max_chunk < (1LL << 31), "wave_max_chunk: expected 0 (off) or a token count, got ",
           wave_max_chunk);
  FC_CHECK(num_kv_heads >= 1 && grid_work >= 1 && split_parts >= 1 && split_parts <= flashcore::kDecodeSplitMaxParts,
           "tail split: expected num_kv_heads >= 1, grid_work >= 1 and split_parts in 1..",
           flashcore::kDecodeSplitMaxParts, ", got ", num_kv_heads, ", ", grid_work, ", ", split_parts);
  a.group = (int)group;
  a.rows_per_task = flashcore::kDecodeRowsPerCta;
  a.fixed_chunk = (int)fixed_chunk;
  a.share = share;
  a.min_chunk = (int)min_chunk;
  a.max_auto_chunk = (int)max_auto_chunk;
  a.target_items = target_items;
  const at::cuda::CUDAGuard guard(req_to_token.device());
  auto buf = table_buffers(ints, hash, req_to_token, max_batch, max_chunks);
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  a.num_kv_heads = (int)num_kv_heads;
  a.resident_ctas = flashcore::kDecodeCtasPerSm * sms;
  a.grid_work = (int)std::min<int64_t>(grid_work, 1 << 30);
  a.split_parts = (int)split_parts;
  a.wave_max_chunk = (int)wave_max_chunk;
  cudaError_t err = flashcore::table_plan_launch(a, buf, sms, at::cuda::getCurrentCUDAStream());
  FC_CHECK_CUDA(err, "decode planner launch");
}

std::vector<at::Tensor> launch_decode(flashcore::PagedDecodeParams& p, const at::Tensor& q, const at::Tensor& k,
                                      int dtype, int kv_dtype, float* partial_o, float* partial_lse,
                                      bool fixed_merge) {
  auto out = at::empty_like(q);
  auto lse = at::empty({q.size(0), q.size(1)}, q.options().dtype(at::kFloat));
  p.partial_o = partial_o;
  p.partial_lse = partial_lse;
  // The merge runs a block per (request, query head): with few of them (few requests, each with
  // many partials) 16 lane groups a block shorten each block's chain of loads; with many, 4 keep
  // more blocks resident (H200: 16 groups read 3-4% faster at 2-4 requests, 1-2.5% slower at
  // 32-64).
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  // (fixed_merge: one merge shape for every batch, so a request's sum order never depends on it)
  p.merge_groups = !fixed_merge && q.size(0) * q.size(1) <= flashcore::kDecodeMergeFewBlocksPerSm * sms
                       ? flashcore::kDecodeMergeGroupsFew
                       : flashcore::kDecodeMergeGroupsMany;
  // SGLang's pool: the copy loop's short address path (a row's bytes fit 32 bits)
  p.linear_rows = p.slots_linear && p.kv_stride_tok * (int64_t)k.element_size() <= INT32_MAX;
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.out_stride_b = out.stride(0);
  p.out_stride_h = out.stride(1);
  cudaError_t err = flashcore::paged_decode_launch(p, dtype, kv_dtype, flashcore::kernel_head_dim_for(p.head_dim),
                                                   at::cuda::getCurrentCUDAStream());
  FC_CHECK_CUDA(err, "paged_decode launch");
  return {out, lse};
}

// Named int32 views of a planner workspace, for reports and tests (reading them syncs).
std::vector<std::pair<std::string, at::Tensor>> table_plan_views(const at::Tensor& ints, const at::Tensor& hash,
                                                                 int64_t max_batch, int64_t max_chunks) {
  auto buf = table_buffers(ints, hash, ints, max_batch, max_chunks);
  const int* base = ints.data_ptr<int>();
  auto view = [&](const int* ptr, int64_t n) { return ints.narrow(0, ptr - base, n); };
  const int64_t P = max_chunks;
  return {{"meta", view(buf.meta, flashcore::kMetaCount)},
          {"chunk_base", view(buf.chunk_base, max_batch + 1)},
          {"chunk_leader", view(buf.chunk_leader, P)},
          {"work_row", view(buf.work_row, P)},
          {"work_pos0", view(buf.work_pos0, P)},
          {"work_ntok", view(buf.work_ntok, P)},
          {"work_reader_offsets", view(buf.work_reader_offsets, P + 1)},
          {"work_readers", view(buf.work_readers, P)},
          {"work_partials", view(buf.work_partials, P)},
          {"tasks", view(buf.tasks, 2 * (int64_t)flashcore::table_plan_task_capacity((int)max_chunks))},
          {"chunk_partial", view(buf.chunk_partial, P + 1)}};
}

// Decode over a plan made by plan_decode_table: graph-capturable (counts stay on the device).
std::vector<at::Tensor> paged_decode_table(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                           const at::Tensor& req_to_token, const at::Tensor& ints,
                                           const at::Tensor& hash, int64_t max_batch, int64_t max_chunks,
                                           int64_t page_size, double scale, const at::Tensor& partial_o,
                                           const at::Tensor& partial_lse, int64_t grid_work, double k_scale,
                                           double v_scale, bool fixed_merge, double softcap) {
  int dtype, kv_dtype;
  FC_CHECK(std::isfinite(k_scale) && k_scale > 0 && std::isfinite(v_scale) && v_scale > 0,
           "k_scale/v_scale: expected finite positive dequantization scales, got ", k_scale, " and ", v_scale);
  auto p = pool_params(q, k, v, page_size, scale * k_scale, &dtype, &kv_dtype);
  p.v_scale = (float)v_scale;
  FC_CHECK(std::isfinite(softcap) && softcap >= 0, "softcap: expected 0 (none) or a positive cap, got ", softcap);
  p.softcap_log2 = (float)(softcap * 1.4426950408889634);
  check_cuda(req_to_token, q, "req_to_token");
  FC_CHECK(req_to_token.scalar_type() == at::kInt && req_to_token.dim() == 2 && req_to_token.stride(1) == 1,
           "req_to_token: the decode kernel reads int32 slots in contiguous rows, got ", req_to_token.scalar_type(),
           " with strides ", req_to_token.strides());
  FC_CHECK(q.size(0) <= max_batch, "q: ", q.size(0), " requests, the planner holds ", max_batch);
  FC_CHECK(p.group <= flashcore::kDecodeMaxGroup, "q/k_cache: the page-table decode path supports up to ",
           flashcore::kDecodeMaxGroup, " query heads per KV head, got ", p.group);
  auto buf = table_buffers(ints, hash, q, max_batch, max_chunks);
  FC_CHECK(partial_o.scalar_type() == at::kFloat && partial_lse.scalar_type() == at::kFloat &&
               partial_o.is_contiguous() && partial_lse.is_contiguous() &&
               partial_o.numel() >= table_partials(max_chunks) * q.size(1) * flashcore::kernel_head_dim_for(p.head_dim) &&
               partial_lse.numel() >= table_partials(max_chunks) * q.size(1),
           "partial_o/partial_lse: expected contiguous float32 workspaces for ", table_partials(max_chunks),
           " partials of ", q.size(1), " heads (of the kernel's head dim)");
  p.req_to_token = req_to_token.data_ptr<int>();
  p.r2t_stride = req_to_token.stride(0);
  p.work_reader_offsets = buf.work_reader_offsets;
  p.work_readers = buf.work_readers;
  p.work_row = buf.work_row;
  p.work_pos0 = buf.work_pos0;
  p.work_ntok = buf.work_ntok;
  p.work_partials = buf.work_partials;
  p.tasks = buf.tasks;
  p.chunk_partial = buf.chunk_partial;
  p.num_tasks_dev = buf.meta + flashcore::kMetaTasks;
  p.merge_offsets = buf.chunk_base;
  // every reader set of a step has at most B requests: a small batch needs fewer query tiles
  p.max_rows = (int)std::min<int64_t>(std::max<int64_t>(q.size(0) * p.group, 1), flashcore::kDecodeRowsPerCta);
  p.grid_work = (int)std::max<int64_t>(grid_work, 1);
  const at::cuda::CUDAGuard guard(q.device());
  return launch_decode(p, q, k, dtype, kv_dtype, partial_o.data_ptr<float>(), partial_lse.data_ptr<float>(),
                       fixed_merge);
}

// The dense kernel's claim counter for the current stream (int[2], zeroed once): each launch
// leaves it zero, so the call needs no memset before the kernel.
int* stream_claim_counter(const at::Tensor& like) {
  static std::mutex mutex;
  // (device, stream id) -> counter; never destroyed: freeing device memory from a static
  // destructor at exit would outlive the caching allocator
  static auto* counters = new std::map<std::pair<int, int64_t>, at::Tensor>();
  const at::cuda::CUDAStream stream = at::cuda::getCurrentCUDAStream();
  std::lock_guard<std::mutex> lock(mutex);
  at::Tensor& counter = (*counters)[{(int)like.get_device(), (int64_t)stream.id()}];
  if (!counter.defined()) counter = at::zeros({2}, like.options().dtype(at::kInt));
  return counter.data_ptr<int>();
}

// Shared by the packed and the paged entry points: checks q/k/v and launches.
std::vector<at::Tensor> dense_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const at::Tensor& cu_q, const at::Tensor& cu_k, int64_t max_seqlen_q,
                                      bool causal, double scale, int64_t window_left, double softcap,
                                      const char* k_name, const char* v_name, flashcore::DenseFwdArgs a) {
  check_cuda(q, q, "q");
  check_cuda(k, q, k_name);
  check_cuda(v, q, v_name);
  const int dtype = dtype_code(q, "q");
  FC_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), k_name, "/", v_name,
           ": expected dtype ", q.scalar_type());
  FC_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3, "q/", k_name, "/", v_name, ": expected [tokens, heads, D]");
  const int64_t Hq = q.size(1), D = q.size(2), Hkv = k.size(1);
  const int64_t kernel_d = kernel_head_dim(D, "dense");
  FC_CHECK(k.size(2) == D && v.size(2) == D && v.size(1) == Hkv && v.size(0) == k.size(0), k_name, "/", v_name,
           ": shapes ", k.sizes(), " and ", v.sizes(), " do not match q's head dim ", D);
  FC_CHECK(Hkv > 0 && Hq % Hkv == 0, "q has ", Hq, " heads, ", k_name, " has ", Hkv, ": not a multiple");
  // the kernel takes row maxima of the raw scores, which is only right for a positive scale
  FC_CHECK(scale > 0, "softmax_scale: expected a positive scale, got ", scale);
  FC_CHECK(window_left >= -1 && window_left < INT32_MAX, "window_left: expected -1 (no window) or a key count, got ",
           window_left);
  FC_CHECK(window_left < 0 || causal, "window_left: a sliding window needs causal=True");
  FC_CHECK(std::isfinite(softcap) && softcap >= 0, "softcap: expected 0 (none) or a positive cap, got ", softcap);
  FC_CHECK(k.size(0) < INT32_MAX, k_name, ": over 2^31 rows are not supported");
  check_rows_16b(q, "q");
  check_rows_16b(k, k_name);
  check_rows_16b(v, v_name);
  const int* cq = index_ptr(cu_q, q, "cu_seqlens_q");
  const int* ck = index_ptr(cu_k, q, "cu_seqlens_k");
  FC_CHECK(cu_q.numel() == cu_k.numel() && cu_q.numel() >= 1, "cu_seqlens_q/k: expected B+1 offsets each");

  const at::cuda::CUDAGuard guard(q.device());
  auto out = at::empty({q.size(0), Hq, D}, q.options());
  auto lse = at::empty({q.size(0), Hq}, q.options().dtype(at::kFloat));
  a.q = q.data_ptr();
  a.k = k.data_ptr();
  a.v = v.data_ptr();
  a.out = out.data_ptr();
  a.lse = lse.data_ptr<float>();
  a.cu_seqlens_q = cq;
  a.cu_seqlens_k = ck;
  a.total_q = q.size(0);
  a.total_k = k.size(0);
  a.q_stride_row = q.stride(0);
  a.q_stride_head = q.stride(1);
  a.k_stride_row = k.stride(0);
  a.k_stride_head = k.stride(1);
  a.v_stride_row = v.stride(0);
  a.v_stride_head = v.stride(1);
  a.out_stride_row = out.stride(0);
  a.out_stride_head = out.stride(1);
  a.batch = (int)(cu_q.numel() - 1);
  a.num_q_heads = (int)Hq;
  a.num_kv_heads = (int)Hkv;
  a.max_seqlen_q = (int)max_seqlen_q;
  a.head_dim = (int)D;
  a.softmax_scale = (float)scale;
  a.causal = causal;
  a.window_left = (int)window_left;
  a.softcap = (float)softcap;
  if (q.size(0) == 0) return {out, lse};
  at::Tensor tile_counter;  // the persistent schedule's work-tile counter, when a fresh one
  at::Tensor tile_list, select_temp;  // ragged batches: the tiles that hold rows (dense_fwd.h)
  // one counter per stream, which every launch leaves zero; a fresh, zeroed one while a CUDA
  // graph is being captured (its memory belongs to the graph)
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  FC_CHECK_CUDA(cudaStreamIsCapturing(at::cuda::getCurrentCUDAStream(), &capture), "dense attention: capture status");
  if (capture != cudaStreamCaptureStatusNone) {
    tile_counter = at::empty({2}, q.options().dtype(at::kInt));
    a.tile_counter = tile_counter.data_ptr<int>();
    a.zero_counter = true;
  } else {
    a.tile_counter = stream_claim_counter(q);
  }
  a.num_sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t capacity = flashcore::dense_tile_list_capacity(a);
  if (capacity > 0) {
    tile_list = at::empty({capacity}, q.options().dtype(at::kInt));
    a.select_temp_bytes = flashcore::dense_tile_select_temp_bytes(capacity);
    select_temp = at::empty({(int64_t)std::max<size_t>(a.select_temp_bytes, 1)}, q.options().dtype(at::kByte));
    a.tile_list = tile_list.data_ptr<int>();
    a.select_temp = select_temp.data_ptr();
  }
  cudaError_t err = flashcore::dense_fwd_launch(a, dtype, (int)kernel_d, at::cuda::getCurrentCUDAStream());
  FC_CHECK_CUDA(err, "dense attention launch");
  return {out, lse};
}

std::vector<at::Tensor> attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const at::Tensor& cu_q, const at::Tensor& cu_k, int64_t max_seqlen_q,
                                      bool causal, double scale, int64_t window_left, double softcap) {
  return dense_forward(q, k, v, cu_q, cu_k, max_seqlen_q, causal, scale, window_left, softcap, "k", "v",
                       flashcore::DenseFwdArgs{});
}

// Keys of request b: its whole pages of the pool [slots, Hkv, D], read in place through its page
// list, then its packed k/v rows (see DenseFwdArgs).
std::vector<at::Tensor> attention_fwd_paged(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                            const at::Tensor& cu_q, const at::Tensor& cu_k, const at::Tensor& k_cache,
                                            const at::Tensor& v_cache, const at::Tensor& key_pages,
                                            const at::Tensor& key_page_offsets, int64_t page_size,
                                            int64_t max_seqlen_q, bool causal, double scale, int64_t window_left,
                                            double softcap, const c10::optional<at::Tensor>& grid_order) {
  FC_CHECK(page_size >= 1 && page_size <= INT32_MAX && flashcore::dense_page_box_rows((int)page_size) > 0,
           "page_size: the paged dense kernel needs a multiple of 8, got ", page_size);
  check_cuda(k_cache, q, "k_cache");
  check_cuda(v_cache, q, "v_cache");
  FC_CHECK(k_cache.dim() == 3 && k_cache.sizes() == v_cache.sizes(),
           "k_cache/v_cache: expected SGLang's pools [slots, Hkv, D] of one shape, got ", k_cache.sizes(), " and ",
           v_cache.sizes());
  FC_CHECK(k_cache.scalar_type() == q.scalar_type() && v_cache.scalar_type() == q.scalar_type(),
           "k_cache/v_cache: expected dtype ", q.scalar_type());
  FC_CHECK(k_cache.size(1) == k.size(1) && k_cache.size(2) == k.size(2), "k_cache: heads/head dim ",
           k_cache.sizes(), " differ from k's ", k.sizes());
  FC_CHECK(k_cache.size(0) >= 1 && k_cache.size(0) < INT32_MAX, "k_cache: expected 1 to 2^31 slots");
  check_rows_16b(k_cache, "k_cache");
  check_rows_16b(v_cache, "v_cache");
  flashcore::DenseFwdArgs a{};
  a.key_pages = index_ptr(key_pages, q, "key_pages");
  a.key_page_offsets = index_ptr(key_page_offsets, q, "key_page_offsets");
  FC_CHECK(key_page_offsets.numel() == cu_q.numel(), "key_page_offsets: expected ", cu_q.numel(),
           " offsets (B+1), got ", key_page_offsets.numel());
  a.page_size = (int)page_size;
  a.k_pool = k_cache.data_ptr();
  a.v_pool = v_cache.data_ptr();
  a.pool_rows = k_cache.size(0);
  a.k_pool_stride_row = k_cache.stride(0);
  a.k_pool_stride_head = k_cache.stride(1);
  a.v_pool_stride_row = v_cache.stride(0);
  a.v_pool_stride_head = v_cache.stride(1);
  if (grid_order.has_value()) a.grid_order = index_ptr(*grid_order, q, "grid_order");
  return dense_forward(q, k, v, cu_q, cu_k, max_seqlen_q, causal, scale, window_left, softcap, "k", "v", a);
}

}  // namespace

// Speculative verify's draft part folded into the context part: (out, lse) of the whole verify.
std::vector<at::Tensor> draft_merge(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const at::Tensor& mask, const at::Tensor& out_ctx, const at::Tensor& lse_ctx,
                                    double scale, double softcap) {
  check_cuda(q, q, "q");
  for (auto [t, name] : {std::pair{&k, "k"}, {&v, "v"}, {&mask, "draft_mask"}, {&out_ctx, "out_ctx"}, {&lse_ctx, "lse_ctx"}})
    check_cuda(*t, q, name);
  const int dtype = dtype_code(q, "q");
  FC_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3, "q/k/v: expected [tokens, heads, D]");
  const int64_t rows = q.size(0), hq = q.size(1), d = q.size(2), hkv = k.size(1);
  kernel_head_dim(d, "draft");
  FC_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type() &&
               out_ctx.scalar_type() == q.scalar_type(),
           "k/v/out_ctx: expected q's dtype ", q.scalar_type());
  FC_CHECK(k.sizes() == v.sizes() && k.strides() == v.strides() && k.size(0) == rows && k.size(2) == d && hkv > 0 &&
               hq % hkv == 0,
           "k/v: expected [", rows, ", Hkv, ", d, "] with one layout and Hkv dividing ", hq, ", got ", k.sizes(),
           " and ", v.sizes());
  FC_CHECK(q.stride(2) == 1 && k.stride(2) == 1, "q/k/v: expected the head dim contiguous");
  FC_CHECK(mask.scalar_type() == at::kBool && mask.dim() == 3 && mask.is_contiguous() && mask.size(1) == mask.size(2) &&
               mask.size(0) * mask.size(1) == rows,
           "draft_mask: expected a contiguous bool [B, N, N] with B * N = ", rows, " tokens, got ", mask.sizes());
  FC_CHECK(mask.size(1) <= flashcore::kDraftMergeMaxDraft, "draft_mask: at most ", flashcore::kDraftMergeMaxDraft,
           " draft tokens per request, got ", mask.size(1));
  FC_CHECK(out_ctx.is_contiguous() && out_ctx.sizes() == q.sizes(), "out_ctx: expected a contiguous ", q.sizes(),
           " tensor, got ", out_ctx.sizes());
  FC_CHECK(lse_ctx.scalar_type() == at::kFloat && lse_ctx.is_contiguous() && lse_ctx.dim() == 2 &&
               lse_ctx.size(0) == rows && lse_ctx.size(1) == hq,
           "lse_ctx: expected contiguous float32 [", rows, ", ", hq, "]");
  FC_CHECK(std::isfinite(scale) && std::isfinite(softcap) && softcap >= 0, "scale/softcap: expected finite values "
           "and a cap of 0 (none) or more");
  FC_CHECK(rows <= INT32_MAX && hkv <= 65535, "q/k: too many tokens or KV heads for one launch");
  const at::cuda::CUDAGuard guard(q.device());
  auto out = at::empty_like(out_ctx);
  auto lse = at::empty({rows, hq}, q.options().dtype(at::kFloat));
  flashcore::DraftMergeParams p{};
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.mask = mask.data_ptr<bool>();
  p.out_ctx = out_ctx.data_ptr();
  p.lse_ctx = lse_ctx.data_ptr<float>();
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.q_stride_tok = q.stride(0);
  p.q_stride_head = q.stride(1);
  p.kv_stride_tok = k.stride(0);
  p.kv_stride_head = k.stride(1);
  p.batch = (int)mask.size(0);
  p.num_draft = (int)mask.size(1);
  p.num_q_heads = (int)hq;
  p.num_kv_heads = (int)hkv;
  p.head_dim = (int)d;
  p.scale = (float)scale;
  p.softcap = (float)softcap;
  FC_CHECK_CUDA(flashcore::draft_merge_launch(p, dtype, at::cuda::getCurrentCUDAStream()), "draft kernel launch");
  return {out, lse};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "FlashCore CUDA kernels";
#ifdef FLASHCORE_PREBUILT
  // sglang_flashcore/_jit.py uses this module only under the torch and CUDA it was built for
  m.attr("TORCH_VERSION") = FLASHCORE_TORCH_VERSION;
  m.attr("CUDA_VERSION") = FLASHCORE_CUDA_VERSION;
#endif
  m.def("plan_decode_table", &plan_decode_table, "Plans a decode step from SGLang's page table on the GPU");
  m.def("paged_decode_table", &paged_decode_table, "Decode over a page-table plan (CUDA-graph capturable)");
  m.def("table_plan_views", &table_plan_views, "Named views of a planner workspace (for stats and tests)");
  m.def("table_plan_ints", [](int64_t b, int64_t c) { return flashcore::table_plan_ints((int)b, (int)c); });
  m.def("table_plan_hash_size", [](int64_t c) { return flashcore::table_plan_hash_size((int)c); });
  m.def("table_plan_partials", &table_partials, "Partials a planner's workspace must hold (the tail split adds some)");
  m.def("draft_merge", &draft_merge, "Speculative verify: the draft tokens' attention folded into the context part");
  m.def("attention_fwd", &attention_fwd, "Dense (varlen) attention forward, TMA + wgmma");
  m.def("attention_fwd_paged", &attention_fwd_paged, "Dense attention forward, keys: whole pool pages read in place, then packed rows");
}
