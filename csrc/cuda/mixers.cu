// The non-matmul work of the forward pass on the GPU: embedding, RMSNorms, the Mamba-2 conv
// and selective scan, attention over the KV cache (split-K for decode), the MoE router and
// the weighted combine. Arithmetic in fp32 as on the CPU (csrc/kernels/*.cpp is the spec).
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cmath>
#include <stdexcept>

#include "cuda/check.h"
#include "cuda/kernels.cuh"
#include "cuda/launch.cuh"
#include "nemocpu/ggml_types.h"

namespace nemocpu {
namespace cuda {

namespace {

// Every kernel here starts with pdl_trigger(): the matrix product that usually follows is a
// programmatic dependent launch (launch.cuh) and may start requesting its weights meanwhile.
// (These kernels themselves are plain launches: making them programmatic dependents too, each
// waiting first thing, measured 364 vs 379 tok/s for the FP8 decode.)
constexpr int kThreads = 256;

unsigned blocks_for(int64_t n, int threads = kThreads) { return (unsigned)((n + threads - 1) / threads); }

__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }
__device__ __forceinline__ float softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

// One element of a repacked weight (embedding lookup).
__device__ float weight_at(const GpuWeight& w, int64_t row, int64_t k) {
  const uint8_t* r = w.q + row * w.row_bytes;
  switch (w.type) {
    case GGML_F32: return reinterpret_cast<const float*>(r)[k];
    case GGML_F16: return __half2float(reinterpret_cast<const __half*>(r)[k]);
    case GGML_BF16: return __uint_as_float((uint32_t)reinterpret_cast<const uint16_t*>(r)[k] << 16);
    case GGML_I8: {
      __nv_fp8_e4m3 v;
      v.__x = r[k];
      return float(v) * w.s[row];
    }
    case GGML_Q8_0:
      return (float)(int8_t)r[k] * __half2float(__ushort_as_half(w.d[row * (w.Kp / QK) + k / QK]));
    default: {  // Q4_0
      const int64_t b = k / QK, j = k % QK;
      const uint8_t byte = r[b * 16 + (j & 15)];
      const int nib = j < 16 ? (byte & 0xf) : (byte >> 4);
      return (float)(nib - 8) * __half2float(__ushort_as_half(w.d[row * (w.Kp / QK) + b]));
    }
  }
}

__global__ void embed_kernel(GpuWeight w, const int32_t* tokens, float* x, int64_t E) {
  pdl_trigger();
  const int64_t t = blockIdx.x;
  const int64_t row = tokens[t];
  for (int64_t k = threadIdx.x; k < E; k += blockDim.x) x[t * E + k] = weight_at(w, row, k);
}

__device__ float block_sum(float v) {
  __shared__ float red[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float s = 0.0f;
  for (int i = 0; i < (int)(blockDim.x + 31) / 32; ++i) s += red[i];
  return s;
}

// x += y (the residual add of the previous block, when y is given), then out = rmsnorm(x).
// One block per row. Rows of up to kNormThreads * kNormPer values are held in registers, all
// their loads issued at once: in decode this kernel is a chain of dependent memory latencies,
// and a strided loop of 11 load-use steps per thread took ~9 us for a 2688-vector.
constexpr int kNormThreads = 512, kNormPer = 8;

__global__ void __launch_bounds__(kNormThreads) rmsnorm_kernel(float* __restrict__ x, const float* __restrict__ y,
                                                               const float* __restrict__ w, int64_t n, float eps,
                                                               float* __restrict__ out) {
  pdl_trigger();
  float* xr = x + blockIdx.x * n;
  const float* yr = y ? y + blockIdx.x * n : nullptr;
  float* orow = out + blockIdx.x * n;
  float ss = 0.0f;
  if (n <= kNormThreads * kNormPer) {
    float v[kNormPer];
#pragma unroll
    for (int j = 0; j < kNormPer; ++j) {
      const int64_t i = threadIdx.x + j * kNormThreads;
      v[j] = i < n ? xr[i] + (yr ? yr[i] : 0.0f) : 0.0f;
    }
#pragma unroll
    for (int j = 0; j < kNormPer; ++j) {
      const int64_t i = threadIdx.x + j * kNormThreads;
      if (yr && i < n) xr[i] = v[j];
      ss += v[j] * v[j];
    }
    const float inv = rsqrtf(block_sum(ss) / (float)n + eps);
#pragma unroll
    for (int j = 0; j < kNormPer; ++j) {
      const int64_t i = threadIdx.x + j * kNormThreads;
      if (i < n) orow[i] = v[j] * inv * w[i];
    }
    return;
  }
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    if (yr) xr[i] += yr[i];
    ss += xr[i] * xr[i];
  }
  const float inv = rsqrtf(block_sum(ss) / (float)n + eps);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) orow[i] = xr[i] * inv * w[i];
}

// ---- Mamba-2 -------------------------------------------------------------------------
// Causal depthwise conv + SiLU: one thread per (channel, run of kConvTokens tokens); a token
// reads the K-1 inputs before it from u or, before the chunk, from the conv state.
constexpr int kConvTokens = 32;

__device__ __forceinline__ float conv_input(const MambaArgs& a, int64_t tau, int64_t c, int64_t di) {
  const int64_t S = a.K - 1;
  return tau < 0 ? a.conv_state[(S + tau) * a.C + c] : a.u[tau * a.ldu + di + c];
}

// The state keeps the last K-1 pre-conv inputs. Rows are shifted in ascending order, so the
// in-place move (row j <- row j + T) never reads a row it already wrote.
__device__ __forceinline__ void update_conv_state(const MambaArgs& a, int64_t c, int64_t di) {
  const int64_t S = a.K - 1;
  for (int64_t j = 0; j < S; ++j) a.conv_state[j * a.C + c] = conv_input(a, a.T - S + j, c, di);
}

__global__ void conv_kernel(MambaArgs a) {
  pdl_trigger();
  const int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= a.C) return;
  const int64_t S = a.K - 1, di = a.nh * a.hd;
  float w[16];
  for (int64_t k = 0; k < a.K; ++k) w[k] = a.conv_w[c * a.K + k];
  const float b = a.conv_b[c];
  const int64_t t1 = min(a.T, (int64_t)(blockIdx.y + 1) * kConvTokens);
  for (int64_t t = (int64_t)blockIdx.y * kConvTokens; t < t1; ++t) {
    float acc = b;
    for (int64_t k = 0; k < a.K; ++k) acc += w[k] * conv_input(a, t - S + k, c, di);
    a.xbc[t * a.C + c] = silu(acc);
  }
  if (gridDim.y == 1) update_conv_state(a, c, di);  // this thread was the channel's only reader
}

