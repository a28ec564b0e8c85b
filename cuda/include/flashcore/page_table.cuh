// Reading SGLang's page table on the device (req_to_token, req_pool_indices, seq_lens), for the
// decode planner. Args is any struct with the fields of TablePlanArgs' page-table part:
// req_to_token, r2t_64, r2t_rows, r2t_stride, max_context, req_pool_indices, idx_64, seq_lens,
// lens_64.
#pragma once

#include <stdint.h>

namespace flashcore {

__device__ __forceinline__ int64_t load_index(const void* p, bool is64, int64_t i) {
  return is64 ? reinterpret_cast<const int64_t*>(p)[i] : (int64_t) reinterpret_cast<const int*>(p)[i];
}

// The request's req_to_token row and length, clamped so that a bad entry reads nothing out of
// range: a pool row out of range or a negative length gives an empty request (and is counted).
struct Request {
  int64_t row;
  int64_t len;
  bool clamped;
};

template <typename Args>
__device__ __forceinline__ Request load_request(const Args& a, int b) {
  Request r;
  r.row = load_index(a.req_pool_indices, a.idx_64, b);
  int64_t len = load_index(a.seq_lens, a.lens_64, b);
  const bool bad_row = r.row < 0 || r.row >= a.r2t_rows;
  r.clamped = bad_row || len < 0 || len > a.max_context;
  r.len = bad_row ? 0 : min(max(len, (int64_t)0), a.max_context);
  if (bad_row) r.row = 0;
  return r;
}

template <typename Args>
__device__ __forceinline__ int64_t slot_at(const Args& a, int64_t row, int64_t pos) {
  return load_index(a.req_to_token, a.r2t_64, row * a.r2t_stride + pos);
}

}  // namespace flashcore
