// Standalone kernel check for a SIMD variant (default: neon) without Python, so the aarch64
// build can be tested under qemu-aarch64 user emulation on an x86 CI machine.
// csrc/kernels/*.cpp are compiled twice, as CMake does (-DNEMOCPU_VARIANT=generic and
// =neon with the variant flags); this file fills both KernelTables and checks, on random
// inputs of many shapes, every kernel of the SIMD table against a double-precision reference
// computed here from the on-disk encodings (decoded with ldexp, never with kernel code), and
// matmul also against the variant's own scalar spec (matmul_ref) and the generic table.
// Tolerances are those of tests/test_kernels_*.py (see the comment at each check).
// Prints "N passed, M failed"; exits 1 on any failure.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "model/repack.h"
#include "nemocpu/kernels.h"

#ifndef HARNESS_SIMD
#define HARNESS_SIMD neon
#endif

namespace nemocpu {
NEMOCPU_DECLARE_VARIANT(generic)
NEMOCPU_DECLARE_VARIANT(HARNESS_SIMD)
}  // namespace nemocpu

using namespace nemocpu;

static int g_pass = 0, g_fail = 0;
static std::mt19937_64 rng(12345);

static void report(bool ok, const char* what, double err, double tol) {
  if (ok) { ++g_pass; return; }
  ++g_fail;
  if (g_fail <= 30) std::printf("FAIL %s: err %.3g > tol %.3g\n", what, err, tol);
}

static double normal(double sd = 1.0) { return std::normal_distribution<double>(0.0, sd)(rng); }
static double uniform(double a, double b) { return std::uniform_real_distribution<double>(a, b)(rng); }
static int64_t irange(int64_t a, int64_t b) { return std::uniform_int_distribution<int64_t>(a, b)(rng); }

// ---- independent decoders (double) -------------------------------------------------------
static double f16_val(uint16_t h) {
  const int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
  double v = e == 0 ? std::ldexp((double)m, -24) : e == 31 ? (m ? NAN : INFINITY) : std::ldexp(1024.0 + m, e - 25);
  return s ? -v : v;
}
static double bf16_val(uint16_t h) {
  const int s = h >> 15, e = (h >> 7) & 255, m = h & 127;
  double v = e == 0 ? std::ldexp((double)m, -133) : std::ldexp(128.0 + m, e - 134);
  return s ? -v : v;
}
static double e4m3_val(uint8_t c) {
  const int s = c >> 7, e = (c >> 3) & 15, m = c & 7;
  if (e == 15 && m == 7) return NAN;
  double v = e == 0 ? std::ldexp((double)m, -9) : std::ldexp(8.0 + m, e - 10);
  return s ? -v : v;
}
// fp32 -> fp16 round-to-nearest-even, computed in double (the reference for to_f16)
static uint16_t f16_rne(float xf) {
  const uint16_t sign = std::signbit(xf) ? 0x8000 : 0;
  const double a = std::fabs((double)xf);
  if (std::isnan(xf)) return sign | 0x7e00;
  if (a >= 65520.0) return sign | 0x7c00;
  if (a < std::ldexp(1.0, -14)) return sign | (uint16_t)std::nearbyint(a * std::ldexp(1.0, 24));
  int E;
  std::frexp(a, &E);
  int e = E - 1;
  double mant = std::nearbyint(std::ldexp(a, 10 - e));
  if (mant == 2048.0) { ++e; mant = 1024.0; }
  return sign | (uint16_t)(((e + 15) << 10) | ((int)mant - 1024));
}
static uint16_t rand_f16(int emin, int emax) {  // random sign/mantissa, biased exponent in range
  return (uint16_t)((irange(0, 1) << 15) | (irange(emin, emax) << 10) | irange(0, 1023));
}