// After every read of the old state (one more kernel when several threads read a channel).
__global__ void conv_state_kernel(MambaArgs a) {
  pdl_trigger();
  const int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (c < a.C) update_conv_state(a, c, a.nh * a.hd);
}

constexpr int kMaxStatePerLane = 8;  // d_state <= 256
constexpr int kScanChunk = 16;       // tokens staged in shared memory at a time

// Selective scan, one warp per (head, channel p), the N state values in registers across all
// T tokens; the warps of a block belong to one head (launch: warps per block divides hd).
// Every kScanChunk tokens, the block stages what its warps share (B and C of the head's group,
// dt and exp(dt A) of the head) and each warp's x in shared memory with coalesced loads, so
// the token loop reads shared memory only (the per-token global loads were a latency chain:
// 1.3 us per token, 1.4 ms per 1024-token layer).
__global__ void __launch_bounds__(kThreads) scan_kernel(MambaArgs a) {
  pdl_trigger();
  __shared__ float sB[kScanChunk][kMaxStatePerLane * 32], sC[kScanChunk][kMaxStatePerLane * 32];
  __shared__ float sdt[kScanChunk], sda[kScanChunk], sx[kScanChunk][kThreads / 32];
  const int nw = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t wid = (int64_t)blockIdx.x * nw + warp;  // < nh * hd (the grid is exact)
  const int64_t h = wid / a.hd, p = wid % a.hd, g = h / (a.nh / a.G), di = a.nh * a.hd, N = a.N;
  const int64_t p0 = p - warp;  // first channel of the block
  float st[kMaxStatePerLane];
  float* S = a.ssm_state + wid * N;
#pragma unroll
  for (int j = 0; j < kMaxStatePerLane; ++j) st[j] = lane + 32 * j < N ? S[lane + 32 * j] : 0.0f;
  const float A = a.A[h], D = a.D[h], bias = a.dt_bias[h];
  for (int64_t t0 = 0; t0 < a.T; t0 += kScanChunk) {
    const int tc = (int)min((int64_t)kScanChunk, a.T - t0);
    __syncthreads();  // the previous chunk is consumed
    for (int i = threadIdx.x; i < tc * N; i += blockDim.x) {
      const int64_t t = t0 + i / N, n = i % N;
      const float* row = a.xbc + t * a.C + di + g * N;
      sB[i / N][n] = row[n];
      sC[i / N][n] = row[a.G * N + n];
    }
    for (int i = threadIdx.x; i < tc; i += blockDim.x) {
      float dt = softplus(a.u[(t0 + i) * a.ldu + di + a.C + h] + bias);
      if (a.dt_floor > 0.0f) dt = fmaxf(dt, a.dt_floor);
      sdt[i] = dt;
      sda[i] = expf(dt * A);
    }
    for (int i = threadIdx.x; i < tc * nw; i += blockDim.x)
      sx[i / nw][i % nw] = a.xbc[(t0 + i / nw) * a.C + h * a.hd + p0 + i % nw];
    __syncthreads();
    for (int tt = 0; tt < tc; ++tt) {
      const float da = sda[tt], xv = sx[tt][warp], xdt = xv * sdt[tt];
      float acc = 0.0f;
#pragma unroll
      for (int j = 0; j < kMaxStatePerLane; ++j) {
        const int n = lane + 32 * j;
        if (n < N) {
          st[j] = st[j] * da + xdt * sB[tt][n];
          acc += st[j] * sC[tt][n];
        }
      }
      for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
      if (lane == 0) a.y[(t0 + tt) * di + h * a.hd + p] = acc + D * xv;
    }
  }
#pragma unroll
  for (int j = 0; j < kMaxStatePerLane; ++j)
    if (lane + 32 * j < N) S[lane + 32 * j] = st[j];
}

