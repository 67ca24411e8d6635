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
  if (TYPE == GGML_BF16) {
    const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)((const uint16_t*)row + k)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
  }
  return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)((const uint16_t*)row + k)));  // F16
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
  if (NT == 1) {  // decode: four independent FMA chains hide the FMA latency
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

// ---- FP8 weights (E4M3 codes x per-row scale) -------------------------------------------
// Decode (T = 1) and up to FP8_FUSED_MAX_T tokens stream each row once through a vector
// E4M3 decode fused with the dots (bench: the fp16 conversion, not memory, bounds it in
// cache). Prefill decodes a panel of FP8_PANEL_ROWS rows x FP8_PANEL_K codes to fp32 once into a
// stack buffer and runs an fp32 register tile (FP8_TILE_ROWS rows x FP8_TILE_TOKENS tokens,
// every weight load feeding FP8_TILE_TOKENS FMAs) over a block of tokens, so the decode cost
// is shared by up to FP8_TOKEN_BLOCK tokens.
constexpr int FP8_PANEL_ROWS = 8;
constexpr int FP8_PANEL_K = 256;       // 8 x 256 fp32 = 8 KB: the panel stays in L1
constexpr int FP8_TILE_ROWS = 2;
constexpr int FP8_TILE_TOKENS = 6;     // 2 x 6 accumulators + 2 weights + 1 input = 15 of 16 ymm
constexpr int FP8_TOKEN_BLOCK = 72;    // multiple of FP8_TILE_TOKENS
constexpr int FP8_FUSED_MAX_T = 4;     // up to this many tokens the decode stays in registers

#if defined(__AVX2__)
// The decoders below produce E4M3 * 2^-8 (the fp16 trick), so scales carry the 2^8 (exact).
constexpr float FP8_DECODED_UNIT = 256.0f;

// 32 codes -> their fp16 bits (value * 2^-8) in two vectors: unpacking a zero byte below each
// code gives the i16 b << 8; an arithmetic shift right by one puts exponent|mantissa at bits
// 13..7 and copies the sign into bits 15 and 14; the AND clears bit 14. E4M3 subnormals land
// on fp16 subnormals, which vcvtph2ps converts exactly. The NaN codes 0x7f/0xff decode as
// +-480 (no quantizer emits them). unpacklo/hi work per 128-bit lane, so lo holds codes
// 0-7 | 16-23 and hi holds 8-15 | 24-31.
inline void fp8_to_fp16_x32(const uint8_t* codes, __m256i& lo, __m256i& hi) {
  const __m256i b = _mm256_loadu_si256((const __m256i*)codes);
  const __m256i keep = _mm256_set1_epi16((short)0xbf80);
  lo = _mm256_and_si256(_mm256_srai_epi16(_mm256_unpacklo_epi8(_mm256_setzero_si256(), b), 1), keep);
  hi = _mm256_and_si256(_mm256_srai_epi16(_mm256_unpackhi_epi8(_mm256_setzero_si256(), b), 1), keep);
}

// One row against NT tokens with the decode in registers (decode and few-token matmuls):
// out[t] = sum_k E4M3(row[k]) * xs[t][k] * 2^-8. Four FMA chains per token when NT = 1, two
// otherwise, hide the FMA latency; the prefetch runs K_DECODE_PREFETCH_BYTES ahead of the stream.
template <int NT>
void fp8_row_tokens(const uint8_t* row, const float* const* xs, int64_t K, float* out) {
  constexpr int C = NT == 1 ? 4 : 2;
  __m256 f[NT][C];
  for (int t = 0; t < NT; ++t)
    for (int c = 0; c < C; ++c) f[t][c] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    if ((k & 63) == 0) _mm_prefetch((const char*)row + k + K_DECODE_PREFETCH_BYTES, _MM_HINT_T0);
    __m256i lo, hi;
    fp8_to_fp16_x32(row + k, lo, hi);
    const __m256 w0 = _mm256_cvtph_ps(_mm256_castsi256_si128(lo)), w1 = _mm256_cvtph_ps(_mm256_castsi256_si128(hi)),
                 w2 = _mm256_cvtph_ps(_mm256_extracti128_si256(lo, 1)), w3 = _mm256_cvtph_ps(_mm256_extracti128_si256(hi, 1));
    for (int t = 0; t < NT; ++t) {
      f[t][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xs[t] + k), f[t][0]);
      f[t][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xs[t] + k + 8), f[t][1]);
      f[t][2 % C] = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xs[t] + k + 16), f[t][2 % C]);
      f[t][3 % C] = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xs[t] + k + 24), f[t][3 % C]);
    }
  }
  for (int t = 0; t < NT; ++t) {
    for (int c = 1; c < C; ++c) f[t][0] = _mm256_add_ps(f[t][0], f[t][c]);
    float s = hsum8(f[t][0]);
    for (int64_t kk = k; kk < K; ++kk) s += kE4M3.v[row[kk]] * (1.0f / FP8_DECODED_UNIT) * xs[t][kk];
    out[t] = s;
  }
}