// ---- activation quantization, the spec (tests/oracle.py q8_act_blocks) ---------------------
static void quantize_spec(const float* x, int64_t n, std::vector<BlockQ8Act>& out) {
  out.resize(n / QK);
  for (int64_t b = 0; b < n / QK; ++b) {
    float amax = 0.0f;
    for (int i = 0; i < QK; ++i) amax = std::fmax(amax, std::fabs(x[b * QK + i]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    out[b].d = d;
    out[b].sum = 0;
    for (int i = 0; i < QK; ++i) {
      const double v = (double)(float)(x[b * QK + i] * id);
      out[b].qs[i] = (int8_t)((v < 0 ? -1 : 1) * std::floor(std::fabs(v) + 0.5));
      out[b].sum += out[b].qs[i];
    }
  }
}

// ---- matmul ------------------------------------------------------------------------------
static const int kTypes[] = {GGML_F32, GGML_F16, GGML_BF16, GGML_I8, GGML_Q8_0, GGML_Q4_0};
static const char* type_name(int t) {
  switch (t) {
    case GGML_F32: return "F32"; case GGML_F16: return "F16"; case GGML_BF16: return "BF16";
    case GGML_I8: return "FP8"; case GGML_Q8_0: return "Q8_0"; default: return "Q4_0";
  }
}

// Random encoded weights [rows, K] and their exact values in double.
static void make_weights(int type, int64_t rows, int64_t K, std::vector<uint8_t>& raw, std::vector<double>& deq,
                         std::vector<float>& scale, int64_t& row_bytes) {
  deq.assign(rows * K, 0.0);
  scale.clear();
  if (type == GGML_Q8_0 || type == GGML_Q4_0) {
    const int64_t nb = K / QK, bsz = type == GGML_Q8_0 ? 34 : 18;
    row_bytes = nb * bsz;
    raw.assign(rows * row_bytes, 0);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t b = 0; b < nb; ++b) {
        uint8_t* blk = raw.data() + r * row_bytes + b * bsz;
        const uint16_t d = rand_f16(8, 16) & 0x7fff;
        std::memcpy(blk, &d, 2);
        for (int i = 0; i < (type == GGML_Q8_0 ? QK : QK / 2); ++i)
          blk[2 + i] = type == GGML_Q8_0 ? (uint8_t)(int8_t)irange(-127, 127) : (uint8_t)irange(0, 255);
        for (int i = 0; i < QK; ++i) {
          const double q = type == GGML_Q8_0 ? (double)(int8_t)blk[2 + i]
                           : (double)(((i < 16 ? blk[2 + i] : blk[2 + i - 16] >> 4) & 15) - 8);
          deq[r * K + b * QK + i] = q * f16_val(d);
        }
      }
    return;
  }
  const int64_t esz = type == GGML_F32 ? 4 : type == GGML_I8 ? 1 : 2;
  row_bytes = K * esz;
  raw.assign(rows * row_bytes, 0);
  if (type == GGML_I8) {
    scale.resize(rows);
    for (auto& s : scale) s = (float)uniform(0.5, 2.0);
  }
  for (int64_t i = 0; i < rows * K; ++i) {
    uint8_t* p = raw.data() + i * esz;
    if (type == GGML_F32) {
      const float f = (float)normal();
      std::memcpy(p, &f, 4);
      deq[i] = f;
    } else if (type == GGML_F16) {
      const uint16_t h = rand_f16(10, 17);
      std::memcpy(p, &h, 2);
      deq[i] = f16_val(h);
    } else if (type == GGML_BF16) {
      const uint16_t h = (uint16_t)((irange(0, 1) << 15) | (irange(120, 128) << 7) | irange(0, 127));
      std::memcpy(p, &h, 2);
      deq[i] = bf16_val(h);
    } else {
      uint8_t c;
      do c = (uint8_t)irange(0, 255); while ((c & 0x7f) == 0x7f);  // every finite code
      *p = c;
      deq[i] = e4m3_val(c) * (double)scale[i / K];
    }
  }
}

// x8: the weights repacked to the 8-row interleaved layout (model/repack.cpp), as the engine
// does at load; its row ranges start at a multiple of 8 and end at one or at rows.
static void check_matmul(const KernelTable& simd, const KernelTable& gen, int type, int64_t K, int64_t rows,
                         int64_t T, double rel_override, bool x8 = false) {
  std::vector<uint8_t> raw;
  std::vector<double> deq;
  std::vector<float> scale;
  int64_t row_bytes = 0;
  make_weights(type, rows, K, raw, deq, scale, row_bytes);
  if (x8) {
    std::vector<uint8_t> packed(x8_matrix_bytes(type, rows, K));
    repack_x8_groups(type, raw.data(), rows, K, 0, (rows + X8_ROWS - 1) / X8_ROWS, packed.data());
    raw.swap(packed);
  }
  const bool quant = type == GGML_Q8_0 || type == GGML_Q4_0;
  const int64_t ldx = K + irange(0, 3);  // strided activations
  std::vector<float> x(T * ldx);
  const double amp = quant ? uniform(0.1, 10) : 1.0;
  for (auto& v : x) v = (float)(normal() * amp);
  std::vector<BlockQ8Act> q;
  if (quant) {
    std::vector<BlockQ8Act> qt;
    q.resize(T * (K / QK));
    for (int64_t t = 0; t < T; ++t) {
      quantize_spec(x.data() + t * ldx, K, qt);
      std::memcpy(q.data() + t * (K / QK), qt.data(), qt.size() * sizeof(BlockQ8Act));
    }
  }
  WeightMatrix w;
  w.data = raw.data(); w.type = type; w.K = K; w.rows = rows; w.row_bytes = row_bytes;
  w.layout = x8 ? LAYOUT_X8 : LAYOUT_ROWS;
  w.scale = scale.empty() ? nullptr : scale.data(); w.scale_stride = 1;
  Activations a;
  a.x = x.data(); a.ldx = ldx; a.q = quant ? q.data() : nullptr; a.ldq = K / QK; a.T = T;
  // Float weights: a few fp32 ulps of sum |w||x| (accumulation order). Quantized: only the
  // fp32 accumulation of exact int32 block sums, (K/32 + 8) roundings.
  const double rel = rel_override > 0 ? rel_override
                     : quant ? 4.0 * (K / QK + 8) * std::ldexp(1.0, -24)
                             : 4.0 * K * std::ldexp(1.0, -24) + std::ldexp(1.0, -23);
  // a row subrange [r0, r1) with a padded output stride, as the thread pool calls it
  int64_t r0 = irange(0, rows - 1), r1 = irange(r0 + 1, rows);
  if (x8) {
    r0 = r0 / X8_ROWS * X8_ROWS;
    r1 = std::min(rows, (r1 + X8_ROWS - 1) / X8_ROWS * X8_ROWS);
  }
  const int64_t ldy = rows + 1;
  std::vector<float> ys(T * ldy, NAN), yr(T * ldy, NAN), yg(T * ldy, NAN);
  simd.matmul(w, r0, r1, a, ys.data(), ldy);
  simd.matmul_ref(w, r0, r1, a, yr.data(), ldy);
  gen.matmul(w, r0, r1, a, yg.data(), ldy);
  double worst_s = 0, worst_r = 0, worst_g = 0, worst_ratio = 0, err_at = 0, tol_at = 0;
  bool ok = true, untouched = true;
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t r = 0; r < rows; ++r) {
      const float* yy[3] = {&ys[t * ldy + r], &yr[t * ldy + r], &yg[t * ldy + r]};
      if (r < r0 || r >= r1) {  // outside the subrange nothing may be written
        for (auto p : yy) untouched = untouched && std::isnan(*p);
        continue;
      }
      double ref = 0, bound = 0;
      for (int64_t k = 0; k < K; ++k) {
        double xv = x[t * ldx + k];
        if (quant) xv = (double)q[t * (K / QK) + k / QK].qs[k % QK] * (double)q[t * (K / QK) + k / QK].d;
        ref += deq[r * K + k] * xv;
        bound += std::fabs(deq[r * K + k] * xv);
      }
      const double tol = rel * bound + 1e-30;
      const double es = std::fabs(*yy[0] - ref), er = std::fabs(*yy[1] - ref), eg = std::fabs(*yy[2] - ref);
      if (!(es <= tol && er <= tol && eg <= tol)) ok = false;
      const double e = std::fmax(es, std::fmax(er, eg));
      if (e / tol > worst_ratio) { worst_ratio = e / tol; err_at = e; tol_at = tol; }
      worst_s = std::fmax(worst_s, es);
      worst_r = std::fmax(worst_r, er);
      worst_g = std::fmax(worst_g, eg);
    }
  }
  char what[160];
  std::snprintf(what, sizeof what, "matmul %s%s K=%lld rows=%lld T=%lld [%lld,%lld) (simd %.3g ref %.3g generic %.3g)",
                type_name(type), x8 ? " x8" : "", (long long)K, (long long)rows, (long long)T, (long long)r0, (long long)r1,
                worst_s, worst_r, worst_g);
  report(ok, what, err_at, tol_at);
  std::snprintf(what, sizeof what, "matmul %s writes outside its row range", type_name(type));
  report(untouched, what, 0, 0);
}