__global__ void gated_rmsnorm_kernel(const float* y, const float* u, int64_t ldu, const float* w, int64_t di,
                                     int64_t group, float eps, float* out) {
  pdl_trigger();
  const int64_t t = blockIdx.x, g0 = (int64_t)blockIdx.y * group;
  float ss = 0.0f;
  for (int64_t i = g0 + threadIdx.x; i < g0 + group; i += blockDim.x) {
    const float v = y[t * di + i] * silu(u[t * ldu + i]);
    ss += v * v;
  }
  const float inv = rsqrtf(block_sum(ss) / (float)group + eps);
  for (int64_t i = g0 + threadIdx.x; i < g0 + group; i += blockDim.x)
    out[t * di + i] = y[t * di + i] * silu(u[t * ldu + i]) * inv * w[i];
}

// ---- attention -----------------------------------------------------------------------
__global__ void kv_write_kernel(const float* k, const float* v, int64_t T, int64_t kvw, const int32_t* n_past,
                                void* kc, void* vc, bool f16) {
  pdl_trigger();
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= T * kvw) return;
  const int64_t t = i / kvw, j = i % kvw, at = (*n_past + t) * kvw + j;
  if (f16) {
    static_cast<__half*>(kc)[at] = __float2half_rn(k[i]);
    static_cast<__half*>(vc)[at] = __float2half_rn(v[i]);
  } else {
    static_cast<float*>(kc)[at] = k[i];
    static_cast<float*>(vc)[at] = v[i];
  }
}

