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

template <int KV>
void attention_t(const AttnArgs& a) {
  float mx = -INFINITY;
  for (int64_t j = 0; j < a.n_keys; ++j) {
    const int64_t off = j * a.ld;
    float lanes[8] = {};
    int64_t d = 0;
    for (; d + 8 <= a.hd; d += 8)
      for (int l = 0; l < 8; ++l) lanes[l] += a.q[d + l] * kv_at<KV>(a.k, off + d + l);
    float s = 0.0f;
    for (int l = 0; l < 8; ++l) s += lanes[l];
    for (; d < a.hd; ++d) s += a.q[d] * kv_at<KV>(a.k, off + d);
    s *= a.scale;
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
  for (int64_t j = 0; j < a.n_keys; ++j) {
    const float p = a.scores[j] * inv;
    const int64_t off = j * a.ld;
    for (int64_t d = 0; d < a.hd; ++d) a.out[d] += p * kv_at<KV>(a.v, off + d);
  }
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
