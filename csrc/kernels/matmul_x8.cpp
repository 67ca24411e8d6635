// Matmul over the 8-row interleaved layout (LAYOUT_X8, nemocpu/ggml_types.h) of Q8_0 / Q4_0
// weights: y[t, r] = sum_b (int dot of block b) * d_w(r, b) * d_x(t, b), exactly the row-major
// kernels' arithmetic (matmul.cpp) on a layout that one sequential stream carries 8 rows of.
// Why the layout pays: a 32-byte load holds the same 4 columns of 8 rows (a 32-bit lane per
// row), so one broadcast of 4 activation bytes feeds all 8 rows, the int dot products land one
// lane per row (no horizontal sums), and the 8 fp16 scales of a block convert in one instruction.
//   Q4_0: nibbles u in [0, 15] are dotted unsigned (maddubs needs an unsigned operand) and
//         8 * sum(x) is subtracted once per block: sum (u - 8) x = sum u x - 8 sum x.
//         Eight maddubs pairs (|u x + u' x'| <= 3810) still fit int16 before one madd.
//   Q8_0: llama.cpp's sign trick, |w| * sign(x, w), per 32-byte chunk (int16 would overflow
//         if two chunks were added before widening); AVX512-VNNI accumulates in int32 directly.
// The scalar reference (matmul_x8_ref) is the spec; the portable tile is what the generic
// and NEON builds run (NEON with dotprod gets the same lane-per-row sdot form).
#include "nemocpu/kernels.h"
#include "common.h"

#if defined(__ARM_NEON)
#include <arm_neon.h>
#endif

namespace nemocpu {
namespace NEMOCPU_VARIANT {

namespace {

constexpr int R8 = X8_ROWS;

// The token and chunk loops must be unrolled: only then do the NT accumulators live in
// registers (GCC otherwise kept the accumulator arrays on the stack: a load and a store per step).
#if defined(__clang__)
#define NEMOCPU_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define NEMOCPU_UNROLL _Pragma("GCC unroll 8")
#else
#define NEMOCPU_UNROLL
#endif
constexpr int TILE_T = 4;  // tokens per register tile (prefill)

inline int64_t superblock_bytes(int type) {
  return R8 * (type == GGML_Q8_0 ? (int64_t)sizeof(BlockQ8_0) : (int64_t)sizeof(BlockQ4_0));
}

// Column k (0..31) of row i (0..7) of a superblock, as the signed integer the scale multiplies.
inline int32_t x8_code(int type, const uint8_t* sb, int i, int k) {
  const uint8_t* qs = sb + 2 * R8;
  if (type == GGML_Q8_0) return (int8_t)qs[(k / 4) * 32 + 4 * i + k % 4];
  const int j = k % 16;  // byte j of the row's qs: low nibble = column j, high nibble = column j + 16
  const uint8_t byte = qs[(j / 4) * 32 + 4 * i + j % 4];
  return (int32_t)(k < 16 ? (byte & 0xf) : (byte >> 4)) - 8;
}

inline float x8_scale(const uint8_t* sb, int i) { return k_fp16_to_f32(((const uint16_t*)sb)[i]); }

inline int32_t load_i32(const int8_t* p) {
  int32_t v;
  memcpy(&v, p, 4);
  return v;
}

// ---- one group of 8 rows against NT tokens: out[t * 8 + i] = row_i . x_t --------------------
#if defined(__AVX2__)
template <int TYPE, int NT>
void group_tile(const uint8_t* g, int64_t nb, const BlockQ8Act* const* xs, float* out) {
  constexpr int64_t SB = TYPE == GGML_Q8_0 ? R8 * 34 : R8 * 18;
  __m256 acc[NT];
  NEMOCPU_UNROLL
  for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
  const __m256i ones16 = _mm256_set1_epi16(1);
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* sb = g + b * SB;
    if (NT == 1)  // decode streams weights from DRAM: ask for them ahead of the stream
      for (int64_t off = 0; off < SB; off += 64) _mm_prefetch((const char*)sb + K_DECODE_PREFETCH_BYTES + off, _MM_HINT_T0);
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)sb));
    const uint8_t* qs = sb + 2 * R8;
    __m256i isum[NT];
    if (TYPE == GGML_Q4_0) {
      const __m256i m4 = _mm256_set1_epi8(0x0f);
      __m256i p[NT];
      NEMOCPU_UNROLL
      for (int t = 0; t < NT; ++t) p[t] = _mm256_setzero_si256();
      NEMOCPU_UNROLL
      for (int c = 0; c < 4; ++c) {
        const __m256i w = _mm256_loadu_si256((const __m256i*)(qs + 32 * c));
        const __m256i lo = _mm256_and_si256(w, m4);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), m4);
        NEMOCPU_UNROLL
        for (int t = 0; t < NT; ++t) {
          const __m256i xl = _mm256_set1_epi32(load_i32(xs[t][b].qs + 4 * c));
          const __m256i xh = _mm256_set1_epi32(load_i32(xs[t][b].qs + 16 + 4 * c));
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
          p[t] = _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(p[t], lo, xl), hi, xh);  // int32 lanes
#else
          p[t] = _mm256_add_epi16(p[t], _mm256_add_epi16(_mm256_maddubs_epi16(lo, xl), _mm256_maddubs_epi16(hi, xh)));
#endif
        }
      }
      NEMOCPU_UNROLL
      for (int t = 0; t < NT; ++t) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
        const __m256i dot = p[t];
