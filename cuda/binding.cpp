// Torch entry points of FlashCore's CUDA kernels: check inputs, allocate outputs, launch.
// The Python API (sglang_flashcore/api.py) validates first with friendlier messages; these
// checks are the last line before a kernel sees a pointer.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <vector>

#include "flashcore/dense_fwd.h"
#include "flashcore/paged_decode.h"

namespace {

#define FC_CHECK(cond, ...) TORCH_CHECK_VALUE(cond, "flashcore: ", __VA_ARGS__)

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
  for (int64_t i = 0; i + 1 < t.dim(); ++i)
    FC_CHECK(t.size(i) <= 1 || t.stride(i) % 8 == 0, name, ": stride ", t.stride(i), " of dim ", i,
             " must be a multiple of 8 elements (16-byte rows)");
  FC_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, name, ": data must be 16-byte aligned");
}

const int* index_ptr(const at::Tensor& t, const at::Tensor& like, const char* name) {
  check_cuda(t, like, name);
  FC_CHECK(t.scalar_type() == at::kInt, name, ": expected int32, got ", t.scalar_type());
  FC_CHECK(t.dim() == 1 && t.is_contiguous(), name, ": expected a contiguous 1-D tensor");
  return t.data_ptr<int>();
}

// Checks the decode inputs and fills the launch parameters (outputs and workspaces are set by the caller).
flashcore::PagedDecodeParams decode_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                           const std::vector<at::Tensor>& plan, int64_t page_size, double scale,
                                           int64_t max_readers, int* dtype) {
  FC_CHECK(plan.size() == 8, "plan: expected 8 tensors (kernels.plan_tensors), got ", plan.size());
  check_cuda(q, q, "q");
  check_cuda(k, q, "k_cache");
  check_cuda(v, q, "v_cache");
  *dtype = dtype_code(q, "q");
  FC_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
           "k_cache/v_cache: expected dtype ", q.scalar_type());
  FC_CHECK(q.dim() == 3, "q: expected [B, Hq, D], got ", q.sizes());
  FC_CHECK(k.dim() == 3 || k.dim() == 4, "k_cache: expected [slots, Hkv, D] or [pages, Hkv, page_size, D]");
  FC_CHECK(k.sizes() == v.sizes() && k.strides() == v.strides(), "k_cache and v_cache: expected the same shape and strides");
  const int64_t B = q.size(0), Hq = q.size(1), D = q.size(2), Hkv = k.size(1);
  FC_CHECK(D == 64 || D == 128, "q: the decode kernel supports head dim 64 or 128, got ", D);
  FC_CHECK(k.size(-1) == D, "k_cache: head dim ", k.size(-1), " differs from q's ", D);
  FC_CHECK(Hkv > 0 && Hq % Hkv == 0, "q has ", Hq, " heads, k_cache has ", Hkv, ": not a multiple");
  FC_CHECK(page_size >= 1 && page_size <= flashcore::kDecodeMaxChunkTokens, "page_size: expected 1..",
           flashcore::kDecodeMaxChunkTokens, ", got ", page_size);
  check_rows_16b(q, "q");
  check_rows_16b(k, "k_cache");
  check_rows_16b(v, "v_cache");
  FC_CHECK((k.numel() + 7) / 8 <= (int64_t)UINT32_MAX, "k_cache: pools over 2^35 elements are not supported");

  flashcore::PagedDecodeParams p{};
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.q_stride_b = q.stride(0);
  p.q_stride_h = q.stride(1);
  if (k.dim() == 3) {  // SGLang's pool: slot = page * page_size + offset
    p.kv_stride_tok = k.stride(0);
    p.kv_stride_page = k.stride(0) * page_size;
  } else {  // head-major pages
    FC_CHECK(k.size(2) == page_size, "k_cache: ", k.size(2), " tokens per page, layout says ", page_size);
    p.kv_stride_page = k.stride(0);
    p.kv_stride_tok = k.stride(2);
  }
  p.kv_stride_head = k.stride(1);
  p.num_q_heads = (int)Hq;
  p.num_kv_heads = (int)Hkv;
  p.group = (int)(Hq / Hkv);
  p.scale_log2 = (float)(scale * 1.4426950408889634);
  const char* names[8] = {"work_entry_offsets", "work_reader_offsets", "work_readers", "entry_pages",
                          "entry_offsets", "entry_token_offsets", "merge_offsets", "merge_partials"};
  const int* ptrs[8];
  for (int i = 0; i < 8; ++i) ptrs[i] = index_ptr(plan[i], q, names[i]);
  p.work_entry_offsets = ptrs[0];
  p.work_reader_offsets = ptrs[1];
  p.work_readers = ptrs[2];
  p.entry_pages = ptrs[3];
  p.entry_offsets = ptrs[4];
  p.entry_token_offsets = ptrs[5];
  p.merge_offsets = ptrs[6];
  p.merge_partials = ptrs[7];
  FC_CHECK(plan[6].numel() >= B + 1, "merge_offsets: expected ", B + 1, " offsets, got ", plan[6].numel());
  p.num_work = (int)(plan[0].numel() - 1);
  p.batch = (int)B;
  p.max_rows = (int)std::max<int64_t>(max_readers * p.group, 1);
  return p;
}

