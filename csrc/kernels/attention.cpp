// Attention of one query head over a KV cache (f16 or f32), causal by construction: the
// caller passes exactly the keys the query may see. No positional encoding (NoPE).
// Softmax in fp32 with the max subtracted.
#include "nemocpu/kernels.h"
#include "common.h"

namespace nemocpu {
namespace NEMOCPU_VARIANT {

namespace {

template <int KV>
inline float kv_at(const void* base, int64_t i) {
  return KV == GGML_F16 ? k_fp16_to_f32(((const uint16_t*)base)[i]) : ((const float*)base)[i];
}

#if defined(__AVX2__)
template <int KV>
inline __m256 kv_load8(const void* base, int64_t i) {
  if (KV == GGML_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)((const uint16_t*)base + i)));
  return _mm256_loadu_ps((const float*)base + i);
}

inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

template <int KV>
float dot_qk(const float* q, const void* k, int64_t off, int64_t hd) {
  int64_t d = 0;
  float s = 0.0f;
#if defined(__AVX2__)
  __m256 acc = _mm256_setzero_ps();
  for (; d + 8 <= hd; d += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), kv_load8<KV>(k, off + d), acc);
  s = hsum8(acc);
#else
  float lanes[8] = {};
  for (; d + 8 <= hd; d += 8)
    for (int l = 0; l < 8; ++l) lanes[l] += q[d + l] * kv_at<KV>(k, off + d + l);
  for (int l = 0; l < 8; ++l) s += lanes[l];
#endif
  for (; d < hd; ++d) s += q[d] * kv_at<KV>(k, off + d);
  return s;
}

// out += p * v[off : off + hd]
template <int KV>
void axpy_v(float p, const void* v, int64_t off, int64_t hd, float* out) {
  int64_t d = 0;
#if defined(__AVX2__)
  const __m256 vp = _mm256_set1_ps(p);
  for (; d + 8 <= hd; d += 8)
    _mm256_storeu_ps(out + d, _mm256_fmadd_ps(vp, kv_load8<KV>(v, off + d), _mm256_loadu_ps(out + d)));
#endif
  for (; d < hd; ++d) out[d] += p * kv_at<KV>(v, off + d);
}

template <int KV>
void attention_t(const AttnArgs& a) {
  float mx = -INFINITY;
  for (int64_t j = 0; j < a.n_keys; ++j) {
    const float s = dot_qk<KV>(a.q, a.k, j * a.ld, a.hd) * a.scale;
    a.scores[j] = s;
    mx = s > mx ? s : mx;
  }
  float sum = 0.0f;
  for (int64_t j = 0; j < a.n_keys; ++j) {
    a.scores[j] = expf(a.scores[j] - mx);
    sum += a.scores[j];
  }
  const float inv = 1.0f / sum;
  for (int64_t d = 0; d < a.hd; ++d) a.out[d] = 0.0f;
  for (int64_t j = 0; j < a.n_keys; ++j) axpy_v<KV>(a.scores[j] * inv, a.v, j * a.ld, a.hd, a.out);
}

}  // namespace

void attention(const AttnArgs& a) {
  if (a.kv_type == GGML_F16) attention_t<GGML_F16>(a);
  else attention_t<GGML_F32>(a);
}

void to_f16(const float* x, int64_t n, uint16_t* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = k_f32_to_fp16(x[i]);
}

}  // namespace NEMOCPU_VARIANT
}  // namespace nemocpu