#else
        const __m256i dot = _mm256_madd_epi16(p[t], ones16);
#endif
        isum[t] = _mm256_sub_epi32(dot, _mm256_set1_epi32(8 * xs[t][b].sum));
      }
    } else {
      NEMOCPU_UNROLL
      for (int t = 0; t < NT; ++t) isum[t] = _mm256_setzero_si256();
      NEMOCPU_UNROLL
      for (int c = 0; c < 8; ++c) {
        const __m256i w = _mm256_loadu_si256((const __m256i*)(qs + 32 * c));
        const __m256i aw = _mm256_sign_epi8(w, w);
        NEMOCPU_UNROLL
        for (int t = 0; t < NT; ++t) {
          const __m256i sx = _mm256_sign_epi8(_mm256_set1_epi32(load_i32(xs[t][b].qs + 4 * c)), w);
          isum[t] = k_dot_u8s8(isum[t], aw, sx);
        }
      }
    }
    NEMOCPU_UNROLL
    for (int t = 0; t < NT; ++t)
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_mul_ps(dw, _mm256_set1_ps(xs[t][b].d)), acc[t]);
  }
  NEMOCPU_UNROLL
  for (int t = 0; t < NT; ++t) _mm256_storeu_ps(out + t * R8, acc[t]);
}
#else
template <int TYPE, int NT>
void group_tile(const uint8_t* g, int64_t nb, const BlockQ8Act* const* xs, float* out) {
  constexpr int64_t SB = TYPE == GGML_Q8_0 ? R8 * 34 : R8 * 18;
  float acc[NT][R8] = {};
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* sb = g + b * SB;
    const uint8_t* qs = sb + 2 * R8;
    float dw[R8];
    for (int i = 0; i < R8; ++i) dw[i] = x8_scale(sb, i);
    for (int t = 0; t < NT; ++t) {
      const int8_t* x = xs[t][b].qs;
      int32_t isum[R8];
#if defined(__ARM_FEATURE_DOTPROD)
      // sdot: each 32-bit lane = dot of 4 weight bytes (one row) with 4 activation bytes
      int32x4_t s0 = vdupq_n_s32(0), s1 = vdupq_n_s32(0);
      if (TYPE == GGML_Q8_0) {
        for (int c = 0; c < 8; ++c) {
          const int8x16_t xv = vreinterpretq_s8_s32(vdupq_n_s32(load_i32(x + 4 * c)));
          s0 = vdotq_s32(s0, vld1q_s8((const int8_t*)qs + 32 * c), xv);
          s1 = vdotq_s32(s1, vld1q_s8((const int8_t*)qs + 32 * c + 16), xv);
        }
      } else {
        const uint8x16_t m4 = vdupq_n_u8(0x0f);
        for (int c = 0; c < 4; ++c) {
          const int8x16_t xl = vreinterpretq_s8_s32(vdupq_n_s32(load_i32(x + 4 * c)));
          const int8x16_t xh = vreinterpretq_s8_s32(vdupq_n_s32(load_i32(x + 16 + 4 * c)));
          const uint8x16_t w0 = vld1q_u8(qs + 32 * c), w1 = vld1q_u8(qs + 32 * c + 16);
          // nibbles are < 16, so reading them as signed bytes is exact
          s0 = vdotq_s32(s0, vreinterpretq_s8_u8(vandq_u8(w0, m4)), xl);
          s0 = vdotq_s32(s0, vreinterpretq_s8_u8(vshrq_n_u8(w0, 4)), xh);
          s1 = vdotq_s32(s1, vreinterpretq_s8_u8(vandq_u8(w1, m4)), xl);
          s1 = vdotq_s32(s1, vreinterpretq_s8_u8(vshrq_n_u8(w1, 4)), xh);
        }
        const int32x4_t corr = vdupq_n_s32(8 * xs[t][b].sum);
        s0 = vsubq_s32(s0, corr);
        s1 = vsubq_s32(s1, corr);
      }
      vst1q_s32(isum, s0);
      vst1q_s32(isum + 4, s1);
#else
      for (int i = 0; i < R8; ++i) isum[i] = 0;
      if (TYPE == GGML_Q8_0) {
        for (int c = 0; c < 8; ++c)
          for (int i = 0; i < R8; ++i)
            for (int j = 0; j < 4; ++j) isum[i] += (int32_t)(int8_t)qs[32 * c + 4 * i + j] * x[4 * c + j];
      } else {
        for (int c = 0; c < 4; ++c)
          for (int i = 0; i < R8; ++i)
            for (int j = 0; j < 4; ++j) {
              const uint8_t byte = qs[32 * c + 4 * i + j];
              isum[i] += (int32_t)(byte & 0xf) * x[4 * c + j] + (int32_t)(byte >> 4) * x[16 + 4 * c + j];
            }
        for (int i = 0; i < R8; ++i) isum[i] -= 8 * xs[t][b].sum;
      }
#endif
      const float dx = xs[t][b].d;
      for (int i = 0; i < R8; ++i) acc[t][i] += (float)isum[i] * (dw[i] * dx);
    }
  }
  for (int t = 0; t < NT; ++t)
    for (int i = 0; i < R8; ++i) out[t * R8 + i] = acc[t][i];
}
#endif

