// Matmul family: y[t, r] = W[r, :] . x[t, :] for every weight encoding nemocpu reads in place.
//   float weights (F32, F16, BF16, FP8 = E4M3 bytes x per-row scale) dot fp32 activations;
//   Q8_0 / Q4_0 weights dot activations quantized per 32-block to int8 (int32 block sums).
// Each weight row is read once per tile of TILE_T tokens, so prefill is matrix-matrix work.
// The scalar references (*_ref) are the spec; the tiled paths are what runs. The AVX2 paths
// (also used by the avx512 build) sit beside the portable ones that every variant compiles.
#include "nemocpu/kernels.h"
#include "common.h"

namespace nemocpu {
namespace NEMOCPU_VARIANT {

namespace {

constexpr int TILE_T = 4;

// ---- FP8 (E4M3) decode table --------------------------------------------------------
// Built at compile time: a dynamic initializer in a variant file would run at import with
// that variant's instructions (an AVX-512 constructor would crash an AVX2 CPU).
constexpr float e4m3_value(int v) {
  const int exp = (v >> 3) & 0xf, man = v & 0x7;
  float mag = 0.0f;
  if (exp == 0) {
    mag = (float)man / 512.0f;  // subnormal: man/8 * 2^-6
  } else {
    mag = 1.0f + (float)man / 8.0f;
    for (int e = exp - 7; e > 0; --e) mag *= 2.0f;
    for (int e = exp - 7; e < 0; ++e) mag *= 0.5f;
  }
  if (exp == 0xf && man == 0x7) mag = __builtin_nanf("");
  return (v & 0x80) ? -mag : mag;
}

struct E4M3Table {
  float v[256];
};
constexpr E4M3Table make_e4m3_table() {
  E4M3Table t{};
  for (int i = 0; i < 256; ++i) t.v[i] = e4m3_value(i);
  return t;
}
constexpr E4M3Table kE4M3 = make_e4m3_table();

inline float fp8_row_scale(const WeightMatrix& w, int64_t r) {
  return w.scale[r * w.scale_stride];
}

// ---- scalar references -----------------------------------------------------------------
template <int TYPE>
inline float wload(const uint8_t* row, int64_t k) {
  if (TYPE == GGML_F32) return ((const float*)row)[k];
  if (TYPE == GGML_F16) return k_fp16_to_f32(((const uint16_t*)row)[k]);
  if (TYPE == GGML_BF16) return k_bf16_to_f32(((const uint16_t*)row)[k]);
  return kE4M3.v[row[k]];  // GGML_I8 = FP8 codes
}

template <int TYPE>
float dot_float_ref(const uint8_t* row, const float* x, int64_t K) {
  float s = 0.0f;
  for (int64_t k = 0; k < K; ++k) s += wload<TYPE>(row, k) * x[k];
  return s;
}

float dot_q8_0_ref(const BlockQ8_0* w, const BlockQ8Act* x, int64_t nb) {
  float s = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    int32_t isum = 0;
    for (int i = 0; i < QK; ++i) isum += (int32_t)w[b].qs[i] * x[b].qs[i];
    s += (float)isum * (k_fp16_to_f32(w[b].d) * x[b].d);
  }
  return s;
}

float dot_q4_0_ref(const BlockQ4_0* w, const BlockQ8Act* x, int64_t nb) {
  float s = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    int32_t isum = 0;
    for (int i = 0; i < QK / 2; ++i) {
      isum += ((int32_t)(w[b].qs[i] & 0xf) - 8) * x[b].qs[i];
      isum += ((int32_t)(w[b].qs[i] >> 4) - 8) * x[b].qs[i + QK / 2];
    }
    s += (float)isum * (k_fp16_to_f32(w[b].d) * x[b].d);
  }
  return s;
}

// ---- float weights: one row against NT tokens ------------------------------------------
#if defined(__AVX2__)
template <int TYPE>
inline __m256 wload8(const uint8_t* row, int64_t k) {
  if (TYPE == GGML_F32) return _mm256_loadu_ps((const float*)row + k);
  if (TYPE == GGML_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)((const uint16_t*)row + k)));
  if (TYPE == GGML_BF16) {
    const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)((const uint16_t*)row + k)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
  }
  // FP8: E4M3 bits moved into an fp16 (sign | exp4 man3 << 7) equal value * 2^-8; NaN codes
  // (0x7f/0xff) decode as 480 here, but no quantizer emits them.
  uint64_t b8;
  memcpy(&b8, row + k, 8);
  const __m128i b = _mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)b8));
  const __m128i h = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(b, _mm_set1_epi16(0x80)), 8),
                                 _mm_slli_epi16(_mm_and_si128(b, _mm_set1_epi16(0x7f)), 7));
  return _mm256_mul_ps(_mm256_cvtph_ps(h), _mm256_set1_ps(256.0f));
}

inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int TYPE, int NT>
void row_tile_float(const uint8_t* row, int64_t K, const float* const* xs, float* out) {
  __m256 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
  int64_t k = 0;
  if (TYPE == GGML_I8 && NT == 1) {
    // FP8 decode, 32 codes per step (half the integer work of wload8): unpacking a zero byte
    // below each code gives the u16 b << 8, from which the fp16 bits of E4M3 * 2^-8 are
    // sign = bit 15 and exponent|mantissa = (b << 7) & 0x3f80; the 2^8 is applied once at the
    // end (exact). unpacklo/hi work per 128-bit lane: their halves hold codes 0-7 | 16-23 and
    // 8-15 | 24-31.
    const __m256i zero = _mm256_setzero_si256(), sign = _mm256_set1_epi16((short)0x8000),
                  mag = _mm256_set1_epi16(0x3f80);
    __m256 f0 = _mm256_setzero_ps(), f1 = _mm256_setzero_ps(), f2 = _mm256_setzero_ps(), f3 = _mm256_setzero_ps();
    for (; k + 32 <= K; k += 32) {
      const __m256i b = _mm256_loadu_si256((const __m256i*)(row + k));
      const __m256i lo = _mm256_unpacklo_epi8(zero, b), hi = _mm256_unpackhi_epi8(zero, b);
      const __m256i hlo = _mm256_or_si256(_mm256_and_si256(lo, sign), _mm256_and_si256(_mm256_srli_epi16(lo, 1), mag));
      const __m256i hhi = _mm256_or_si256(_mm256_and_si256(hi, sign), _mm256_and_si256(_mm256_srli_epi16(hi, 1), mag));
      f0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm256_castsi256_si128(hlo)), _mm256_loadu_ps(xs[0] + k), f0);
      f1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm256_extracti128_si256(hlo, 1)), _mm256_loadu_ps(xs[0] + k + 16), f1);
      f2 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm256_castsi256_si128(hhi)), _mm256_loadu_ps(xs[0] + k + 8), f2);
      f3 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm256_extracti128_si256(hhi, 1)), _mm256_loadu_ps(xs[0] + k + 24), f3);
    }
    acc[0] = _mm256_mul_ps(_mm256_add_ps(_mm256_add_ps(f0, f1), _mm256_add_ps(f2, f3)), _mm256_set1_ps(256.0f));
  } else if (NT == 1) {  // decode: four independent FMA chains hide the FMA latency
    __m256 a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    for (; k + 32 <= K; k += 32) {
      acc[0] = _mm256_fmadd_ps(wload8<TYPE>(row, k), _mm256_loadu_ps(xs[0] + k), acc[0]);
      a1 = _mm256_fmadd_ps(wload8<TYPE>(row, k + 8), _mm256_loadu_ps(xs[0] + k + 8), a1);
      a2 = _mm256_fmadd_ps(wload8<TYPE>(row, k + 16), _mm256_loadu_ps(xs[0] + k + 16), a2);
      a3 = _mm256_fmadd_ps(wload8<TYPE>(row, k + 24), _mm256_loadu_ps(xs[0] + k + 24), a3);
    }
    acc[0] = _mm256_add_ps(_mm256_add_ps(acc[0], a1), _mm256_add_ps(a2, a3));
  }
  for (; k + 8 <= K; k += 8) {
    const __m256 w = wload8<TYPE>(row, k);
    for (int t = 0; t < NT; ++t) acc[t] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xs[t] + k), acc[t]);
  }
  for (int t = 0; t < NT; ++t) {
    float s = hsum8(acc[t]);
    for (int64_t kk = k; kk < K; ++kk) s += wload<TYPE>(row, kk) * xs[t][kk];
    out[t] = s;
  }
}