static void check_matmul_family(const KernelTable& s, const KernelTable& g) {
  const int64_t float_k[] = {1, 7, 8, 9, 31, 32, 33, 64, 96, 100};
  const int64_t quant_k[] = {32, 64, 96, 160, 256};
  for (int type : kTypes) {
    const bool quant = type == GGML_Q8_0 || type == GGML_Q4_0;
    for (int i = 0; i < 40; ++i) {
      const int64_t K = quant ? quant_k[irange(0, 4)] : float_k[irange(0, 9)];
      check_matmul(s, g, type, K, irange(1, 37), irange(1, 17), 0);
    }
    check_matmul(s, g, type, 2688, 5, 9, std::ldexp(1.0, -16));   // Nano's n_embd, tile + tail
    check_matmul(s, g, type, quant ? 2688 : 2689, 3, 1, std::ldexp(1.0, -16));  // decode
    if (!quant) continue;
    for (int i = 0; i < 40; ++i) check_matmul(s, g, type, quant_k[irange(0, 4)], irange(1, 45), irange(1, 11), 0, true);
    check_matmul(s, g, type, 2688, 21, 9, std::ldexp(1.0, -16), true);
    check_matmul(s, g, type, 2688, 16, 1, std::ldexp(1.0, -16), true);
  }
  // FP8 prefill blocking (matmul.cpp): 1-4 tokens decoded in registers, then panels of 256
  // codes, blocks of 72 tokens, 2x6 tiles; K across panels with tails, T across blocks
  const int64_t fp8_k[] = {255, 256, 257, 600, 1000};
  for (int i = 0; i < 12; ++i) check_matmul(s, g, GGML_I8, fp8_k[irange(0, 4)], irange(1, 37), irange(2, 160), 0);
}

