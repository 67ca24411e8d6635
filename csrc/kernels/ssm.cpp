// Mamba-2 kernels: causal depthwise conv (+bias, SiLU) with carried state, the selective
// state-space scan with carried state, and the gated group RMSNorm that follows it.
// State and arithmetic are fp32 (reference/nemotron-h.md §3.3).
#include "nemocpu/kernels.h"
#include "common.h"

namespace nemocpu {
namespace NEMOCPU_VARIANT {

constexpr int64_t kMaxConvKernel = 16;  // the engine rejects larger kernels

void conv1d_silu(float* state, const float* x, int64_t ldx, int64_t T, const float* w, const float* bias,
                 int64_t C, int64_t K, int64_t c0, int64_t c1, float* out, int64_t ldo) {
  const int64_t S = K - 1;  // state rows
  for (int64_t t = 0; t < T; ++t) {
    // input rows for taps 0..K-1: position t-S+k, from the state when negative
    const float* rows[kMaxConvKernel];
    for (int64_t k = 0; k < K; ++k) {
      const int64_t tau = t - S + k;
      rows[k] = tau < 0 ? state + (S + tau) * C : x + tau * ldx;
    }
    float* o = out + t * ldo;
    for (int64_t c = c0; c < c1; ++c) {
      float acc = bias[c];
      for (int64_t k = 0; k < K; ++k) acc += w[c * K + k] * rows[k][c];
      o[c] = k_silu(acc);
    }
  }
  // Keep the last S pre-conv inputs. Ascending j reads index T+j >= j, so in place is safe.
  for (int64_t j = 0; j < S; ++j) {
    const int64_t tau = T - S + j;
    const float* src = tau < 0 ? state + (S + tau) * C : x + tau * ldx;
    if (src != state + j * C) memcpy(state + j * C + c0, src + c0, (size_t)(c1 - c0) * sizeof(float));
  }
}

namespace {

// One channel row of the state: S = S*da + xdt*B; returns S . C
inline float scan_row(float* S, const float* B, const float* C, float da, float xdt, int64_t N) {
  int64_t n = 0;
#if defined(__AVX2__)
  __m256 acc = _mm256_setzero_ps();
  const __m256 vda = _mm256_set1_ps(da), vxdt = _mm256_set1_ps(xdt);
  for (; n + 8 <= N; n += 8) {
    const __m256 s = _mm256_fmadd_ps(_mm256_loadu_ps(S + n), vda, _mm256_mul_ps(vxdt, _mm256_loadu_ps(B + n)));
    _mm256_storeu_ps(S + n, s);
    acc = _mm256_fmadd_ps(s, _mm256_loadu_ps(C + n), acc);
  }
  __m128 r = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  r = _mm_add_ps(r, _mm_movehl_ps(r, r));
  r = _mm_add_ss(r, _mm_movehdup_ps(r));
  float out = _mm_cvtss_f32(r);
#else
  float lanes[8] = {};
  for (; n + 8 <= N; n += 8) {
    for (int l = 0; l < 8; ++l) {
      const float s = S[n + l] * da + xdt * B[n + l];
      S[n + l] = s;
      lanes[l] += s * C[n + l];
    }
  }
  float out = 0.0f;
  for (int l = 0; l < 8; ++l) out += lanes[l];
#endif
  for (; n < N; ++n) {
    const float s = S[n] * da + xdt * B[n];
    S[n] = s;
    out += s * C[n];
  }
  return out;
}

}  // namespace

// Head outer, token inner: one head's state (hd x N floats) stays in L1 across tokens.
void ssm_scan(const ScanArgs& a, int64_t h0, int64_t h1) {
  const int64_t heads_per_group = a.nh / a.G;
  for (int64_t h = h0; h < h1; ++h) {
    const int64_t g = h / heads_per_group;
    float* Sh = a.state + h * a.hd * a.N;
    for (int64_t t = 0; t < a.T; ++t) {
      const float dt = a.dt[t * a.lddt + h];
      const float da = expf(dt * a.A[h]);
      const float* xh = a.x + t * a.ldx + h * a.hd;
      const float* B = a.B + t * a.ldbc + g * a.N;
      const float* C = a.C + t * a.ldbc + g * a.N;
      float* yh = a.y + t * a.ldy + h * a.hd;
      for (int64_t p = 0; p < a.hd; ++p)
        yh[p] = scan_row(Sh + p * a.N, B, C, da, xh[p] * dt, a.N) + a.D[h] * xh[p];
    }
  }
}

void gated_rmsnorm(const float* y, const float* z, const float* w, int64_t n, int64_t group, float eps,
                   float* out) {
  for (int64_t g0 = 0; g0 < n; g0 += group) {
    float ss = 0.0f;
    for (int64_t i = g0; i < g0 + group; ++i) {
      const float v = y[i] * k_silu(z[i]);
      out[i] = v;
      ss += v * v;
    }
    const float inv = 1.0f / sqrtf(ss / (float)group + eps);
    for (int64_t i = g0; i < g0 + group; ++i) out[i] = out[i] * inv * w[i];
  }
}

void rmsnorm(const float* x, const float* w, int64_t n, float eps, float* out) {
  float lanes[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) lanes[l] += x[i + l] * x[i + l];
  float ss = 0.0f;
  for (int l = 0; l < 8; ++l) ss += lanes[l];
  for (; i < n; ++i) ss += x[i] * x[i];
  const float inv = 1.0f / sqrtf(ss / (float)n + eps);
  for (int64_t j = 0; j < n; ++j) out[j] = x[j] * inv * w[j];
}

}  // namespace NEMOCPU_VARIANT
}  // namespace nemocpu
