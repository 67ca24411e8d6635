// Helpers shared by the kernel families. Every function here is `static inline` on purpose:
// kernel files are compiled once per CPU variant with different -m flags, and a function
// with external (or comdat) linkage could let the linker hand an AVX2 copy to the generic
// build. For the same reason kernel files avoid std:: templates (std::max, std::vector).
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#define NEMOCPU_STR2(x) #x
#define NEMOCPU_STR(x) NEMOCPU_STR2(x)

static inline int64_t k_min(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t k_max(int64_t a, int64_t b) { return a > b ? a : b; }

static inline float k_fp16_to_f32(uint16_t h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: value = man * 2^-24
      float f = (float)man * 5.9604644775390625e-8f;
      memcpy(&bits, &f, 4);
      bits |= sign;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 112u) << 23) | (man << 13);
  }
  float out;
  memcpy(&out, &bits, 4);
  return out;
#endif
}

// Round-to-nearest-even fp32 -> fp16 (the KV cache stores f16).
static inline uint16_t k_f32_to_fp16(float f) {
#if defined(__F16C__)
  return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
#else
  uint32_t x;
  memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0));
  if (absx >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // rounds to >= 65520 -> inf
  if (absx < 0x38800000u) {                                    // result is subnormal or zero
    float a;
    memcpy(&a, &absx, 4);
    // a * 2^24 rounded to nearest-even integer = the subnormal mantissa
    const float scaled = a * 16777216.0f;
    uint32_t m = (uint32_t)scaled;
    const float rem = scaled - (float)m;
    if (rem > 0.5f || (rem == 0.5f && (m & 1u))) m++;
    return (uint16_t)(sign | m);
  }
  const uint32_t mant_odd = (absx >> 13) & 1u;
  const uint32_t rounded = absx + 0xfffu + mant_odd;
  return (uint16_t)(sign | (((rounded >> 13) - (112u << 10)) & 0x7fffu));
#endif
}

static inline float k_bf16_to_f32(uint16_t h) {
  const uint32_t bits = (uint32_t)h << 16;
  float out;
  memcpy(&out, &bits, 4);
  return out;
}

static inline float k_silu(float x) { return x / (1.0f + expf(-x)); }

// How far ahead of the weight stream the decode (T = 1) matmul kernels prefetch: both the FP8
// row kernel (matmul.cpp) and the Q8_0/Q4_0 x8 tile (matmul_x8.cpp) measured best at 1-2 KB
// from DRAM on the AMD EPYC development machine (bench/matmul_ab, bench/RESULTS.md).
// Prefetches never fault, so it may point past the end of a matrix.
static const int64_t K_DECODE_PREFETCH_BYTES = 2048;

#if defined(__AVX2__)
// acc + the dot products of u (unsigned bytes) and s (signed bytes), 4 bytes per int32 lane:
// one vpdpbusd with AVX512-VNNI, else maddubs + madd (the int16 pair sums cannot saturate while
// u <= 128 and |s| <= 127, which the sign trick |w| * sign(x, w) and Q4_0 nibbles guarantee).
static inline __m256i k_dot_u8s8(__m256i acc, __m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(acc, u, s);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}
#endif
