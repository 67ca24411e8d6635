// Attention family: grouped-query attention over a KV cache (f16 or f32), no positional
// encoding; fp32 -> f16 for cache writes.
//
// attention() takes ONE kv head with all `rep` query heads that share it, for a tile of
// n_tok consecutive tokens, so each K and V row is read from memory once per call and dotted
// with every query row of the group (GQA 32/2 used to stream each kv head 16 times per token).
// Softmax is exact fp32 with the max subtracted, computed online (flash-style) over blocks of
// kAttnKeyBlock keys: the scratch stays [rows, block] whatever the context length (a two-pass
// score buffer would be [rows, n_keys], i.e. megabytes per task for a prefill tile at long
// context), and each block of K and V is used while it is hot in L1.
// Blocks are aligned to absolute key positions and a row's blocks are processed in key order
// with per-row arithmetic that does not depend on which other rows share the call, so a row's
// result is the same bits whatever the token tile (prefill == decode for one key range).
// A call covers the key range [k0, k1) (split-K) and returns the normalised output with each
// row's (max, sum); attention_merge combines several ranges exactly (log-sum-exp).
//
// attention_ref is the scalar spec (per-key online softmax, no scratch); the blocked path is
// what runs. Its micro-kernels are written once over an 8-lane vector type: __m256 under AVX2
// (also the avx512 build), a plain float[8] elsewhere, which compilers vectorise (NEON).
#include "nemocpu/kernels.h"
#include "common.h"

namespace nemocpu {
namespace NEMOCPU_VARIANT {

namespace {

constexpr int64_t KB = kAttnKeyBlock;

// ---- exp of softmax weights ---------------------------------------------------------------
// exp(x) for x <= 0 as Cephes' expf does it: x = n ln2 + r with |r| <= ln2 / 2 (ln2 split in
// two so n ln2 is exact), exp(r) by a degree-7 polynomial, times 2^n; relative error <= 1.2e-7
// (1-2 ulp; measured against double on a dense sweep of [-87.3, 0], scalar and AVX2).
// Branch-free, so it vectorises: libm's expf, one call per score, took ~1/6 of the decode
// kernel's time at 16k keys. x < kExpLo (incl. -inf) gives 0, NaN gives NaN. The AVX2 path
// evaluates the same steps with FMA.
constexpr float kExpLo = -87.33654f;  // exp(kExpLo) ~ FLT_MIN: the result stays a normal number
constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kExpP[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                            4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};

inline float exp_neg(float x) {
  if (x != x) return x;
  if (x < kExpLo) return 0.0f;
  const float fx = nearbyintf(x * kLog2e);
  const float r = (x - fx * kLn2Hi) - fx * kLn2Lo;
  float y = kExpP[0];
  for (int i = 1; i < 6; ++i) y = y * r + kExpP[i];
  y = y * (r * r) + (r + 1.0f);
  const uint32_t bits = (uint32_t)((int32_t)fx + 127) << 23;
  float scale;
  memcpy(&scale, &bits, 4);
  return y * scale;
}

// ---- 8-lane vectors -------------------------------------------------------------------
// hsum8 / hsum8x8 add the lanes as ((x0+x1)+(x2+x3)) + ((x4+x5)+(x6+x7)) in every path and
// shape, so a dot product rounds the same whichever micro-tile computed it.
#if defined(__AVX2__)
typedef __m256 V8;
inline V8 v_zero() { return _mm256_setzero_ps(); }
inline V8 v_load(const float* p) { return _mm256_loadu_ps(p); }
inline void v_store(float* p, V8 x) { _mm256_storeu_ps(p, x); }
inline V8 v_set1(float x) { return _mm256_set1_ps(x); }
inline V8 v_fma(V8 a, V8 b, V8 c) { return _mm256_fmadd_ps(a, b, c); }
inline V8 v_mul(V8 a, V8 b) { return _mm256_mul_ps(a, b); }
inline V8 v_sub(V8 a, V8 b) { return _mm256_sub_ps(a, b); }
inline V8 v_add(V8 a, V8 b) { return _mm256_add_ps(a, b); }
inline __m256i lane_mask(int64_t n) { return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); }
// the first n < 8 lanes; the others read as 0 and are not written
inline V8 v_load_n(const float* p, int64_t n) { return _mm256_maskload_ps(p, lane_mask(n)); }
inline void v_store_n(float* p, V8 x, int64_t n) { _mm256_maskstore_ps(p, lane_mask(n), x); }

inline float hsum8(V8 v) {
  const __m256 h = _mm256_hadd_ps(v, v);  // [x0+x1, x2+x3, ..| x4+x5, x6+x7, ..]
  const __m256 h2 = _mm256_hadd_ps(h, h);
  return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(h2), _mm256_extractf128_ps(h2, 1)));
}