// Tokens are taken in blocks of TOKEN_BLOCK so that a block's activation blocks (32 x 40 B per
// 32 columns: ~107 KB at K = 2688) stay in L2 while every group of the row range streams past
// them; each group's superblocks (8 rows x K: ~12 KB for Q4_0) stay in L1 across the block's tiles.
constexpr int64_t TOKEN_BLOCK = 32;

template <int TYPE>
void matmul_x8_typed(const WeightMatrix& w, int64_t r0, int64_t r1, const Activations& a, float* y, int64_t ldy) {
  const int64_t nb = w.K / QK, group_bytes = R8 * w.row_bytes;
  float out[TILE_T * R8];
  for (int64_t tb = 0; tb < a.T; tb += TOKEN_BLOCK) {
    const int64_t t_end = k_min(a.T, tb + TOKEN_BLOCK);
    for (int64_t g = r0 / R8; g * R8 < r1; ++g) {
      const uint8_t* gp = w.data + g * group_bytes;
      const int64_t n = k_min(R8, r1 - g * R8);  // rows of this group that exist (the last may be partial)
      for (int64_t t = tb; t < t_end; t += TILE_T) {
        const int64_t nt = k_min(TILE_T, t_end - t);
        const BlockQ8Act* xs[TILE_T];
        for (int64_t i = 0; i < nt; ++i) xs[i] = a.q + (t + i) * a.ldq;
        switch (nt) {
          case 4: group_tile<TYPE, 4>(gp, nb, xs, out); break;
          case 3: group_tile<TYPE, 3>(gp, nb, xs, out); break;
          case 2: group_tile<TYPE, 2>(gp, nb, xs, out); break;
          default: group_tile<TYPE, 1>(gp, nb, xs, out); break;
        }
        for (int64_t i = 0; i < nt; ++i)
          for (int64_t j = 0; j < n; ++j) y[(t + i) * ldy + g * R8 + j] = out[i * R8 + j];
      }
    }
  }
}

}  // namespace

void matmul_x8(const WeightMatrix& w, int64_t r0, int64_t r1, const Activations& a, float* y, int64_t ldy) {
  if (w.type == GGML_Q8_0) matmul_x8_typed<GGML_Q8_0>(w, r0, r1, a, y, ldy);
  else if (w.type == GGML_Q4_0) matmul_x8_typed<GGML_Q4_0>(w, r0, r1, a, y, ldy);
}

// The spec: per row and token, the block sums in order, as matmul_ref does for the file layout
// (the two agree bit for bit; tests/test_kernels_matmul.py checks it).
void matmul_x8_ref(const WeightMatrix& w, int64_t r0, int64_t r1, const Activations& a, float* y, int64_t ldy) {
  const int64_t nb = w.K / QK, sb_bytes = superblock_bytes(w.type);
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* g = w.data + (r / R8) * R8 * w.row_bytes;
    const int i = (int)(r % R8);
    for (int64_t t = 0; t < a.T; ++t) {
      const BlockQ8Act* x = a.q + t * a.ldq;
      float s = 0.0f;
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* sb = g + b * sb_bytes;
        int32_t isum = 0;
        for (int k = 0; k < QK; ++k) isum += x8_code(w.type, sb, i, k) * x[b].qs[k];
        s += (float)isum * (x8_scale(sb, i) * x[b].d);
      }
      y[t * ldy + r] = s;
    }
  }
}

}  // namespace NEMOCPU_VARIANT
}  // namespace nemocpu