// Two rows against TILE_T tokens: each activation load feeds two FMAs, so prefill is not
// bound by load ports. out[i * TILE_T + t] = row_i . x_t
template <int TYPE>
void rows2_tile_float(const uint8_t* r0, const uint8_t* r1, int64_t K, const float* const* xs, float* out) {
  __m256 a0[TILE_T], a1[TILE_T];
  for (int t = 0; t < TILE_T; ++t) a0[t] = a1[t] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    const __m256 w0 = wload8<TYPE>(r0, k), w1 = wload8<TYPE>(r1, k);
    for (int t = 0; t < TILE_T; ++t) {
      const __m256 x = _mm256_loadu_ps(xs[t] + k);
      a0[t] = _mm256_fmadd_ps(w0, x, a0[t]);
      a1[t] = _mm256_fmadd_ps(w1, x, a1[t]);
    }
  }
  for (int t = 0; t < TILE_T; ++t) {
    float s0 = hsum8(a0[t]), s1 = hsum8(a1[t]);
    for (int64_t kk = k; kk < K; ++kk) {
      s0 += wload<TYPE>(r0, kk) * xs[t][kk];
      s1 += wload<TYPE>(r1, kk) * xs[t][kk];
    }
    out[t] = s0;
    out[TILE_T + t] = s1;
  }
}
#define NEMOCPU_HAVE_ROWS2 1
#else
template <int TYPE, int NT>
void row_tile_float(const uint8_t* row, int64_t K, const float* const* xs, float* out) {
  float acc[NT][8] = {};
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    float w[8];
    for (int l = 0; l < 8; ++l) w[l] = wload<TYPE>(row, k + l);
    for (int t = 0; t < NT; ++t)
      for (int l = 0; l < 8; ++l) acc[t][l] += w[l] * xs[t][k + l];
  }
  for (int t = 0; t < NT; ++t) {
    float s = 0.0f;
    for (int l = 0; l < 8; ++l) s += acc[t][l];
    for (int64_t kk = k; kk < K; ++kk) s += wload<TYPE>(row, kk) * xs[t][kk];
    out[t] = s;
  }
}
#endif

// ---- quantized weights: one row against NT tokens --------------------------------------
#if defined(__AVX2__)
// sum of 32 int8 products as 8 float lanes (llama.cpp's sign trick: |x| * sign(y, x)).
inline __m256 mul_sum_i8(__m256i x, __m256i y) {
  const __m256i ax = _mm256_sign_epi8(x, x);
  const __m256i sy = _mm256_sign_epi8(y, x);
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), ax, sy));  // u8 x s8 -> i32
#else
  const __m256i d16 = _mm256_maddubs_epi16(ax, sy);
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(d16, _mm256_set1_epi16(1)));
#endif
}

template <int TYPE>
inline __m256i wblock(const uint8_t* blk) {
  if (TYPE == GGML_Q8_0) return _mm256_loadu_si256((const __m256i*)((const BlockQ8_0*)blk)->qs);
  const __m128i q = _mm_loadu_si128((const __m128i*)((const BlockQ4_0*)blk)->qs);
  __m256i b = _mm256_insertf128_si256(_mm256_castsi128_si256(q), _mm_srli_epi16(q, 4), 1);
  b = _mm256_and_si256(b, _mm256_set1_epi8(0xf));
  return _mm256_sub_epi8(b, _mm256_set1_epi8(8));
}

