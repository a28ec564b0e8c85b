// FP8 K/V (float8_e4m3fn, float8_e5m2) widened to the model's 16-bit type for the tensor cores.
//
// The decode kernel loads FP8 tiles (half the bytes of a 16-bit pool) and widens them in shared
// memory, so its mma.m16n8k16 loop stays the 16-bit one. Every FP8 value is exact in fp16, and
// so is the fp16 -> bf16 step below, which keeps the fp16 exponent field as it is: the bf16 it
// makes is the value times 2^-112 (fp16's exponent bias is 15, bf16's 127). That costs one shift
// and one logic op a pair instead of three conversions, and the kernel multiplies the factor
// back into its softmax scale and its output (kBf16FromFp16Unscale).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <stdint.h>

#include <type_traits>

namespace flashcore {

template <typename TKV>
constexpr bool kIsFp8 = std::is_same<TKV, __nv_fp8_e4m3>::value || std::is_same<TKV, __nv_fp8_e5m2>::value;

// What widening FP8 into bf16 by keeping fp16's exponent field scales each value by.
constexpr float kBf16FromFp16Unscale = 5.192296858534828e33f;  // 2^112

// Two FP8 values (bits 0-7: the first) as two fp16 values (bits 0-15: the first).
template <typename TKV>
__device__ __forceinline__ uint32_t fp8x2_to_half2(uint32_t pair);
template <>
__device__ __forceinline__ uint32_t fp8x2_to_half2<__nv_fp8_e4m3>(uint32_t pair) {
  const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(pair & 0xffffu), __NV_E4M3);
  return static_cast<uint32_t>(h.x) | (static_cast<uint32_t>(h.y) << 16);
}
template <>
__device__ __forceinline__ uint32_t fp8x2_to_half2<__nv_fp8_e5m2>(uint32_t pair) {
  return __byte_perm(pair, 0u, 0x1404);  // e5m2 is the high byte of an fp16: [0, x0, 0, x1]
}

// Two fp16 values as two bf16 values times 2^-112 (exact for every value an FP8 format holds).
__device__ __forceinline__ uint32_t half2_to_scaled_bf16x2(uint32_t h) {
  return (h & 0x80008000u) | ((h >> 3) & 0x0fff0fffu);
}

// Four FP8 values (one 32-bit word, the first in the low byte) as two words of two T each:
// fp16 exactly, or bf16 times 2^-112.
template <typename T, typename TKV>
__device__ __forceinline__ void widen_fp8x4(uint32_t word, uint32_t& lo, uint32_t& hi) {
  lo = fp8x2_to_half2<TKV>(word);
  hi = fp8x2_to_half2<TKV>(word >> 16);
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    lo = half2_to_scaled_bf16x2(lo);
    hi = half2_to_scaled_bf16x2(hi);
  }
}

// What the widened values must be multiplied by to be the stored ones.
template <typename T, typename TKV>
constexpr float widened_unscale() {
  return kIsFp8<TKV> && std::is_same<T, __nv_bfloat16>::value ? kBf16FromFp16Unscale : 1.f;
}

}  // namespace flashcore