std::vector<at::Tensor> launch_decode(flashcore::PagedDecodeParams& p, const at::Tensor& q, int dtype,
                                      float* partial_o, float* partial_lse) {
  auto out = at::empty_like(q);
  auto lse = at::empty({q.size(0), q.size(1)}, q.options().dtype(at::kFloat));
  p.partial_o = partial_o;
  p.partial_lse = partial_lse;
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.out_stride_b = out.stride(0);
  p.out_stride_h = out.stride(1);
  cudaError_t err = flashcore::paged_decode_launch(p, dtype, (int)q.size(2), at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "flashcore: paged_decode launch failed: ", cudaGetErrorString(err));
  return {out, lse};
}

std::vector<at::Tensor> paged_decode(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const std::vector<at::Tensor>& plan, int64_t page_size, double scale,
                                     int64_t max_readers) {
  int dtype;
  auto p = decode_params(q, k, v, plan, page_size, scale, max_readers, &dtype);
  const at::cuda::CUDAGuard guard(q.device());
  const int64_t num_partials = plan[2].numel();
  auto partial_o = at::empty({num_partials, q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  auto partial_lse = at::empty({num_partials, q.size(1)}, q.options().dtype(at::kFloat));
  return launch_decode(p, q, dtype, partial_o.data_ptr<float>(), partial_lse.data_ptr<float>());
}

// The CUDA-graph form: fixed-capacity plan buffers, the work-item count in device memory and
// preallocated partial workspaces, so one captured launch serves every later batch.
std::vector<at::Tensor> paged_decode_static(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                            const std::vector<at::Tensor>& plan, int64_t page_size, double scale,
                                            int64_t max_readers, const at::Tensor& num_work,
                                            const at::Tensor& partial_o, const at::Tensor& partial_lse,
                                            int64_t grid_work) {
  int dtype;
  auto p = decode_params(q, k, v, plan, page_size, scale, max_readers, &dtype);
  p.num_work_dev = index_ptr(num_work, q, "num_work");
  p.grid_work = (int)std::max<int64_t>(grid_work, 1);
  FC_CHECK(partial_o.scalar_type() == at::kFloat && partial_lse.scalar_type() == at::kFloat &&
               partial_o.is_contiguous() && partial_lse.is_contiguous(),
           "partial_o/partial_lse: expected contiguous float32 workspaces");
  FC_CHECK(partial_o.numel() >= plan[2].numel() * q.size(1) * q.size(2) &&
               partial_lse.numel() >= plan[2].numel() * q.size(1),
           "partial_o/partial_lse: workspaces too small for ", plan[2].numel(), " partials of ", q.size(1), " heads");
  const at::cuda::CUDAGuard guard(q.device());
  return launch_decode(p, q, dtype, partial_o.data_ptr<float>(), partial_lse.data_ptr<float>());
}

std::vector<at::Tensor> attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const at::Tensor& cu_q, const at::Tensor& cu_k, int64_t max_seqlen_q,
                                      bool causal, double scale) {
  check_cuda(q, q, "q");
  check_cuda(k, q, "k");
  check_cuda(v, q, "v");
  const int dtype = dtype_code(q, "q");
  FC_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), "k/v: expected dtype ",
           q.scalar_type());
  FC_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3, "q/k/v: expected [tokens, heads, D]");
  const int64_t Hq = q.size(1), D = q.size(2), Hkv = k.size(1);
  FC_CHECK(D == 64 || D == 128, "q: the dense kernel supports head dim 64 or 128, got ", D);
  FC_CHECK(k.size(2) == D && v.size(2) == D && v.size(1) == Hkv && v.size(0) == k.size(0), "k/v: shapes ",
           k.sizes(), " and ", v.sizes(), " do not match q's head dim ", D);
  FC_CHECK(Hkv > 0 && Hq % Hkv == 0, "q has ", Hq, " heads, k has ", Hkv, ": not a multiple");
  check_rows_16b(q, "q");
  check_rows_16b(k, "k");
  check_rows_16b(v, "v");
  const int* cq = index_ptr(cu_q, q, "cu_seqlens_q");
  const int* ck = index_ptr(cu_k, q, "cu_seqlens_k");
  FC_CHECK(cu_q.numel() == cu_k.numel() && cu_q.numel() >= 1, "cu_seqlens_q/k: expected B+1 offsets each");

  const at::cuda::CUDAGuard guard(q.device());
  auto out = at::empty({q.size(0), Hq, D}, q.options());
  auto lse = at::empty({q.size(0), Hq}, q.options().dtype(at::kFloat));
  flashcore::DenseFwdArgs a{};
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
  a.softmax_scale = (float)scale;
  a.causal = causal;
  if (q.size(0) == 0) return {out, lse};
  cudaError_t err = flashcore::dense_fwd_launch(a, dtype, (int)D, at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "flashcore: dense attention launch failed: ", cudaGetErrorString(err));
  return {out, lse};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "FlashCore CUDA kernels";
  m.def("paged_decode", &paged_decode, "Paged CSR decode over a SharingPlan");
  m.def("paged_decode_static", &paged_decode_static, "Paged decode over fixed-capacity plan buffers (CUDA graphs)");
  m.def("attention_fwd", &attention_fwd, "Dense (varlen) attention forward, TMA + wgmma");
}