constexpr int kKeyTile = 32;

size_t attn_smem_floats(int64_t rep, int64_t hd) {
  return rep * hd * 2 + kKeyTile * (hd + 1) + kKeyTile * hd + rep * kKeyTile + 3 * rep;
}

// Block (token t, kv head g, split sp): the rep query heads of group g against keys
// [k0, k1) of the causal range, online softmax in fp32. splits == 1 writes the output;
// otherwise (max, sum, unnormalized acc) per head go to `part` for attn_combine_kernel.
template <bool F16>
__global__ void attn_kernel(AttnArgs a) {
  pdl_trigger();
  extern __shared__ float sm[];
  const int64_t hd = a.hd, rep = a.nq / a.nkv, kvw = a.nkv * hd;
  float* qs = sm;                              // [rep][hd]
  float* acc = qs + rep * hd;                  // [rep][hd]
  float* ks = acc + rep * hd;                  // [32][hd + 1]
  float* vs = ks + kKeyTile * (hd + 1);        // [32][hd]
  float* ps = vs + kKeyTile * hd;              // [rep][32]
  float* mrow = ps + rep * kKeyTile;           // [rep]
  float* lrow = mrow + rep;
  float* corr = lrow + rep;
  const int64_t t = blockIdx.x, g = blockIdx.y, sp = blockIdx.z;
  const int64_t n_keys = (int64_t)*a.n_past + t + 1;
  const int64_t chunk = (n_keys + a.splits - 1) / a.splits;
  const int64_t k0 = sp * chunk, k1 = min(n_keys, k0 + chunk);
  const float scale = rsqrtf((float)hd);
  for (int64_t i = threadIdx.x; i < rep * hd; i += blockDim.x) {
    qs[i] = a.q[t * a.nq * hd + g * rep * hd + i] * scale;
    acc[i] = 0.0f;
  }
  for (int64_t h = threadIdx.x; h < rep; h += blockDim.x) {
    mrow[h] = -INFINITY;
    lrow[h] = 0.0f;
  }
  __syncthreads();
  for (int64_t kt = k0; kt < k1; kt += kKeyTile) {
    const int64_t nk = min((int64_t)kKeyTile, k1 - kt);
    for (int64_t i = threadIdx.x; i < nk * hd; i += blockDim.x) {
      const int64_t j = i / hd, d = i % hd, at = (kt + j) * kvw + g * hd + d;
      if (F16) {
        ks[j * (hd + 1) + d] = __half2float(static_cast<const __half*>(a.kc)[at]);
        vs[j * hd + d] = __half2float(static_cast<const __half*>(a.vc)[at]);
      } else {
        ks[j * (hd + 1) + d] = static_cast<const float*>(a.kc)[at];
        vs[j * hd + d] = static_cast<const float*>(a.vc)[at];
      }
    }
    __syncthreads();
    for (int64_t i = threadIdx.x; i < rep * kKeyTile; i += blockDim.x) {
      const int64_t h = i / kKeyTile, j = i % kKeyTile;
      float s = -INFINITY;
      if (j < nk) {
        s = 0.0f;
        for (int64_t d = 0; d < hd; ++d) s += qs[h * hd + d] * ks[j * (hd + 1) + d];
      }
      ps[i] = s;
    }
    __syncthreads();
    for (int64_t h = threadIdx.x; h < rep; h += blockDim.x) {
      float mx = mrow[h];
      for (int64_t j = 0; j < nk; ++j) mx = fmaxf(mx, ps[h * kKeyTile + j]);
      const float c = expf(mrow[h] - mx);
      float sum = 0.0f;
      for (int64_t j = 0; j < kKeyTile; ++j) {
        const float e = j < nk ? expf(ps[h * kKeyTile + j] - mx) : 0.0f;
        ps[h * kKeyTile + j] = e;
        sum += e;
      }
      lrow[h] = lrow[h] * c + sum;
      mrow[h] = mx;
      corr[h] = c;
    }
    __syncthreads();
    for (int64_t i = threadIdx.x; i < rep * hd; i += blockDim.x) {
      const int64_t h = i / hd, d = i % hd;
      float v = acc[i] * corr[h];
      for (int64_t j = 0; j < nk; ++j) v += ps[h * kKeyTile + j] * vs[j * hd + d];
      acc[i] = v;
    }
    __syncthreads();
  }
  for (int64_t i = threadIdx.x; i < rep * hd; i += blockDim.x) {
    const int64_t h = i / hd, d = i % hd, head = g * rep + h;
    if (a.splits == 1) {
      a.out[t * a.nq * hd + head * hd + d] = acc[i] / lrow[h];
    } else {
      float* part = a.part + ((t * a.nq + head) * a.splits + sp) * (hd + 2);
      if (d == 0) {
        part[0] = mrow[h];
        part[1] = lrow[h];
      }
      part[2 + d] = acc[i];
    }
  }
}