template <int TYPE, int NT>
void row_tile_quant(const uint8_t* row, int64_t nb, const BlockQ8Act* const* xs, float* out) {
  constexpr int64_t bsz = TYPE == GGML_Q8_0 ? sizeof(BlockQ8_0) : sizeof(BlockQ4_0);
  __m256 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
  int64_t b = 0;
  if (NT == 1) {  // decode: two independent chains per row
    __m256 a1 = _mm256_setzero_ps();
    for (; b + 2 <= nb; b += 2) {
      const uint8_t* b0 = row + b * bsz;
      const uint8_t* b1 = b0 + bsz;
      const __m256 s0 = mul_sum_i8(wblock<TYPE>(b0), _mm256_loadu_si256((const __m256i*)xs[0][b].qs));
      const __m256 s1 = mul_sum_i8(wblock<TYPE>(b1), _mm256_loadu_si256((const __m256i*)xs[0][b + 1].qs));
      acc[0] = _mm256_fmadd_ps(_mm256_set1_ps(k_fp16_to_f32(*(const uint16_t*)b0) * xs[0][b].d), s0, acc[0]);
      a1 = _mm256_fmadd_ps(_mm256_set1_ps(k_fp16_to_f32(*(const uint16_t*)b1) * xs[0][b + 1].d), s1, a1);
    }
    acc[0] = _mm256_add_ps(acc[0], a1);
  }
  for (; b < nb; ++b) {
    const uint8_t* blk = row + b * bsz;
    const __m256i w = wblock<TYPE>(blk);
    const float dw = k_fp16_to_f32(*(const uint16_t*)blk);
    for (int t = 0; t < NT; ++t) {
      const __m256i x = _mm256_loadu_si256((const __m256i*)xs[t][b].qs);
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * xs[t][b].d), mul_sum_i8(w, x), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = hsum8(acc[t]);
}
#else
template <int TYPE>
inline void wblock(const uint8_t* blk, int8_t* q) {
  if (TYPE == GGML_Q8_0) {
    memcpy(q, ((const BlockQ8_0*)blk)->qs, QK);
    return;
  }
  const uint8_t* qs = ((const BlockQ4_0*)blk)->qs;
  for (int i = 0; i < QK / 2; ++i) {
    q[i] = (int8_t)((qs[i] & 0xf) - 8);
    q[i + QK / 2] = (int8_t)((qs[i] >> 4) - 8);
  }
}

template <int TYPE, int NT>
void row_tile_quant(const uint8_t* row, int64_t nb, const BlockQ8Act* const* xs, float* out) {
  constexpr int64_t bsz = TYPE == GGML_Q8_0 ? sizeof(BlockQ8_0) : sizeof(BlockQ4_0);
  float acc[NT] = {};
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = row + b * bsz;
    int8_t w[QK];
    wblock<TYPE>(blk, w);
    const float dw = k_fp16_to_f32(*(const uint16_t*)blk);
    for (int t = 0; t < NT; ++t) {
      const int8_t* x = xs[t][b].qs;
      int32_t isum = 0;
      for (int i = 0; i < QK; ++i) isum += (int32_t)w[i] * x[i];
      acc[t] += (float)isum * (dw * xs[t][b].d);
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = acc[t];
}
#endif

// ---- drivers: rows outer (each row read once per token tile), tokens inner -------------
template <int TYPE>
void matmul_float(const WeightMatrix& w, int64_t r0, int64_t r1, const Activations& a, float* y, int64_t ldy) {
  int64_t r = r0;
#if defined(NEMOCPU_HAVE_ROWS2)
  if (a.T >= TILE_T) {  // prefill: pairs of rows over full token tiles, the leftovers below
    const int64_t t_full = a.T / TILE_T * TILE_T;
    for (; r + 2 <= r1; r += 2) {
      const uint8_t* row0 = w.data + r * w.row_bytes;
      const float sc0 = TYPE == GGML_I8 ? fp8_row_scale(w, r) : 1.0f;
      const float sc1 = TYPE == GGML_I8 ? fp8_row_scale(w, r + 1) : 1.0f;
      float out[2 * TILE_T];
      for (int64_t t = 0; t < t_full; t += TILE_T) {
        const float* xs[TILE_T];
        for (int i = 0; i < TILE_T; ++i) xs[i] = a.x + (t + i) * a.ldx;
        rows2_tile_float<TYPE>(row0, row0 + w.row_bytes, w.K, xs, out);
        for (int i = 0; i < TILE_T; ++i) {
          y[(t + i) * ldy + r] = out[i] * sc0;
          y[(t + i) * ldy + r + 1] = out[TILE_T + i] * sc1;
        }
      }
      for (int64_t t = t_full; t < a.T; ++t) {
        const float* xs[1] = {a.x + t * a.ldx};
        for (int j = 0; j < 2; ++j) {
          row_tile_float<TYPE, 1>(row0 + j * w.row_bytes, w.K, xs, out);
          y[t * ldy + r + j] = out[0] * (j ? sc1 : sc0);
        }
      }
    }
  }
#endif
  for (; r < r1; ++r) {
    const uint8_t* row = w.data + r * w.row_bytes;
    const float sc = TYPE == GGML_I8 ? fp8_row_scale(w, r) : 1.0f;
    int64_t t = 0;
    float out[TILE_T];
    for (; t + TILE_T <= a.T; t += TILE_T) {
      const float* xs[TILE_T];
      for (int i = 0; i < TILE_T; ++i) xs[i] = a.x + (t + i) * a.ldx;
      row_tile_float<TYPE, TILE_T>(row, w.K, xs, out);
      for (int i = 0; i < TILE_T; ++i) y[(t + i) * ldy + r] = out[i] * sc;
    }
    for (; t < a.T; ++t) {
      const float* xs[1] = {a.x + t * a.ldx};
      row_tile_float<TYPE, 1>(row, w.K, xs, out);
      y[t * ldy + r] = out[0] * sc;
    }
  }
}

template <int TYPE>
void matmul_quant(const WeightMatrix& w, int64_t r0, int64_t r1, const Activations& a, float* y, int64_t ldy) {
  const int64_t nb = w.K / QK;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w.data + r * w.row_bytes;
    int64_t t = 0;
    float out[TILE_T];
    for (; t + TILE_T <= a.T; t += TILE_T) {
      const BlockQ8Act* xs[TILE_T];
      for (int i = 0; i < TILE_T; ++i) xs[i] = a.q + (t + i) * a.ldq;
      row_tile_quant<TYPE, TILE_T>(row, nb, xs, out);
      for (int i = 0; i < TILE_T; ++i) y[(t + i) * ldy + r] = out[i];
    }
    for (; t < a.T; ++t) {
      const BlockQ8Act* xs[1] = {a.q + t * a.ldq};
      row_tile_quant<TYPE, 1>(row, nb, xs, out);
      y[t * ldy + r] = out[0];
    }
  }
}

}  // namespace