// lane i of the result = hsum8(ai)
inline V8 hsum8x8(V8 a0, V8 a1, V8 a2, V8 a3, V8 a4, V8 a5, V8 a6, V8 a7) {
  const __m256 h0 = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  const __m256 h1 = _mm256_hadd_ps(_mm256_hadd_ps(a4, a5), _mm256_hadd_ps(a6, a7));
  return _mm256_add_ps(_mm256_permute2f128_ps(h0, h1, 0x20), _mm256_permute2f128_ps(h0, h1, 0x31));
}

// exp(x) for x <= 0, -inf or NaN (softmax weights), the polynomial of exp_neg below.
inline V8 v_exp_neg(V8 x) {
  const __m256 lo = _mm256_set1_ps(kExpLo);
  const __m256 xc = _mm256_max_ps(x, lo);  // NaN -> lo here; restored at the end
  const __m256 fx = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(kLn2Hi), xc);
  r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(kLn2Lo), r);
  __m256 y = _mm256_set1_ps(kExpP[0]);
  for (int i = 1; i < 6; ++i) y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(kExpP[i]));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
  y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
  y = _mm256_andnot_ps(_mm256_cmp_ps(x, lo, _CMP_LT_OQ), y);             // below the range, -inf: 0
  return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));     // NaN stays NaN
}

inline void f16_to_f32(const uint16_t* h, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(h + i))));
  for (; i < n; ++i) out[i] = k_fp16_to_f32(h[i]);
}
#else
struct V8 {
  float x[8];
};
inline V8 v_zero() { V8 r; for (int i = 0; i < 8; ++i) r.x[i] = 0.0f; return r; }
inline V8 v_load(const float* p) { V8 r; for (int i = 0; i < 8; ++i) r.x[i] = p[i]; return r; }
inline void v_store(float* p, V8 a) { for (int i = 0; i < 8; ++i) p[i] = a.x[i]; }
inline V8 v_set1(float s) { V8 r; for (int i = 0; i < 8; ++i) r.x[i] = s; return r; }
inline V8 v_fma(V8 a, V8 b, V8 c) { for (int i = 0; i < 8; ++i) c.x[i] += a.x[i] * b.x[i]; return c; }
inline V8 v_mul(V8 a, V8 b) { for (int i = 0; i < 8; ++i) a.x[i] *= b.x[i]; return a; }
inline V8 v_sub(V8 a, V8 b) { for (int i = 0; i < 8; ++i) a.x[i] -= b.x[i]; return a; }
inline V8 v_add(V8 a, V8 b) { for (int i = 0; i < 8; ++i) a.x[i] += b.x[i]; return a; }
inline V8 v_exp_neg(V8 x) { for (int i = 0; i < 8; ++i) x.x[i] = exp_neg(x.x[i]); return x; }
inline V8 v_load_n(const float* p, int64_t n) { V8 r = v_zero(); for (int64_t i = 0; i < n; ++i) r.x[i] = p[i]; return r; }
inline void v_store_n(float* p, V8 a, int64_t n) { for (int64_t i = 0; i < n; ++i) p[i] = a.x[i]; }