__global__ void attn_combine_kernel(AttnArgs a) {
  pdl_trigger();
  const int64_t t = blockIdx.x, head = blockIdx.y, hd = a.hd;
  const float* part = a.part + (t * a.nq + head) * a.splits * (hd + 2);
  float M = -INFINITY;
  for (int s = 0; s < a.splits; ++s) M = fmaxf(M, part[s * (hd + 2)]);
  float L = 0.0f;
  for (int s = 0; s < a.splits; ++s) L += part[s * (hd + 2) + 1] * expf(part[s * (hd + 2)] - M);
  for (int64_t d = threadIdx.x; d < hd; d += blockDim.x) {
    float o = 0.0f;
    for (int s = 0; s < a.splits; ++s) o += part[s * (hd + 2) + 2 + d] * expf(part[s * (hd + 2)] - M);
    a.out[t * a.nq * hd + head * hd + d] = o / L;
  }
}

// ---- MoE -----------------------------------------------------------------------------
// "a ranks before b": larger score first, lower index on ties (as csrc/model/router.cpp).
__device__ __forceinline__ bool before(float va, int ia, float vb, int ib) {
  return va > vb || (va == vb && ia < ib);
}

// One block per token, one thread per expert. The slot of expert e is its rank among the
// selection scores (larger first, lower index on ties, as csrc/model/router.cpp): the experts of
// rank < k are the top k in order, each thread counting with E comparisons, all in parallel (a
// single warp doing k rounds of arg-max was a chain of ~1500 dependent instructions: 8 us).
__global__ void route_kernel(RouterArgs a) {
  pdl_trigger();
  extern __shared__ float rs[];
  const int E = a.n_expert, e = threadIdx.x;
  float* s = rs;                                // sigmoid scores [E]
  float* sel = rs + E;                          // selection scores [E]
  int* pick = reinterpret_cast<int*>(sel + E);  // expert of each slot [k]
  const int64_t t = blockIdx.x;
  if (e < E) {
    const float sg = 1.0f / (1.0f + expf(-a.logits[t * E + e]));
    float v = sg + (a.bias ? a.bias[e] : 0.0f);
    if (isnan(v)) v = -INFINITY;  // rank broken scores last (router.cpp)
    s[e] = sg;
    sel[e] = v;
  }
  __syncthreads();
  if (a.n_group > 1 && threadIdx.x == 0) {
    // Group score = sum of its top-2 selection scores; keep the n_group_used best groups.
    const int gs = E / a.n_group;
    float gscore[64];
    for (int g = 0; g < a.n_group; ++g) {
      float b1 = -INFINITY, b2 = -INFINITY;
      for (int e = g * gs; e < (g + 1) * gs; ++e) {
        const float v = sel[e];
        if (v > b1) { b2 = b1; b1 = v; } else if (v > b2) { b2 = v; }
      }
      gscore[g] = gs >= 2 ? b1 + b2 : b1;
    }
    bool keep[64];
    for (int g = 0; g < a.n_group; ++g) keep[g] = false;
    for (int r = 0; r < a.n_group_used; ++r) {
      int best = -1;
      for (int g = 0; g < a.n_group; ++g)
        if (!keep[g] && (best < 0 || before(gscore[g], g, gscore[best], best))) best = g;
      keep[best] = true;
    }
    for (int g = 0; g < a.n_group; ++g)
      if (!keep[g])
        for (int e = g * gs; e < (g + 1) * gs; ++e) sel[e] = -INFINITY;
  }
  __syncthreads();
  int rank = E;
  if (e < E) {
    const float v = sel[e];
    rank = 0;
    for (int o = 0; o < E; ++o) rank += before(sel[o], o, v, e);
    if (rank < a.k) pick[rank] = e;
  }
  __syncthreads();
  if (rank < a.k) {
    float sum = 0.0f;  // in slot order, as the CPU router
    for (int r = 0; r < a.k; ++r) sum += s[pick[r]];
    float w = s[e];
    if (a.norm) w /= (sum + 1e-20f);
    a.idx[t * a.k + rank] = e;
    a.wt[t * a.k + rank] = w * a.scale;
  }
}

