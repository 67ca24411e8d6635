// The weight encodings of the GPU layout (repack_weight in matmul.cu), decoded in one place for
// every kernel that reads them: one 32-bit word of a padded row at a time. Exact: every value
// decoded is the stored value (block and row scales are applied by the caller).
//
//   F32        1 element per word
//   F16, BF16  2 elements
//   I8 (FP8)   4 E4M3 codes, through the hardware e4m3x2 -> f16x2 conversion (sm_89+; an exact
//              decode with integer ops made the FP8 decode 7% slower, 331 vs 357 tok/s)
//   Q8_0       4 int8 codes
//   Q4_0       word m of a 32-element block holds elements 4m + i in its low nibbles (w[i]) and
//              16 + 4m + i in its high nibbles (w[4 + i]), i = 0..3; nibble n is the weight n - 8
//
// Host and device code: tests/cuda/decode_check.cu runs these on the CPU against numpy.
#pragma once
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>
#include <cstring>

#include "nemocpu/ggml_types.h"

namespace nemocpu {
namespace cuda {

template <int TYPE> struct WordElems;  // elements decoded from one word
template <> struct WordElems<GGML_F32> { static constexpr int n = 1; };
template <> struct WordElems<GGML_F16> { static constexpr int n = 2; };
template <> struct WordElems<GGML_BF16> { static constexpr int n = 2; };
template <> struct WordElems<GGML_I8> { static constexpr int n = 4; };
template <> struct WordElems<GGML_Q8_0> { static constexpr int n = 4; };
template <> struct WordElems<GGML_Q4_0> { static constexpr int n = 8; };

__host__ __device__ __forceinline__ float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

// Exact small integers as floats without the quarter-rate I2F: 2^23 + n has n in its mantissa.
__host__ __device__ __forceinline__ float low_byte_minus(uint32_t v, float bias) {
  return bits_to_float(0x4B000000u | (v & 0xffu)) - bias;
}

template <int TYPE>
__host__ __device__ __forceinline__ void decode_word(uint32_t wd, float* w) {
  if constexpr (TYPE == GGML_F32) {
    w[0] = bits_to_float(wd);
  } else if constexpr (TYPE == GGML_F16) {
    __half2 h;
    std::memcpy(&h, &wd, sizeof h);
    const float2 f = __half22float2(h);
    w[0] = f.x;
    w[1] = f.y;
  } else if constexpr (TYPE == GGML_BF16) {
    w[0] = bits_to_float(wd << 16);
    w[1] = bits_to_float(wd & 0xffff0000u);
  } else if constexpr (TYPE == GGML_I8) {
    const float2 a = __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(wd & 0xffffu), __NV_E4M3)));
    const float2 b = __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(wd >> 16), __NV_E4M3)));
    w[0] = a.x;
    w[1] = a.y;
    w[2] = b.x;
    w[3] = b.y;
  } else if constexpr (TYPE == GGML_Q8_0) {  // int8 b = (b ^ 0x80) - 128
    const uint32_t u = wd ^ 0x80808080u;
#pragma unroll
    for (int i = 0; i < 4; ++i) w[i] = low_byte_minus(u >> (8 * i), 8388736.0f);
  } else {
    static_assert(TYPE == GGML_Q4_0, "decode_word: unsupported type");
    const uint32_t lo = wd & 0x0f0f0f0fu, hi = (wd >> 4) & 0x0f0f0f0fu;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      w[i] = low_byte_minus(lo >> (8 * i), 8388616.0f);
      w[4 + i] = low_byte_minus(hi >> (8 * i), 8388616.0f);
    }
  }
}

}  // namespace cuda
}  // namespace nemocpu