inline float hsum8(V8 v) {
  return ((v.x[0] + v.x[1]) + (v.x[2] + v.x[3])) + ((v.x[4] + v.x[5]) + (v.x[6] + v.x[7]));
}

inline V8 hsum8x8(V8 a0, V8 a1, V8 a2, V8 a3, V8 a4, V8 a5, V8 a6, V8 a7) {
  const V8 a[8] = {a0, a1, a2, a3, a4, a5, a6, a7};
  V8 r;
  for (int i = 0; i < 8; ++i) r.x[i] = hsum8(a[i]);
  return r;
}

inline void f16_to_f32(const uint16_t* h, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = k_fp16_to_f32(h[i]);
}
#endif

// ---- micro-kernels ----------------------------------------------------------------------
// Their loops over rows / keys / vectors are fully unrolled so the accumulators live in
// registers (GCC otherwise keeps the array on the stack, zeroed with rep stos per tile).
#define NEMOCPU_UNROLL _Pragma("GCC unroll 8")
// S[r * lds + c] = scale * (q_r . k_c) for R query rows and C keys (k_c at k + c * ldk).
template <int R, int C>
void qk_tile(const float* const* q, const float* k, int64_t ldk, int64_t hd, float scale, float* S, int64_t lds) {
  V8 acc[R * C];
  NEMOCPU_UNROLL
  for (int i = 0; i < R * C; ++i) acc[i] = v_zero();
  int64_t d = 0;
  for (; d + 8 <= hd; d += 8) {
    V8 kv[C];
    NEMOCPU_UNROLL
    for (int c = 0; c < C; ++c) kv[c] = v_load(k + c * ldk + d);
    NEMOCPU_UNROLL
    for (int r = 0; r < R; ++r) {
      const V8 qv = v_load(q[r] + d);
      NEMOCPU_UNROLL
      for (int c = 0; c < C; ++c) acc[r * C + c] = v_fma(qv, kv[c], acc[r * C + c]);
    }
  }
  if (d < hd) {  // the last hd % 8 dims as a zero-padded chunk: every shape sums in one order
    V8 kv[C];
    NEMOCPU_UNROLL
    for (int c = 0; c < C; ++c) kv[c] = v_load_n(k + c * ldk + d, hd - d);
    NEMOCPU_UNROLL
    for (int r = 0; r < R; ++r) {
      const V8 qv = v_load_n(q[r] + d, hd - d);
      NEMOCPU_UNROLL
      for (int c = 0; c < C; ++c) acc[r * C + c] = v_fma(qv, kv[c], acc[r * C + c]);
    }
  }
  float s[R * C];
  if constexpr (R * C == 8) {
    v_store(s, hsum8x8(acc[0], acc[1], acc[2], acc[3], acc[4], acc[5], acc[6], acc[7]));
  } else {
    NEMOCPU_UNROLL
    for (int i = 0; i < R * C; ++i) s[i] = hsum8(acc[i]);
  }
  NEMOCPU_UNROLL
  for (int r = 0; r < R; ++r)
    NEMOCPU_UNROLL
    for (int c = 0; c < C; ++c) S[r * lds + c] = s[r * C + c] * scale;
}