// The 8-row interleaved layout of Q8_0 / Q4_0 (csrc/kernels/matmul_x8.cpp).
void matmul_x8(const WeightMatrix& w, int64_t r0, int64_t r1, const Activations& a, float* y, int64_t ldy);
void matmul_x8_ref(const WeightMatrix& w, int64_t r0, int64_t r1, const Activations& a, float* y, int64_t ldy);
void dequant_row_x8(const WeightMatrix& w, int64_t r, float* out);

void matmul(const WeightMatrix& w, int64_t r0, int64_t r1, const Activations& a, float* y, int64_t ldy) {
  if (w.layout == LAYOUT_X8) return matmul_x8(w, r0, r1, a, y, ldy);  // matmul_x8.cpp
  switch (w.type) {
    case GGML_F32: matmul_float<GGML_F32>(w, r0, r1, a, y, ldy); break;
    case GGML_F16: matmul_float<GGML_F16>(w, r0, r1, a, y, ldy); break;
    case GGML_BF16: matmul_float<GGML_BF16>(w, r0, r1, a, y, ldy); break;
    case GGML_I8: matmul_float<GGML_I8>(w, r0, r1, a, y, ldy); break;
    case GGML_Q8_0: matmul_quant<GGML_Q8_0>(w, r0, r1, a, y, ldy); break;
    case GGML_Q4_0: matmul_quant<GGML_Q4_0>(w, r0, r1, a, y, ldy); break;
    default: break;  // types are validated when the engine binds its weights
  }
}

