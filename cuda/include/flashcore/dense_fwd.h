// Host-side interface of the dense Hopper forward kernel (no torch headers).
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

namespace flashcore {

// Ragged (varlen) attention: q [total_q, Hq, D], k/v [total_k, Hkv, D], rows of sequence b at
// cu_seqlens[b] .. cu_seqlens[b+1]. Strides in elements; the last dim is contiguous.
struct DenseFwdArgs {
  const void* q;
  const void* k;
  const void* v;
  void* out;    // [total_q, Hq, D], like q
  float* lse;   // [total_q, Hq]
  const int* cu_seqlens_q;
  const int* cu_seqlens_k;
  int64_t total_q, total_k;
  int64_t q_stride_row, q_stride_head;
  int64_t k_stride_row, k_stride_head;
  int64_t v_stride_row, v_stride_head;
  int64_t out_stride_row, out_stride_head;
  int batch, num_q_heads, num_kv_heads, max_seqlen_q;
  // The tensors' head dim: the kernel's (dense_fwd_launch's head_dim), or less (heuristics.h's
  // kernel_head_dim_for): the tensor maps then zero-fill the columns past it and store none.
  int head_dim;
  float softmax_scale;
  // aligned bottom-right: query i of Sq sees keys j <= i + Sk - Sq. Causal launches claim the
  // query blocks with the most key tiles first, so the light ones fill the tail of the grid, in
  // L2-sized sections of heads (dense_fwd.cu)
  bool causal;
  // Causal sliding window (SGLang's layer.sliding_window_size, FlashAttention's window_size_left):
  // the query at position i sees keys j with i - window_left <= j <= i; -1: no window. Key tiles
  // wholly left of a work tile's window are not loaded.
  int window_left = -1;
  // Logit soft-cap (SGLang's layer.logit_cap, Gemma 2's attn_logit_softcapping): each score s =
  // softmax_scale * q.k becomes softcap * tanh(s / softcap) before the softmax; 0: none.
  float softcap = 0.f;
  // Persistent schedule (required): one CTA per SM looping over the work tiles, claiming them
  // from this device int[2] (claims, CTAs done), zero when the launch starts; the kernel's last
  // CTA zeroes both again as it ends, so a counter kept per stream needs no reset between
  // launches (one GPU operation fewer a call). With no more work tiles than SMs, one CTA each.
  int* tile_counter = nullptr;
  bool zero_counter = false;  // the launch zeroes tile_counter first (a fresh one)
  int num_sms = 0;  // SMs of the device (the persistent grid size)
  // Ragged batches (see dense_tile_list_capacity): a device workspace of that many ints, where
  // the launch writes the count and the list of work tiles that hold query rows, in the claim
  // order, so that the persistent CTAs never claim an empty one; and the selection's scratch
  // (dense_tile_select_temp_bytes). nullptr: the CTAs skip empty tiles themselves.
  int* tile_list = nullptr;
  void* select_temp = nullptr;
  size_t select_temp_bytes = 0;
  // 0 or 1 on the device (see dense_fwd.cu): the CTA order; nullptr means 0
  const int* grid_order;
  // Paged prefix: request b's keys start with n_b = key_page_offsets[b+1] - key_page_offsets[b]
  // whole pages of the pool [pool_rows, Hkv, D] (its key j < n_b * page_size at slot
  // key_pages[key_page_offsets[b] + j / page_size] * page_size + j % page_size), followed by its
  // packed k/v rows cu_seqlens_k[b] .. cu_seqlens_k[b+1]. key_pages nullptr: no pages.
  const int* key_pages;
  const int* key_page_offsets;
  int page_size;
  const void* k_pool;
  const void* v_pool;
  int64_t pool_rows;
  int64_t k_pool_stride_row, k_pool_stride_head;
  int64_t v_pool_stride_row, v_pool_stride_head;
};

// Rows of one TMA box for a page size: the largest of 128, 64, 32, 16, 8 that divides it (a box
// must stay inside one page and keep the 1024-byte swizzle period); 0 when none does.
inline int dense_page_box_rows(int page_size) {
  if (page_size <= 0) return 0;
  for (int rows = 128; rows >= 8; rows /= 2)
    if (page_size % rows == 0) return rows;
  return 0;
}

// dtype: 0 = fp16, 1 = bf16. Returns a CUDA error code (cudaSuccess when launched).
cudaError_t dense_fwd_launch(const DenseFwdArgs& a, int dtype, int head_dim, cudaStream_t stream);

// Ints of the tile-list workspace for this batch, or 0 when a list would not pay: the work tiles
// are batch x ceil(max_seqlen_q / 128) x Hq, and at most Hq x (total_q / 128 + batch) of them hold
// rows, so a batch of near-equal lengths has few empty ones. Host numbers only (no sync).
int64_t dense_tile_list_capacity(const DenseFwdArgs& a);
// Bytes of the selection's scratch for a list of that capacity.
size_t dense_tile_select_temp_bytes(int64_t capacity);

}  // namespace flashcore