// dequant_row: exact (FP8: code * scale is one correctly rounded fp32 product); all 256 FP8 codes.
static void check_dequant(const KernelTable& s) {
  for (int type : kTypes) {
    const int64_t K = 64, rows = 6;
    std::vector<uint8_t> raw;
    std::vector<double> deq;
    std::vector<float> scale;
    int64_t row_bytes;
    make_weights(type, rows, K, raw, deq, scale, row_bytes);
    WeightMatrix w;
    w.data = raw.data(); w.type = type; w.K = K; w.rows = rows; w.row_bytes = row_bytes;
    w.scale = scale.empty() ? nullptr : scale.data(); w.scale_stride = 1;
    bool ok = true;
    std::vector<float> out(K);
    for (int64_t r = 0; r < rows; ++r) {
      s.dequant_row(w, r, out.data());
      for (int64_t k = 0; k < K; ++k) ok = ok && out[k] == (float)deq[r * K + k];
    }
    char what[64];
    std::snprintf(what, sizeof what, "dequant_row %s", type_name(type));
    report(ok, what, 0, 0);
  }
  uint8_t codes[256];
  for (int i = 0; i < 256; ++i) codes[i] = (uint8_t)i;
  const float one = 1.0f;
  WeightMatrix w;
  w.data = codes; w.type = GGML_I8; w.K = 256; w.rows = 1; w.row_bytes = 256; w.scale = &one; w.scale_stride = 0;
  float out[256];
  s.dequant_row(w, 0, out);
  bool ok = true;
  for (int i = 0; i < 256; ++i) {
    const double v = e4m3_val((uint8_t)i);
    ok = ok && (std::isnan(v) ? std::isnan(out[i]) : (double)out[i] == v && std::signbit(out[i]) == std::signbit(v));
  }
  report(ok, "dequant_row FP8 every code", 0, 0);
}