// out_r[d0, d0 + 8D) += sum_{c < n} P[r * ldp + c] * v_c[d0, d0 + 8D) for R rows, keys in order;
// width < 8 (D = 1): only the first `width` dims (the hd % 8 tail).
template <int R, int D>
void pv_tile(const float* P, int64_t ldp, const float* v, int64_t ldv, int64_t n, float* const* out, int64_t d0,
             int64_t width = 8) {
  V8 acc[R * D];
  NEMOCPU_UNROLL
  for (int r = 0; r < R; ++r)
    NEMOCPU_UNROLL
    for (int i = 0; i < D; ++i)
      acc[r * D + i] = width == 8 ? v_load(out[r] + d0 + 8 * i) : v_load_n(out[r] + d0, width);
  for (int64_t c = 0; c < n; ++c) {
    V8 vv[D];
    NEMOCPU_UNROLL
    for (int i = 0; i < D; ++i) vv[i] = width == 8 ? v_load(v + c * ldv + d0 + 8 * i) : v_load_n(v + c * ldv + d0, width);
    NEMOCPU_UNROLL
    for (int r = 0; r < R; ++r) {
      const V8 p = v_set1(P[r * ldp + c]);
      NEMOCPU_UNROLL
      for (int i = 0; i < D; ++i) acc[r * D + i] = v_fma(p, vv[i], acc[r * D + i]);
    }
  }
  NEMOCPU_UNROLL
  for (int r = 0; r < R; ++r)
    NEMOCPU_UNROLL
    for (int i = 0; i < D; ++i) {
      if (width == 8) v_store(out[r] + d0 + 8 * i, acc[r * D + i]);
      else v_store_n(out[r] + d0, acc[r * D + i], width);
    }
}

// ---- the blocked kernel -------------------------------------------------------------------
struct Rows {  // row r = t * rep + i: head i of token t
  const AttnArgs& a;
  const float* q(int64_t r) const { return a.q + (r / a.rep) * a.ldq + (r % a.rep) * a.hd; }
  float* out(int64_t r) const { return a.out + (r / a.rep) * a.ldo + (r % a.rep) * a.hd; }
};

// Keys [j0, j0 + n) of one kv head as fp32 rows: the cache itself (f32) or converted into buf
// (f16): once per block for all rows, so the micro-kernels are fp32 only, in every path.
template <int KV>
const float* kv_rows(const void* base, int64_t ld, int64_t j0, int64_t n, int64_t hd, float* buf, int64_t* ldb) {
  if (KV == GGML_F32) {
    *ldb = ld;
    return (const float*)base + j0 * ld;
  }
  for (int64_t j = 0; j < n; ++j) f16_to_f32((const uint16_t*)base + (j0 + j) * ld, hd, buf + j * hd);
  *ldb = hd;
  return buf;
}

template <int R>
void qk_rows(const Rows& rows, int64_t r, const float* k, int64_t ldk, int64_t n, float* S) {
  const float* q[R];
  for (int i = 0; i < R; ++i) q[i] = rows.q(r + i);
  const int64_t hd = rows.a.hd;
  const float scale = rows.a.scale;
  int64_t c = 0;
  for (; c + 2 <= n; c += 2) qk_tile<R, 2>(q, k + c * ldk, ldk, hd, scale, S + c, KB);
  if (c < n) qk_tile<R, 1>(q, k + c * ldk, ldk, hd, scale, S + c, KB);
}

template <int R>
void pv_rows(const Rows& rows, int64_t r, const float* P, const float* v, int64_t ldv, int64_t n) {
  float* out[R];
  for (int i = 0; i < R; ++i) out[i] = rows.out(r + i);
  const int64_t hd = rows.a.hd;
  int64_t d = 0;
  for (; d + 16 <= hd; d += 16) pv_tile<R, 2>(P, KB, v, ldv, n, out, d);
  if (d + 8 <= hd) pv_tile<R, 1>(P, KB, v, ldv, n, out, d), d += 8;
  if (d < hd) pv_tile<R, 1>(P, KB, v, ldv, n, out, d, hd - d);
}