// n codes -> n floats (value * 2^-8)
void fp8_decode(const uint8_t* codes, int64_t n, float* out) {
  int64_t k = 0;
  for (; k + 32 <= n; k += 32) {
    __m256i lo, hi;
    fp8_to_fp16_x32(codes + k, lo, hi);
    _mm256_storeu_ps(out + k, _mm256_cvtph_ps(_mm256_castsi256_si128(lo)));
    _mm256_storeu_ps(out + k + 8, _mm256_cvtph_ps(_mm256_castsi256_si128(hi)));
    _mm256_storeu_ps(out + k + 16, _mm256_cvtph_ps(_mm256_extracti128_si256(lo, 1)));
    _mm256_storeu_ps(out + k + 24, _mm256_cvtph_ps(_mm256_extracti128_si256(hi, 1)));
  }
  for (; k < n; ++k) out[k] = kE4M3.v[codes[k]] * (1.0f / FP8_DECODED_UNIT);
}

// sums[i * N + t] = panel row i . x_t over nk values, for M rows x N tokens
template <int M, int N>
void fp8_tile(const float* p, int64_t ldp, const float* const* xs, int64_t nk, float* sums) {
  __m256 s[M][N];
  for (int i = 0; i < M; ++i)
    for (int t = 0; t < N; ++t) s[i][t] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= nk; k += 8) {
    __m256 w[M];
    for (int i = 0; i < M; ++i) w[i] = _mm256_loadu_ps(p + i * ldp + k);
    for (int t = 0; t < N; ++t) {
      __m256 x = _mm256_loadu_ps(xs[t] + k);
      // keep x in a register: GCC would otherwise fold it into each FMA as a memory operand
      // and load it M times (14 loads per 12 FMAs: load-port bound)
      __asm__("" : "+x"(x));
      for (int i = 0; i < M; ++i) s[i][t] = _mm256_fmadd_ps(w[i], x, s[i][t]);
    }
  }
  // horizontal sums four accumulators at a time (3 hadds instead of 4 full reductions)
  const __m256* sv = &s[0][0];
  int j = 0;
  for (; j + 4 <= M * N; j += 4) {
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(sv[j], sv[j + 1]), _mm256_hadd_ps(sv[j + 2], sv[j + 3]));
    _mm_storeu_ps(sums + j, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
  }
  for (; j < M * N; ++j) sums[j] = hsum8(sv[j]);
  for (int i = 0; i < M; ++i)
    for (int t = 0; t < N; ++t)
      for (int64_t kk = k; kk < nk; ++kk) sums[i * N + t] += p[i * ldp + kk] * xs[t][kk];
}
#else
constexpr float FP8_DECODED_UNIT = 1.0f;

template <int NT>
void fp8_row_tokens(const uint8_t* row, const float* const* xs, int64_t K, float* out) {
  float acc[NT][8] = {};
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    float w[8];
    for (int l = 0; l < 8; ++l) w[l] = kE4M3.v[row[k + l]];
    for (int t = 0; t < NT; ++t)
      for (int l = 0; l < 8; ++l) acc[t][l] += w[l] * xs[t][k + l];
  }
  for (int t = 0; t < NT; ++t) {
    float s = 0.0f;
    for (int l = 0; l < 8; ++l) s += acc[t][l];
    for (int64_t kk = k; kk < K; ++kk) s += kE4M3.v[row[kk]] * xs[t][kk];
    out[t] = s;
  }
}

void fp8_decode(const uint8_t* codes, int64_t n, float* out) {
  for (int64_t k = 0; k < n; ++k) out[k] = kE4M3.v[codes[k]];
}

// portable form of the register tile in GCC/Clang vector types (one SSE / NEON register of
// 4 floats per accumulator): the 2 x 6 tile plus its operands fits in 16 vector registers,
// which plain arrays with a lane loop did not reliably get from the compiler
typedef float fp8_v4 __attribute__((vector_size(16)));
inline fp8_v4 fp8_v4_load(const float* p) {
  fp8_v4 v;
  memcpy(&v, p, sizeof v);
  return v;
}