// quantize_q8: bit-exact against the spec, including ties and all-zero blocks.
static void check_quantize(const KernelTable& s) {
  const double scales[] = {0.0, 1e-3, 1.0, 1e4};
  for (int i = 0; i < 60; ++i) {
    const int64_t nb = irange(1, 9), n = nb * QK;
    const double sc = scales[irange(0, 3)];
    std::vector<float> x(n);
    for (auto& v : x) v = (float)(normal() * sc);
    x[irange(0, n - 1)] = (float)(0.5 * sc);
    std::vector<BlockQ8Act> want, got(nb);
    quantize_spec(x.data(), n, want);
    s.quantize_q8(x.data(), n, got.data());
    bool ok = true;
    for (int64_t b = 0; b < nb; ++b) {
      ok = ok && want[b].d == got[b].d && want[b].sum == got[b].sum;
      for (int j = 0; j < QK; ++j) ok = ok && want[b].qs[j] == got[b].qs[j];
    }
    report(ok, "quantize_q8 bit-exact", 0, 0);
  }
  float x[QK] = {127.0f, 0.5f, -0.5f};  // exact .5 steps round away from zero
  BlockQ8Act o;
  s.quantize_q8(x, QK, &o);
  report(o.d == 1.0f && o.qs[1] == 1 && o.qs[2] == -1, "quantize_q8 round half away from zero", 0, 0);
}

// ---- norms, conv, scan: max error <= 2e-5 * scale, as tests/test_kernels_ssm.py -----------
static const double RTOL = 2e-5;

static void check_norms(const KernelTable& s) {
  for (int i = 0; i < 60; ++i) {
    const int64_t n = irange(1, 300);
    std::vector<float> x(n), w(n), out(n);
    for (auto& v : x) v = (float)normal(3);
    for (auto& v : w) v = (float)uniform(0.5, 1.5);
    double ss = 0;
    for (auto v : x) ss += (double)v * v;
    const double inv = 1.0 / std::sqrt(ss / n + 1e-5);
    s.rmsnorm(x.data(), w.data(), n, 1e-5f, out.data());
    double err = 0, mx = 0;
    for (int64_t j = 0; j < n; ++j) {
      const double ref = x[j] * inv * w[j];
      err = std::fmax(err, std::fabs(out[j] - ref));
      mx = std::fmax(mx, std::fabs(ref));
    }
    report(err <= RTOL * (1 + mx), "rmsnorm", err, RTOL * (1 + mx));
  }
  for (int i = 0; i < 60; ++i) {
    const int64_t groups = irange(1, 4), group = irange(1, 70), n = groups * group;
    std::vector<float> y(n), z(n), w(n), out(n);
    for (auto& v : y) v = (float)normal(2);
    for (auto& v : z) v = (float)normal(2);
    for (auto& v : w) v = (float)uniform(0.5, 1.5);
    s.gated_rmsnorm(y.data(), z.data(), w.data(), n, group, 1e-5f, out.data());
    double err = 0, mx = 0;
    std::vector<double> ref(n);
    for (int64_t g0 = 0; g0 < n; g0 += group) {
      double ss = 0;
      for (int64_t j = g0; j < g0 + group; ++j) {
        ref[j] = y[j] * ((double)z[j] / (1.0 + std::exp(-(double)z[j])));
        ss += ref[j] * ref[j];
      }
      const double inv = 1.0 / std::sqrt(ss / group + 1e-5);
      for (int64_t j = g0; j < g0 + group; ++j) ref[j] *= inv * w[j];
    }
    for (int64_t j = 0; j < n; ++j) {
      err = std::fmax(err, std::fabs(out[j] - ref[j]));
      mx = std::fmax(mx, std::fabs(ref[j]));
    }
    report(err <= RTOL * (1 + mx), "gated_rmsnorm", err, RTOL * (1 + mx));
  }
}

static double silu(double v) { return v / (1.0 + std::exp(-v)); }