// Rows [r0, r1), all of which see every key of [j0, j0 + n) (n <= KB): scores, the online
// softmax update of (m, l, out), then out += P V.
template <int KV>
void block(const Rows& rows, int64_t r0, int64_t r1, int64_t j0, int64_t n) {
  const AttnArgs& a = rows.a;
  float* S = a.scratch;                          // [r1 - r0, KB]
  float* buf = a.scratch + a.rep * a.n_tok * KB;  // [KB, hd]
  int64_t ldk;
  const float* k = kv_rows<KV>(a.k, a.ld, j0, n, a.hd, buf, &ldk);
  for (int64_t r = r0; r < r1;) {
    float* Sr = S + (r - r0) * KB;
    switch (r1 - r >= 4 ? 4 : r1 - r) {
      case 4: qk_rows<4>(rows, r, k, ldk, n, Sr); r += 4; break;
      case 3: qk_rows<3>(rows, r, k, ldk, n, Sr); r += 3; break;
      case 2: qk_rows<2>(rows, r, k, ldk, n, Sr); r += 2; break;
      default: qk_rows<1>(rows, r, k, ldk, n, Sr); r += 1; break;
    }
  }
  for (int64_t r = r0; r < r1; ++r) {
    float* Sr = S + (r - r0) * KB;
    float bm = -INFINITY;
    for (int64_t c = 0; c < n; ++c) bm = Sr[c] > bm ? Sr[c] : bm;
    const float m_new = bm > a.m[r] ? bm : a.m[r];
    const V8 vm = v_set1(m_new);
    V8 vsum = v_zero();
    int64_t c = 0;
    for (; c + 8 <= n; c += 8) {
      const V8 p = v_exp_neg(v_sub(v_load(Sr + c), vm));
      v_store(Sr + c, p);
      vsum = v_add(vsum, p);
    }
    if (c < n) {  // the tail; reloaded zero-padded so only the n - c weights are summed
      v_store_n(Sr + c, v_exp_neg(v_sub(v_load_n(Sr + c, n - c), vm)), n - c);
      vsum = v_add(vsum, v_load_n(Sr + c, n - c));
    }
    const float sum = hsum8(vsum);
    if (m_new != a.m[r]) {  // rescale what earlier blocks accumulated (alpha = 0 on the first)
      const float alpha = expf(a.m[r] - m_new);
      float* o = rows.out(r);
      for (int64_t d = 0; d < a.hd; ++d) o[d] *= alpha;
      a.l[r] *= alpha;
      a.m[r] = m_new;
    }
    a.l[r] += sum;
  }
  int64_t ldv;
  const float* v = kv_rows<KV>(a.v, a.ld, j0, n, a.hd, buf, &ldv);  // K is done with buf
  for (int64_t r = r0; r < r1;) {
    const float* Pr = S + (r - r0) * KB;
    switch (r1 - r >= 4 ? 4 : r1 - r) {
      case 4: pv_rows<4>(rows, r, Pr, v, ldv, n); r += 4; break;
      case 3: pv_rows<3>(rows, r, Pr, v, ldv, n); r += 3; break;
      case 2: pv_rows<2>(rows, r, Pr, v, ldv, n); r += 2; break;
      default: pv_rows<1>(rows, r, Pr, v, ldv, n); r += 1; break;
    }
  }
}

template <int KV>
void attention_t(const AttnArgs& a) {
  const Rows rows{a};
  const int64_t n_rows = a.rep * a.n_tok;
  for (int64_t r = 0; r < n_rows; ++r) {
    a.m[r] = -INFINITY;
    a.l[r] = 0.0f;
    float* o = rows.out(r);
    for (int64_t d = 0; d < a.hd; ++d) o[d] = 0.0f;
  }
  const int64_t end = k_min(a.k1, a.n_keys + a.n_tok - 1);  // the last token sees n_keys + n_tok - 1
  for (int64_t b0 = a.k0 - a.k0 % KB; b0 < end; b0 += KB) {
    const int64_t j0 = k_max(b0, a.k0), j1 = k_min(b0 + KB, end);
    if (j0 >= j1) break;  // empty range
    // tokens t >= t_all see the whole of [j0, j1); earlier ones see [j0, n_keys + t)
    const int64_t t_all = k_max(0, j1 - a.n_keys);
    if (t_all < a.n_tok) block<KV>(rows, t_all * a.rep, n_rows, j0, j1 - j0);
    for (int64_t t = k_max(0, j0 + 1 - a.n_keys); t < k_min(t_all, a.n_tok); ++t)
      block<KV>(rows, t * a.rep, (t + 1) * a.rep, j0, a.n_keys + t - j0);
  }
  for (int64_t r = 0; r < n_rows; ++r) {
    if (a.l[r] == 0.0f) continue;  // no key of this range is visible to the row
    const float inv = 1.0f / a.l[r];
    float* o = rows.out(r);
    for (int64_t d = 0; d < a.hd; ++d) o[d] *= inv;
  }
}