template <int M, int N>
void fp8_tile(const float* p, int64_t ldp, const float* const* xs, int64_t nk, float* sums) {
  fp8_v4 s[M][N];
  for (int i = 0; i < M; ++i)
    for (int t = 0; t < N; ++t) s[i][t] = fp8_v4{0.0f, 0.0f, 0.0f, 0.0f};
  int64_t k = 0;
  for (; k + 4 <= nk; k += 4) {
    fp8_v4 w[M];
    for (int i = 0; i < M; ++i) w[i] = fp8_v4_load(p + i * ldp + k);
    for (int t = 0; t < N; ++t) {
      const fp8_v4 x = fp8_v4_load(xs[t] + k);
      for (int i = 0; i < M; ++i) s[i][t] += w[i] * x;
    }
  }
  for (int i = 0; i < M; ++i)
    for (int t = 0; t < N; ++t) {
      float v = (s[i][t][0] + s[i][t][1]) + (s[i][t][2] + s[i][t][3]);
      for (int64_t kk = k; kk < nk; ++kk) v += p[i * ldp + kk] * xs[t][kk];
      sums[i * N + t] = v;
    }
}
#endif

using Fp8TileFn = void (*)(const float*, int64_t, const float* const*, int64_t, float*);

// fp8_tile<m, n> for the tile and its edges (m rows <= FP8_TILE_ROWS, n tokens <= FP8_TILE_TOKENS)
template <int M>
Fp8TileFn fp8_tile_for_tokens(int n) {
  switch (n) {
    case 1: return fp8_tile<M, 1>;
    case 2: return fp8_tile<M, 2>;
    case 3: return fp8_tile<M, 3>;
    case 4: return fp8_tile<M, 4>;
    case 5: return fp8_tile<M, 5>;
    default: return fp8_tile<M, 6>;
  }
}
static_assert(FP8_TILE_ROWS == 2 && FP8_TILE_TOKENS == 6, "fp8_tile_for_tokens covers 1..2 x 1..6");
static_assert(FP8_TOKEN_BLOCK % FP8_TILE_TOKENS == 0, "whole tiles in a token block");

void matmul_fp8(const WeightMatrix& w, int64_t r0, int64_t r1, const Activations& a, float* y, int64_t ldy) {
  if (a.T <= FP8_FUSED_MAX_T) {  // too few tokens to pay for a panel: decode in registers
    const float* xs[FP8_FUSED_MAX_T];
    for (int64_t t = 0; t < a.T; ++t) xs[t] = a.x + t * a.ldx;
    for (int64_t r = r0; r < r1; ++r) {
      float out[FP8_FUSED_MAX_T];
      const uint8_t* row = w.data + r * w.row_bytes;
      switch (a.T) {
        case 1: fp8_row_tokens<1>(row, xs, w.K, out); break;
        case 2: fp8_row_tokens<2>(row, xs, w.K, out); break;
        case 3: fp8_row_tokens<3>(row, xs, w.K, out); break;
        default: fp8_row_tokens<4>(row, xs, w.K, out); break;
      }
      const float sc = FP8_DECODED_UNIT * fp8_row_scale(w, r);
      for (int64_t t = 0; t < a.T; ++t) y[t * ldy + r] = out[t] * sc;
    }
    return;
  }
  if (w.K == 0) {  // an empty dot product is 0 (the K-block loop below would write nothing)
    for (int64_t t = 0; t < a.T; ++t)
      for (int64_t r = r0; r < r1; ++r) y[t * ldy + r] = 0.0f;
    return;
  }
  // Loop order: token block, K block, row block. The inputs of one (token block, K block)
  // (FP8_TOKEN_BLOCK x FP8_PANEL_K fp32 = 72 KB) stay in L2 while every row block of the
  // range passes over them; y itself holds the partial sums between K blocks (unscaled
  // until the last block), so nothing here depends on the size of the row range.
  float panel[FP8_PANEL_ROWS * FP8_PANEL_K];
  for (int64_t tb = 0; tb < a.T; tb += FP8_TOKEN_BLOCK) {
    const int64_t nt = k_min(FP8_TOKEN_BLOCK, a.T - tb);
    for (int64_t kb = 0; kb < w.K; kb += FP8_PANEL_K) {
      const int64_t nk = k_min(FP8_PANEL_K, w.K - kb);
      const bool first = kb == 0, last = kb + nk == w.K;
      for (int64_t rb = r0; rb < r1; rb += FP8_PANEL_ROWS) {
        const int64_t nr = k_min(FP8_PANEL_ROWS, r1 - rb);
        for (int64_t i = 0; i < nr; ++i) fp8_decode(w.data + (rb + i) * w.row_bytes + kb, nk, panel + i * FP8_PANEL_K);
        // tiles of near-equal width (8 tokens = 4 + 4, not 6 + 2): a narrow tile has too few
        // FMA chains to cover the FMA latency
        const int64_t tiles = (nt + FP8_TILE_TOKENS - 1) / FP8_TILE_TOKENS;
        for (int64_t t = tb, left = tiles; left > 0; --left) {
          const int n = (int)((tb + nt - t + left - 1) / left);
          const float* xs[FP8_TILE_TOKENS];
          for (int j = 0; j < n; ++j) xs[j] = a.x + (t + j) * a.ldx + kb;
          for (int64_t i = 0; i < nr; i += FP8_TILE_ROWS) {
            const int m = (int)k_min(FP8_TILE_ROWS, nr - i);
            float sums[FP8_TILE_ROWS * FP8_TILE_TOKENS];
            (m == FP8_TILE_ROWS ? fp8_tile_for_tokens<FP8_TILE_ROWS>(n) : fp8_tile_for_tokens<1>(n))(
                panel + i * FP8_PANEL_K, FP8_PANEL_K, xs, nk, sums);
            for (int ii = 0; ii < m; ++ii) {
              const float sc = FP8_DECODED_UNIT * fp8_row_scale(w, rb + i + ii);
              for (int j = 0; j < n; ++j) {
                float& out = y[(t + j) * ldy + rb + i + ii];
                const float v = first ? sums[ii * n + j] : out + sums[ii * n + j];
                out = last ? v * sc : v;
              }
            }
          }
          t += n;
        }
      }
    }
  }
}