// d = amax / 127, q = round-half-away(x * (1/d)): the same bits in every variant (the AVX2
// path rounds exactly like roundf, not to-nearest-even as _mm256_round_ps would).
void quantize_q8(const float* x, int64_t n, BlockQ8Act* out) {
  for (int64_t b = 0; b < n / QK; ++b) {
    const float* xb = x + b * QK;
#if defined(__AVX2__)
    const __m256 sign_bit = _mm256_set1_ps(-0.0f);
    __m256 v[4];
    __m256 mx = _mm256_setzero_ps();
    for (int i = 0; i < 4; ++i) {
      v[i] = _mm256_loadu_ps(xb + 8 * i);
      mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign_bit, v[i]));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    out[b].d = d;
    __m256i q[4];
    for (int i = 0; i < 4; ++i) {
      const __m256 s = _mm256_mul_ps(v[i], _mm256_set1_ps(id));
      const __m256 t = _mm256_round_ps(s, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
      const __m256 frac = _mm256_andnot_ps(sign_bit, _mm256_sub_ps(s, t));
      const __m256 one = _mm256_or_ps(_mm256_set1_ps(1.0f), _mm256_and_ps(sign_bit, s));
      const __m256 r = _mm256_add_ps(t, _mm256_and_ps(_mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ), one));
      q[i] = _mm256_cvtps_epi32(r);
    }
    // packs interleave 128-bit lanes; the permute restores element order
    const __m256i p01 = _mm256_packs_epi32(q[0], q[1]);
    const __m256i p23 = _mm256_packs_epi32(q[2], q[3]);
    const __m256i p = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p01, p23),
                                                  _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i*)out[b].qs, p);
    const __m256i s4 = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(s4), _mm256_extracti128_si256(s4, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    out[b].sum = _mm_cvtsi128_si32(s);
#else
    float amax = 0.0f;
    for (int i = 0; i < QK; ++i) amax = fabsf(xb[i]) > amax ? fabsf(xb[i]) : amax;
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    out[b].d = d;
    int32_t sum = 0;
    for (int i = 0; i < QK; ++i) {
      out[b].qs[i] = (int8_t)roundf(xb[i] * id);
      sum += out[b].qs[i];
    }
    out[b].sum = sum;
#endif
  }
}

void dequant_row(const WeightMatrix& w, int64_t r, float* out) {
  if (w.layout == LAYOUT_X8) return dequant_row_x8(w, r, out);
  const uint8_t* row = w.data + r * w.row_bytes;
  switch (w.type) {
    case GGML_F32: memcpy(out, row, (size_t)w.K * 4); break;
    case GGML_F16: for (int64_t k = 0; k < w.K; ++k) out[k] = wload<GGML_F16>(row, k); break;
    case GGML_BF16: for (int64_t k = 0; k < w.K; ++k) out[k] = wload<GGML_BF16>(row, k); break;
    case GGML_I8: {
      const float sc = fp8_row_scale(w, r);
      for (int64_t k = 0; k < w.K; ++k) out[k] = kE4M3.v[row[k]] * sc;
      break;
    }
    case GGML_Q8_0: {
      const BlockQ8_0* b = (const BlockQ8_0*)row;
      for (int64_t k = 0; k < w.K; ++k) out[k] = b[k / QK].qs[k % QK] * k_fp16_to_f32(b[k / QK].d);
      break;
    }
    case GGML_Q4_0: {
      const BlockQ4_0* b = (const BlockQ4_0*)row;
      for (int64_t k = 0; k < w.K; ++k) {
        const BlockQ4_0& blk = b[k / QK];
        const int i = (int)(k % QK);
        const int q = i < QK / 2 ? (blk.qs[i] & 0xf) : (blk.qs[i - QK / 2] >> 4);
        out[k] = (float)(q - 8) * k_fp16_to_f32(blk.d);
      }
      break;
    }
    default: break;
  }
}

// The references, exported for the kernel tests (core.ops.matmul_ref).
void matmul_ref(const WeightMatrix& w, int64_t r0, int64_t r1, const Activations& a, float* y, int64_t ldy) {
  if (w.layout == LAYOUT_X8) return matmul_x8_ref(w, r0, r1, a, y, ldy);
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w.data + r * w.row_bytes;
    for (int64_t t = 0; t < a.T; ++t) {
      float v = 0.0f;
      switch (w.type) {
        case GGML_F32: v = dot_float_ref<GGML_F32>(row, a.x + t * a.ldx, w.K); break;
        case GGML_F16: v = dot_float_ref<GGML_F16>(row, a.x + t * a.ldx, w.K); break;
        case GGML_BF16: v = dot_float_ref<GGML_BF16>(row, a.x + t * a.ldx, w.K); break;
        case GGML_I8: v = dot_float_ref<GGML_I8>(row, a.x + t * a.ldx, w.K) * fp8_row_scale(w, r); break;
        case GGML_Q8_0: v = dot_q8_0_ref((const BlockQ8_0*)row, a.q + t * a.ldq, w.K / QK); break;
        case GGML_Q4_0: v = dot_q4_0_ref((const BlockQ4_0*)row, a.q + t * a.ldq, w.K / QK); break;
        default: break;
      }
      y[t * ldy + r] = v;
    }
  }
}

}  // namespace NEMOCPU_VARIANT
}  // namespace nemocpu