static void check_conv(const KernelTable& s) {
  for (int i = 0; i < 60; ++i) {
    const int64_t C = irange(1, 70), K = irange(1, 6), T = irange(1, 17), split = irange(0, T), S = K - 1;
    std::vector<float> st0(S * C), x(T * C), w(C * K), b(C);
    for (auto& v : st0) v = (float)normal();
    for (auto& v : x) v = (float)normal();
    for (auto& v : w) v = (float)normal(0.5);
    for (auto& v : b) v = (float)normal(0.1);
    // reference over [state; x]
    std::vector<double> pad((S + T) * C);
    for (int64_t j = 0; j < S * C; ++j) pad[j] = st0[j];
    for (int64_t j = 0; j < T * C; ++j) pad[S * C + j] = x[j];
    std::vector<float> st(st0), out(T * C);
    s.conv1d_silu(st.data(), x.data(), C, T, w.data(), b.data(), C, K, 0, C, out.data(), C);
    double err = 0;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = 0; c < C; ++c) {
        double acc = b[c];
        for (int64_t k = 0; k < K; ++k) acc += (double)w[c * K + k] * pad[(t + k) * C + c];
        err = std::fmax(err, std::fabs(out[t * C + c] - silu(acc)));
      }
    report(err <= RTOL * 4, "conv1d_silu", err, RTOL * 4);
    bool state_ok = true;  // the state keeps the raw last S inputs, copied
    for (int64_t j = 0; j < S * C; ++j) state_ok = state_ok && st[j] == (float)pad[T * C + j];
    report(state_ok, "conv1d_silu state", 0, 0);
    // two calls with the state carried == one call (bit for bit)
    std::vector<float> st2(st0), out2(T * C);
    s.conv1d_silu(st2.data(), x.data(), C, split, w.data(), b.data(), C, K, 0, C, out2.data(), C);
    s.conv1d_silu(st2.data(), x.data() + split * C, C, T - split, w.data(), b.data(), C, K, 0, C,
                  out2.data() + split * C, C);
    report(std::memcmp(out2.data(), out.data(), out.size() * 4) == 0 &&
               std::memcmp(st2.data(), st.data(), st.size() * 4) == 0,
           "conv1d_silu state carry", 0, 0);
  }
}

static void check_scan(const KernelTable& s) {
  const int64_t Gs[] = {1, 2, 4}, Ns[] = {1, 5, 8, 16, 24};
  for (int i = 0; i < 50; ++i) {
    const int64_t G = Gs[irange(0, 2)], nh = G * irange(1, 3), hd = irange(1, 9), N = Ns[irange(0, 4)];
    const int64_t T = irange(1, 12), split = irange(0, T);
    std::vector<float> S0(nh * hd * N), x(T * nh * hd), B(T * G * N), C(T * G * N), dt(T * nh), A(nh), D(nh);
    for (auto& v : S0) v = (float)normal();
    for (auto& v : x) v = (float)normal();
    for (auto& v : B) v = (float)normal();
    for (auto& v : C) v = (float)normal();
    for (auto& v : dt) v = (float)uniform(1e-4, 2.0);
    for (auto& v : A) v = (float)-std::exp(uniform(-1, 1.5));
    for (auto& v : D) v = (float)uniform(0.5, 1.5);
    std::vector<double> Sr(S0.begin(), S0.end()), yr(T * nh * hd);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < nh; ++h) {
        const int64_t g = h / (nh / G);
        const double d = dt[t * nh + h], da = std::exp(d * A[h]);
        for (int64_t p = 0; p < hd; ++p) {
          const double xv = x[t * nh * hd + h * hd + p];
          double acc = 0;
          for (int64_t n = 0; n < N; ++n) {
            double& st = Sr[(h * hd + p) * N + n];
            st = da * st + d * xv * B[t * G * N + g * N + n];
            acc += st * C[t * G * N + g * N + n];
          }
          yr[t * nh * hd + h * hd + p] = acc + D[h] * xv;
        }
      }
    auto run = [&](std::vector<float>& st, int64_t t0, int64_t t1, std::vector<float>& y) {
      ScanArgs a{st.data(), x.data() + t0 * nh * hd, nh * hd, B.data() + t0 * G * N, C.data() + t0 * G * N, G * N,
                 dt.data() + t0 * nh, nh, A.data(), D.data(), y.data() + t0 * nh * hd, nh * hd,
                 t1 - t0, nh, hd, N, G};
      s.ssm_scan(a, 0, nh);
    };
    std::vector<float> St(S0), y(T * nh * hd);
    run(St, 0, T, y);
    double ey = 0, my = 0, es = 0, ms = 0;
    for (size_t j = 0; j < y.size(); ++j) { ey = std::fmax(ey, std::fabs(y[j] - yr[j])); my = std::fmax(my, std::fabs(yr[j])); }
    for (size_t j = 0; j < St.size(); ++j) { es = std::fmax(es, std::fabs(St[j] - Sr[j])); ms = std::fmax(ms, std::fabs(Sr[j])); }
    report(ey <= RTOL * (1 + my), "ssm_scan y", ey, RTOL * (1 + my));
    report(es <= RTOL * (1 + ms), "ssm_scan state", es, RTOL * (1 + ms));
    std::vector<float> St2(S0), y2(T * nh * hd);
    run(St2, 0, split, y2);
    run(St2, split, T, y2);
    report(std::memcmp(y2.data(), y.data(), y.size() * 4) == 0 && std::memcmp(St2.data(), St.data(), St.size() * 4) == 0,
           "ssm_scan state carry", 0, 0);
  }
}