// ---- quantized weights: one row against NT tokens --------------------------------------
#if defined(__AVX2__)
// sum of 32 int8 products as 8 float lanes (llama.cpp's sign trick: |x| * sign(y, x)).
inline __m256 mul_sum_i8(__m256i x, __m256i y) {
  return _mm256_cvtepi32_ps(k_dot_u8s8(_mm256_setzero_si256(), _mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x)));
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
  if (TYPE == GGML_I8) return matmul_fp8(w, r0, r1, a, y, ldy);
  int64_t r = r0;
#if defined(NEMOCPU_HAVE_ROWS2)
  if (a.T >= TILE_T) {  // prefill: pairs of rows over full token tiles, the leftovers below
    const int64_t t_full = a.T / TILE_T * TILE_T;
    for (; r + 2 <= r1; r += 2) {
      const uint8_t* row0 = w.data + r * w.row_bytes;
      float out[2 * TILE_T];
      for (int64_t t = 0; t < t_full; t += TILE_T) {
        const float* xs[TILE_T];
        for (int i = 0; i < TILE_T; ++i) xs[i] = a.x + (t + i) * a.ldx;
        rows2_tile_float<TYPE>(row0, row0 + w.row_bytes, w.K, xs, out);
        for (int i = 0; i < TILE_T; ++i) {
          y[(t + i) * ldy + r] = out[i];
          y[(t + i) * ldy + r + 1] = out[TILE_T + i];
        }
      }
      for (int64_t t = t_full; t < a.T; ++t) {
        const float* xs[1] = {a.x + t * a.ldx};
        for (int j = 0; j < 2; ++j) {
          row_tile_float<TYPE, 1>(row0 + j * w.row_bytes, w.K, xs, out);
          y[t * ldy + r + j] = out[0];
        }
      }
    }
  }
#endif
  for (; r < r1; ++r) {
    const uint8_t* row = w.data + r * w.row_bytes;
    int64_t t = 0;
    float out[TILE_T];
    for (; t + TILE_T <= a.T; t += TILE_T) {
      const float* xs[TILE_T];
      for (int i = 0; i < TILE_T; ++i) xs[i] = a.x + (t + i) * a.ldx;
      row_tile_float<TYPE, TILE_T>(row, w.K, xs, out);
      for (int i = 0; i < TILE_T; ++i) y[(t + i) * ldy + r] = out[i];
    }
    for (; t < a.T; ++t) {
      const float* xs[1] = {a.x + t * a.ldx};
      row_tile_float<TYPE, 1>(row, w.K, xs, out);
      y[t * ldy + r] = out[0];
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
