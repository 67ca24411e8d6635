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