__global__ void moe_combine_kernel(const float* ye, const float* shared, const float* wt, const int32_t* row_of,
                                   int64_t T, int k, int64_t E, float* out) {
  pdl_trigger();
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= T * E) return;
  const int64_t t = i / E, c = i % E;
  float v = shared ? shared[i] : 0.0f;
  for (int j = 0; j < k; ++j) {
    const int64_t row = row_of ? row_of[t * k + j] : t * k + j;
    v += wt[t * k + j] * ye[row * E + c];
  }
  out[i] = v;
}

__global__ void gather_kernel(const float* x, int64_t ld, const int32_t* src_row, int64_t n, float* out) {
  pdl_trigger();
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n * ld) return;
  out[i] = x[(int64_t)src_row[i / ld] * ld + i % ld];
}

__global__ void add_scalar_kernel(int32_t* p, int32_t v) { *p += v; }

}  // namespace

void embed(const GpuWeight& w, const int32_t* tokens, int64_t T, float* x, int64_t E, cudaStream_t s) {
  embed_kernel<<<(unsigned)T, kThreads, 0, s>>>(w, tokens, x, E);
  NEMOCPU_CUDA_CHECK(cudaGetLastError());
}

void add_rmsnorm(float* x, const float* y, const float* w, int64_t T, int64_t n, float eps, float* out,
                 cudaStream_t s) {
  rmsnorm_kernel<<<(unsigned)T, kNormThreads, 0, s>>>(x, y, w, n, eps, out);
  NEMOCPU_CUDA_CHECK(cudaGetLastError());
}

void mamba_conv(const MambaArgs& a, cudaStream_t s) {
  if (a.K > 16) throw std::invalid_argument("CUDA: ssm_conv_kernel above 16 is not supported");
  const unsigned runs = (unsigned)((a.T + kConvTokens - 1) / kConvTokens);
  conv_kernel<<<dim3(blocks_for(a.C, 128), runs), 128, 0, s>>>(a);
  NEMOCPU_CUDA_CHECK(cudaGetLastError());
  if (runs > 1) {
    conv_state_kernel<<<blocks_for(a.C, 128), 128, 0, s>>>(a);
    NEMOCPU_CUDA_CHECK(cudaGetLastError());
  }
}