// ---- attention (max error <= 1e-5 * (1 + max|ref|)) and to_f16 (bit-exact RNE) ------------
// One kv head's group of rep query heads for T tokens at a time (causal), the keys cut into
// n_split ranges merged by attention_merge, as the engine runs it; the kernel and its scalar
// spec (attention_ref) both against double precision.
static void check_attention(const KernelTable& s) {
  const int64_t hds[] = {1, 4, 8, 13, 16, 24, 64, 128};
  for (int i = 0; i < 60; ++i) {
    const int64_t nkv = irange(1, 2), rep = irange(1, 16), nq = nkv * rep, hd = hds[irange(0, 7)];
    const int64_t T = irange(1, 5), n_past = irange(0, 1) ? irange(0, 40) : irange(40, 400), n = n_past + T;
    const int64_t n_split = irange(1, 4);
    const bool f16 = irange(0, 1);
    std::vector<float> q(T * nq * hd), kf(n * nkv * hd), vf(n * nkv * hd), out(T * nq * hd);
    std::vector<float> part(n_split * T * rep * hd), m(n_split * T * rep), l(n_split * T * rep),
        scratch((T * rep + hd) * kAttnKeyBlock);
    std::vector<uint16_t> kh(kf.size()), vh(vf.size());
    std::vector<double> kd(kf.size()), vd(vf.size());
    for (auto& v : q) v = (float)normal();
    for (size_t j = 0; j < kf.size(); ++j) {
      kf[j] = (float)normal(); vf[j] = (float)normal();
      kh[j] = f16_rne(kf[j]); vh[j] = f16_rne(vf[j]);
      kd[j] = f16 ? f16_val(kh[j]) : kf[j];
      vd[j] = f16 ? f16_val(vh[j]) : vf[j];
    }
    for (int spec = 0; spec < 2; ++spec) {
      for (int64_t g = 0; g < nkv; ++g) {
        for (int64_t sp = 0; sp < n_split; ++sp) {
          AttnArgs a;
          a.q = q.data() + g * rep * hd; a.ldq = nq * hd;
          a.k = f16 ? (const void*)(kh.data() + g * hd) : (const void*)(kf.data() + g * hd);
          a.v = f16 ? (const void*)(vh.data() + g * hd) : (const void*)(vf.data() + g * hd);
          a.kv_type = f16 ? GGML_F16 : GGML_F32;
          a.ld = nkv * hd; a.hd = hd; a.rep = rep; a.n_tok = T; a.n_keys = n_past + 1;
          a.k0 = sp * n / n_split; a.k1 = (sp + 1) * n / n_split;
          a.scale = 1.0f / std::sqrt((float)hd);
          if (n_split == 1) { a.out = out.data() + g * rep * hd; a.ldo = nq * hd; }
          else { a.out = part.data() + sp * T * rep * hd; a.ldo = rep * hd; }
          a.m = m.data() + sp * T * rep; a.l = l.data() + sp * T * rep;
          a.scratch = scratch.data();
          (spec ? s.attention_ref : s.attention)(a);
        }
        if (n_split > 1)
          s.attention_merge(part.data(), m.data(), l.data(), n_split, T, rep, hd, out.data() + g * rep * hd, nq * hd);
      }
      double err = 0, mx = 0;
      for (int64_t t = 0; t < T; ++t)
        for (int64_t j = 0; j < nq; ++j) {
          const int64_t g = j / rep, nk = n_past + t + 1;
          std::vector<double> p(nk);
          double pm = -INFINITY, psum = 0;
          for (int64_t u = 0; u < nk; ++u) {
            double sc = 0;
            for (int64_t d = 0; d < hd; ++d) sc += (double)q[(t * nq + j) * hd + d] * kd[u * nkv * hd + g * hd + d];
            p[u] = sc / std::sqrt((double)hd);
            pm = std::fmax(pm, p[u]);
          }
          for (auto& v : p) { v = std::exp(v - pm); psum += v; }
          for (int64_t d = 0; d < hd; ++d) {
            double o = 0;
            for (int64_t u = 0; u < nk; ++u) o += p[u] / psum * vd[u * nkv * hd + g * hd + d];
            err = std::fmax(err, std::fabs(out[(t * nq + j) * hd + d] - o));
            mx = std::fmax(mx, std::fabs(o));
          }
        }
      const char* what = spec ? (f16 ? "attention_ref f16 cache" : "attention_ref f32 cache")
                              : (f16 ? "attention f16 cache" : "attention f32 cache");
      report(err <= 1e-5 * (1 + mx), what, err, 1e-5 * (1 + mx));
    }
  }
}