// ---- the scalar spec: per key, per row, online softmax in key order ------------------------
template <int KV>
float kv_at(const void* base, int64_t i) {
  return KV == GGML_F16 ? k_fp16_to_f32(((const uint16_t*)base)[i]) : ((const float*)base)[i];
}

template <int KV>
void attention_ref_t(const AttnArgs& a) {
  const Rows rows{a};
  for (int64_t r = 0; r < a.rep * a.n_tok; ++r) {
    const float* q = rows.q(r);
    float* o = rows.out(r);
    float m = -INFINITY, l = 0.0f;
    for (int64_t d = 0; d < a.hd; ++d) o[d] = 0.0f;
    const int64_t end = k_min(a.k1, a.n_keys + r / a.rep);
    for (int64_t j = a.k0; j < end; ++j) {
      float s = 0.0f;
      for (int64_t d = 0; d < a.hd; ++d) s += q[d] * kv_at<KV>(a.k, j * a.ld + d);
      s *= a.scale;
      const float m_new = s > m ? s : m;
      const float alpha = expf(m - m_new), p = expf(s - m_new);
      for (int64_t d = 0; d < a.hd; ++d) o[d] = o[d] * alpha + p * kv_at<KV>(a.v, j * a.ld + d);
      l = l * alpha + p;
      m = m_new;
    }
    if (l > 0.0f)
      for (int64_t d = 0; d < a.hd; ++d) o[d] /= l;
    a.m[r] = m;
    a.l[r] = l;
  }
}

}  // namespace

void attention(const AttnArgs& a) {
  if (a.kv_type == GGML_F16) attention_t<GGML_F16>(a);
  else attention_t<GGML_F32>(a);
}

void attention_ref(const AttnArgs& a) {
  if (a.kv_type == GGML_F16) attention_ref_t<GGML_F16>(a);
  else attention_ref_t<GGML_F32>(a);
}

// Fixed order over the splits (deterministic). A split where the row saw no key (l = 0) is
// skipped; a NaN in any split reaches the output.
void attention_merge(const float* o, const float* m, const float* l, int64_t n_split, int64_t n_tok, int64_t rep,
                     int64_t hd, float* out, int64_t ldo) {
  const int64_t n_rows = n_tok * rep;
  for (int64_t r = 0; r < n_rows; ++r) {
    float mx = -INFINITY;
    for (int64_t s = 0; s < n_split; ++s)
      if (l[s * n_rows + r] != 0.0f && m[s * n_rows + r] > mx) mx = m[s * n_rows + r];
    float* dst = out + (r / rep) * ldo + (r % rep) * hd;
    for (int64_t d = 0; d < hd; ++d) dst[d] = 0.0f;
    float total = 0.0f;
    for (int64_t s = 0; s < n_split; ++s) {
      const float ls = l[s * n_rows + r];
      if (ls == 0.0f) continue;
      const float w = ls * expf(m[s * n_rows + r] - mx);
      const float* src = o + (s * n_rows + r) * hd;
      for (int64_t d = 0; d < hd; ++d) dst[d] += w * src[d];
      total += w;
    }
    const float inv = 1.0f / total;
    for (int64_t d = 0; d < hd; ++d) dst[d] *= inv;
  }
}

void to_f16(const float* x, int64_t n, uint16_t* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = k_f32_to_fp16(x[i]);
}

}  // namespace NEMOCPU_VARIANT
}  // namespace nemocpu