void mamba_scan(const MambaArgs& a, cudaStream_t s) {
  if (a.N > 32 * kMaxStatePerLane) throw std::invalid_argument("CUDA: ssm_d_state above 256 is not supported");
  int nw = kThreads / 32;  // warps per block: a power of two dividing hd (one head per block)
  while (a.hd % nw) nw /= 2;
  scan_kernel<<<(unsigned)(a.nh * a.hd / nw), nw * 32, 0, s>>>(a);
  NEMOCPU_CUDA_CHECK(cudaGetLastError());
}

void gated_rmsnorm(const float* y, const float* u, int64_t ldu, const float* w, int64_t T, int64_t di, int64_t group,
                   float eps, float* out, cudaStream_t s) {
  gated_rmsnorm_kernel<<<dim3((unsigned)T, (unsigned)(di / group)), kThreads, 0, s>>>(y, u, ldu, w, di, group, eps, out);
  NEMOCPU_CUDA_CHECK(cudaGetLastError());
}

void kv_write(const float* k, const float* v, int64_t T, int64_t kvw, const int32_t* n_past, void* kc, void* vc,
              bool f16, cudaStream_t s) {
  kv_write_kernel<<<blocks_for(T * kvw), kThreads, 0, s>>>(k, v, T, kvw, n_past, kc, vc, f16);
  NEMOCPU_CUDA_CHECK(cudaGetLastError());
}

size_t attention_part_floats(int64_t T, int64_t nq, int64_t hd, int splits) {
  return splits > 1 ? (size_t)(T * nq * splits * (hd + 2)) : 0;
}

void attention(const AttnArgs& a, cudaStream_t s) {
  const int64_t rep = a.nq / a.nkv;
  const size_t smem = attn_smem_floats(rep, a.hd) * sizeof(float);
  static size_t raised[2] = {48 * 1024, 48 * 1024};
  auto kernel = a.f16 ? attn_kernel<true> : attn_kernel<false>;
  if (smem > raised[a.f16]) {
    NEMOCPU_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    raised[a.f16] = smem;
  }
  kernel<<<dim3((unsigned)a.T, (unsigned)a.nkv, (unsigned)a.splits), 128, smem, s>>>(a);
  NEMOCPU_CUDA_CHECK(cudaGetLastError());
  if (a.splits > 1) {
    attn_combine_kernel<<<dim3((unsigned)a.T, (unsigned)a.nq), 128, 0, s>>>(a);
    NEMOCPU_CUDA_CHECK(cudaGetLastError());
  }
}

void route(const RouterArgs& a, cudaStream_t s) {
  if (a.n_expert > 32 * 32 || a.n_group > 64)
    throw std::invalid_argument("CUDA router: at most 1024 experts in at most 64 groups");
  route_kernel<<<(unsigned)a.T, (a.n_expert + 31) / 32 * 32, (2 * a.n_expert + a.k) * sizeof(float), s>>>(a);
  NEMOCPU_CUDA_CHECK(cudaGetLastError());
}

void moe_combine(const float* ye, const float* shared, const float* wt, const int32_t* row_of, int64_t T, int k,
                 int64_t E, float* out, cudaStream_t s) {
  moe_combine_kernel<<<blocks_for(T * E), kThreads, 0, s>>>(ye, shared, wt, row_of, T, k, E, out);
  NEMOCPU_CUDA_CHECK(cudaGetLastError());
}

void gather_rows(const float* x, int64_t ld, const int32_t* src_row, int64_t n, float* out, cudaStream_t s) {
  if (n <= 0) return;
  gather_kernel<<<blocks_for(n * ld), kThreads, 0, s>>>(x, ld, src_row, n, out);
  NEMOCPU_CUDA_CHECK(cudaGetLastError());
}

void add_scalar_i32(int32_t* p, int32_t v, cudaStream_t s) {
  add_scalar_kernel<<<1, 1, 0, s>>>(p, v);
  NEMOCPU_CUDA_CHECK(cudaGetLastError());
}

}  // namespace cuda
}  // namespace nemocpu