static void check_to_f16(const KernelTable& s) {
  std::vector<float> x;
  for (int i = 0; i < 1000; ++i) x.push_back((float)normal());
  for (int i = 0; i < 200; ++i) x.push_back((float)normal(1e-6));   // fp16 subnormals
  for (int i = 0; i < 200; ++i) x.push_back((float)normal(3e4));    // near overflow
  const float special[] = {65504.0f, 65519.99f, 65520.0f, 1e6f, -1e-8f, 0.0f, -0.0f, INFINITY, -INFINITY,
                           std::ldexp(1.0f, -25), std::ldexp(3.0f, -26), std::ldexp(1.0f, -24)};
  for (float f : special) x.push_back(f);
  for (int i = 0; i < 64; ++i) {  // exact ties between two fp16 values (round to even)
    const float base = (float)f16_val(rand_f16(1, 29) & 0x7fff);
    x.push_back(base + std::ldexp(1.0f, std::ilogb(base) - 11));
  }
  std::vector<uint16_t> out(x.size());
  s.to_f16(x.data(), (int64_t)x.size(), out.data());
  int bad = 0;
  for (size_t j = 0; j < x.size(); ++j)
    if (out[j] != f16_rne(x[j])) {
      if (++bad <= 3) std::printf("  to_f16(%.9g) = 0x%04x, want 0x%04x\n", x[j], out[j], f16_rne(x[j]));
    }
  report(bad == 0, "to_f16 round to nearest even", bad, 0);
  float nan_in = NAN;
  uint16_t nan_out;
  s.to_f16(&nan_in, 1, &nan_out);
  report((nan_out & 0x7c00) == 0x7c00 && (nan_out & 0x3ff) != 0, "to_f16 NaN stays NaN", 0, 0);
}

int main() {
  KernelTable gen, simd;
  nemocpu::generic::fill_kernel_table(gen);
  nemocpu::HARNESS_SIMD::fill_kernel_table(simd);
  std::printf("checking variant %s (reference tables: its matmul_ref, %s, double precision)\n", simd.variant,
              gen.variant);
  for (const KernelTable* t : {&simd, &gen}) {
    if (!t->matmul || !t->matmul_ref || !t->quantize_q8 || !t->dequant_row || !t->rmsnorm || !t->gated_rmsnorm ||
        !t->conv1d_silu || !t->ssm_scan || !t->attention || !t->attention_ref || !t->attention_merge ||
        !t->to_f16) {
      std::printf("FAIL %s: KernelTable has an empty entry\n", t->variant);
      return 1;
    }
  }
  check_matmul_family(simd, gen);
  check_dequant(simd);
  check_quantize(simd);
  check_norms(simd);
  check_conv(simd);
  check_scan(simd);
  check_attention(simd);
  check_to_f16(simd);
  std::printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail == 0 ? 0 : 1;
}
