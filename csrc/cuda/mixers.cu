// The non-matmul work of the forward pass on the GPU: embedding, RMSNorms, the Mamba-2 conv
// and selective scan, attention over the KV cache (split-K for decode), the MoE router and
// the weighted combine. Arithmetic in fp32 as on the CPU (csrc/kernels/*.cpp is the spec).
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cmath>
#include <stdexcept>

#include "cuda/check.h"
#include "cuda/device_math.cuh"
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

// grid (tokens, slices of kThreads values): one value per thread (one block per token, a strided
// loop, took ~6 us at the start of every decode step).
__global__ void embed_kernel(GpuWeight w, const int32_t* tokens, float* x, int64_t E) {
  pdl_trigger();
  const int64_t t = blockIdx.x, k = (int64_t)blockIdx.y * blockDim.x + threadIdx.x;
  if (k < E) x[t * E + k] = weight_at(w, tokens[t], k);
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

// "The last block to finish does the rest" (split-K combine, the scan's gated norm): every
// thread calls this after its writes; it returns true, in every thread, in the block that
// arrives last at `count` (one of `blocks`), and that block resets the counter for the next
// launch or graph replay (zero it once when allocating). The last block reads what the others
// wrote through L2 (__ldcg).
__device__ bool last_block_to_arrive(int32_t* count, int blocks) {
  __shared__ bool last;
  __threadfence();  // this thread's writes are visible device-wide before the block is counted
  __syncthreads();
  if (threadIdx.x == 0) {
    last = atomicAdd(count, 1) == blocks - 1;
    if (last) {
      atomicExch(count, 0);  // every block has arrived
      __threadfence();
    }
  }
  __syncthreads();
  return last;
}

// The head quad v reduced with op over the 8 lanes of an octet (xor butterfly, offsets 1, 2, 4;
// whole warps call it); the octet's first lane stores the result at dst (16-byte aligned).
struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct AddOp {
  __device__ float operator()(float a, float b) const { return a + b; }
};
template <class Op>
__device__ __forceinline__ void octet_reduce_store(float (&v)[4], Op op, bool first, float* dst) {
#pragma unroll
  for (int h = 0; h < 4; ++h)
#pragma unroll
    for (int off = 1; off < 8; off <<= 1) v[h] = op(v[h], __shfl_xor_sync(0xffffffffu, v[h], off));
  if (first) *reinterpret_cast<float4*>(dst) = make_float4(v[0], v[1], v[2], v[3]);
}

// m = max(m, w) and m += w, per component of a head quad.
__device__ __forceinline__ void max4(float (&m)[4], const float4& w) {
  m[0] = fmaxf(m[0], w.x);
  m[1] = fmaxf(m[1], w.y);
  m[2] = fmaxf(m[2], w.z);
  m[3] = fmaxf(m[3], w.w);
}
__device__ __forceinline__ void add4(float (&m)[4], const float4& w) {
  m[0] += w.x;
  m[1] += w.y;
  m[2] += w.z;
  m[3] += w.w;
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

// dt of head h at token t: softplus(raw + dt_bias), then the floor when one applies (both scans).
__device__ __forceinline__ float mamba_dt(const MambaArgs& a, int64_t t, int64_t h) {
  const float dt = softplus(a.u[t * a.ldu + a.nh * a.hd + a.C + h] + a.dt_bias[h]);
  return a.dt_floor > 0.0f ? fmaxf(dt, a.dt_floor) : dt;
}

constexpr int kMaxStatePerLane = 8;  // d_state <= 256
constexpr int kScanChunk = 16;       // tokens staged in shared memory at a time

// The gated values and the norm weights of up to kGatedPer elements per thread stay in
// registers across the block sum (one round of loads instead of two, all issued at once);
// larger groups loop as well, reloading. y is read through L2 (__ldcg): in the scan's fused
// form other blocks wrote it during this launch.
constexpr int kGatedPer = 4;
__device__ void gated_norm_group(const float* y, const float* u, int64_t ldu, const float* w, int64_t di, int64_t t,
                                 int64_t g0, int64_t group, float eps, float* out) {
  const int64_t g1 = g0 + group;
  float v[kGatedPer], wv[kGatedPer];
  float ss = 0.0f;
#pragma unroll
  for (int r = 0; r < kGatedPer; ++r) {
    const int64_t i = g0 + threadIdx.x + r * (int64_t)blockDim.x;
    v[r] = i < g1 ? __ldcg(y + t * di + i) * silu(u[t * ldu + i]) : 0.0f;
    wv[r] = i < g1 ? w[i] : 0.0f;
    ss += v[r] * v[r];
  }
  for (int64_t i = g0 + threadIdx.x + kGatedPer * (int64_t)blockDim.x; i < g1; i += blockDim.x) {
    const float x = __ldcg(y + t * di + i) * silu(u[t * ldu + i]);
    ss += x * x;
  }
  const float inv = rsqrtf(block_sum(ss) / (float)group + eps);
#pragma unroll
  for (int r = 0; r < kGatedPer; ++r) {
    const int64_t i = g0 + threadIdx.x + r * (int64_t)blockDim.x;
    if (i < g1) out[t * di + i] = v[r] * inv * wv[r];
  }
  for (int64_t i = g0 + threadIdx.x + kGatedPer * (int64_t)blockDim.x; i < g1; i += blockDim.x)
    out[t * di + i] = __ldcg(y + t * di + i) * silu(u[t * ldu + i]) * inv * w[i];
}

__global__ void gated_rmsnorm_kernel(const float* y, const float* u, int64_t ldu, const float* w, int64_t di,
                                     int64_t group, float eps, float* out) {
  pdl_trigger();
  gated_norm_group(y, u, ldu, w, di, blockIdx.x, (int64_t)blockIdx.y * group, group, eps, out);
}

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
  const float A = a.A[h], D = a.D[h];
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
      const float dt = mamba_dt(a, t0 + i, h);
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
  // one token: the group's last block to finish runs its gated RMSNorm
  if (a.norm_out && last_block_to_arrive(a.group_count + g, (int)(gridDim.x / a.G)))
    gated_norm_group(a.y, a.u, a.ldu, a.norm_w, di, 0, g * (di / a.G), di / a.G, a.norm_eps, a.norm_out);
}

// ---- Mamba-2 prefill: the chunked (SSD) form ----------------------------------------------
// The scan above walks the tokens one after another: 0.74 ms per 1024-token layer of the 30B
// model, a tenth of the prefill. The state-space-duality form (Mamba-2, "ssd_minimal") cuts the
// tokens into chunks of kSsdChunk. With a_t = dt_t A and cum_t its running sum within a chunk:
//   y_t   = sum_{s <= t} (C_t . B_s) e^(cum_t - cum_s) dt_s x_s   (within the chunk)
//         + e^(cum_t) C_t . S_in                                  (the state before the chunk)
//         + D x_t
//   S_out = e^(cum_last) S_in + sum_s e^(cum_last - cum_s) dt_s x_s B_s^T
// Three launches: every (chunk, head) at once computes the first sum and its chunk's state
// increment from a zero state (ssd_chunk_kernel); one thread per state value walks the chunks,
// leaving each chunk's S_in and the final state (ssd_state_kernel); every (chunk, head) adds
// its state term (ssd_out_kernel). A < 0, so every exponent is <= 0.
constexpr int kSsdChunk = 32;  // one warp's lanes: the running sums are a warp scan
constexpr int64_t kSsdMinTokens = 64;
// Register tiles (the SIMT products were shared-memory bound at one product per two loads):
// kSsdWarps warps, each over kSsdRows rows of a chunk (tokens or channels) and 32-lane columns.
constexpr int kSsdWarps = kThreads / 32, kSsdRows = kSsdChunk / kSsdWarps, kSsdCols = 4, kSsdOutCols = 2;
static_assert(kSsdWarps * kSsdRows == kSsdChunk, "the warps' rows cover a chunk");

// acc += a b^T: one step of a register tile's product.
template <int R, int C>
__device__ __forceinline__ void rank1_update(float (&acc)[R][C], const float (&a)[R], const float (&b)[C]) {
#pragma unroll
  for (int i = 0; i < R; ++i)
#pragma unroll
    for (int j = 0; j < C; ++j) acc[i][j] += a[i] * b[j];
}

struct SsdScratch {
  float* state;  // [chunks][nh][hd][N]: the chunk's increment, then the state entering it
  float* cum;    // [T][nh] running sums of dt A within each chunk
  float* decay;  // [chunks][nh] e^(cum_last)
};
__host__ __device__ inline SsdScratch ssd_parts(float* base, int64_t T, int64_t nh, int64_t hd, int64_t N) {
  const int64_t chunks = (T + kSsdChunk - 1) / kSsdChunk;
  SsdScratch p;
  p.state = base;
  p.cum = base + chunks * nh * hd * N;
  p.decay = p.cum + T * nh;
  return p;
}

size_t ssd_chunk_smem(int64_t hd, int64_t N) {
  return ((size_t)2 * kSsdChunk * (N + 1) + kSsdChunk * hd + kSsdChunk * kSsdChunk + 3 * kSsdChunk) * sizeof(float);
}
size_t ssd_out_smem(int64_t hd, int64_t N) { return ((size_t)(kSsdChunk + hd) * (N + 1) + kSsdChunk) * sizeof(float); }

// grid (chunks, nh). Rows of B and C are padded to N + 1 floats: lanes reading the same n of
// different rows hit different banks.
__global__ void __launch_bounds__(kThreads) ssd_chunk_kernel(MambaArgs a) {
  pdl_trigger();
  extern __shared__ float ssd_sm[];
  constexpr int L = kSsdChunk;
  const int N = (int)a.N, hd = (int)a.hd, Np = N + 1;
  float* sB = ssd_sm;           // [L][N + 1]
  float* sC = sB + L * Np;      // [L][N + 1]
  float* sx = sC + L * Np;      // [L][hd]
  float* sM = sx + L * hd;      // [L][L]: (C_t . B_s) e^(cum_t - cum_s) dt_s, s <= t
  float* sdt = sM + L * L;      // [L]
  float* scum = sdt + L;        // [L]
  float* sw = scum + L;         // [L]: e^(cum_last - cum_s) dt_s
  const SsdScratch sc = ssd_parts(a.ssd, a.T, a.nh, a.hd, a.N);
  const int64_t c = blockIdx.x, h = blockIdx.y, t0 = c * L, di = a.nh * a.hd, g = h / (a.nh / a.G);
  const int n_tok = (int)min((int64_t)L, a.T - t0);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (warp == 0) {  // dt and the running sums (tokens past T: dt = 0, nothing decays or adds)
    const float dt = lane < n_tok ? mamba_dt(a, t0 + lane, h) : 0.0f;
    float cum = dt * a.A[h];
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const float v = __shfl_up_sync(0xffffffffu, cum, o);
      if (lane >= o) cum += v;
    }
    const float last = __shfl_sync(0xffffffffu, cum, 31);
    sdt[lane] = dt;
    scum[lane] = cum;
    sw[lane] = expf(last - cum) * dt;
    if (lane == 0) sc.decay[c * a.nh + h] = expf(last);
    if (lane < n_tok) sc.cum[(t0 + lane) * a.nh + h] = cum;
  }
  for (int i = threadIdx.x; i < L * N; i += blockDim.x) {
    const int t = i / N, n = i % N;
    const float* row = a.xbc + (t0 + t) * a.C + di + g * N;
    sB[t * Np + n] = t < n_tok ? row[n] : 0.0f;
    sC[t * Np + n] = t < n_tok ? row[a.G * N + n] : 0.0f;
  }
  for (int i = threadIdx.x; i < L * hd; i += blockDim.x) {
    const int t = i / hd, p = i % hd;
    sx[i] = t < n_tok ? a.xbc[(t0 + t) * a.C + h * hd + p] : 0.0f;
  }
  __syncthreads();
  {  // M: rows t = warp + kSsdWarps i, column s = lane (each B value feeds kSsdRows products)
    float acc[kSsdRows] = {};
    for (int n = 0; n < N; ++n) {
      const float b = sB[lane * Np + n];
#pragma unroll
      for (int i = 0; i < kSsdRows; ++i) acc[i] += sC[(warp + kSsdWarps * i) * Np + n] * b;
    }
#pragma unroll
    for (int i = 0; i < kSsdRows; ++i) {
      const int t = warp + kSsdWarps * i, s = lane;
      sM[t * L + s] = s <= t ? acc[i] * expf(scum[t] - scum[s]) * sdt[s] : 0.0f;
    }
  }
  __syncthreads();
  const float D = a.D[h];
  for (int i = threadIdx.x; i < n_tok * hd; i += blockDim.x) {
    const int t = i / hd, p = i % hd;
    float acc = 0.0f;
    for (int s = 0; s <= t; ++s) acc += sM[t * L + s] * sx[s * hd + p];
    a.y[(t0 + t) * di + h * hd + p] = acc + D * sx[i];
  }
  // the increment [hd][N]: tiles of kSsdRows channels p = p0 + warp + kSsdWarps i by kSsdCols
  // state columns n = n0 + lane + 32 j (registers: each loaded value feeds 4 or 8 products)
  float* inc = sc.state + (c * a.nh + h) * a.hd * a.N;
  for (int p0 = 0; p0 < hd; p0 += kSsdWarps * kSsdRows)
    for (int n0 = 0; n0 < N; n0 += 32 * kSsdCols) {
      float acc[kSsdRows][kSsdCols] = {};
      for (int s = 0; s < n_tok; ++s) {
        float xv[kSsdRows], bv[kSsdCols];
#pragma unroll
        for (int i = 0; i < kSsdRows; ++i) {
          const int p = p0 + warp + kSsdWarps * i;
          xv[i] = p < hd ? sw[s] * sx[s * hd + p] : 0.0f;
        }
#pragma unroll
        for (int j = 0; j < kSsdCols; ++j) {
          const int n = n0 + lane + 32 * j;
          bv[j] = n < N ? sB[s * Np + n] : 0.0f;
        }
        rank1_update(acc, xv, bv);
      }
#pragma unroll
      for (int i = 0; i < kSsdRows; ++i)
#pragma unroll
        for (int j = 0; j < kSsdCols; ++j) {
          const int p = p0 + warp + kSsdWarps * i, n = n0 + lane + 32 * j;
          if (p < hd && n < N) inc[p * N + n] = acc[i][j];
        }
    }
}

// One thread per state value (h, p, n): through the chunks in order.
__global__ void ssd_state_kernel(MambaArgs a) {
  pdl_trigger();
  const int64_t per_head = a.hd * a.N, e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= a.nh * per_head) return;
  const SsdScratch sc = ssd_parts(a.ssd, a.T, a.nh, a.hd, a.N);
  const int64_t h = e / per_head, chunks = (a.T + kSsdChunk - 1) / kSsdChunk, stride = a.nh * per_head;
  float S = a.ssm_state[e];
  float inc = sc.state[e];
  for (int64_t c = 0; c < chunks; ++c) {
    // the next increment requested one chunk ahead (eight ahead measured slower: 116 vs 84 us)
    const float next = c + 1 < chunks ? sc.state[(c + 1) * stride + e] : 0.0f;
    sc.state[c * stride + e] = S;  // the state entering chunk c
    S = sc.decay[c * a.nh + h] * S + inc;
    inc = next;
  }
  a.ssm_state[e] = S;
}

// grid (chunks, nh): y_t += e^(cum_t) C_t . S_in.
__global__ void __launch_bounds__(kThreads) ssd_out_kernel(MambaArgs a) {
  pdl_trigger();
  extern __shared__ float ssd_sm[];
  constexpr int L = kSsdChunk;
  const int N = (int)a.N, hd = (int)a.hd, Np = N + 1;
  float* sC = ssd_sm;        // [L][N + 1]
  float* sS = sC + L * Np;   // [hd][N + 1]
  float* sdec = sS + hd * Np;  // [L]: e^(cum_t)
  const SsdScratch sc = ssd_parts(a.ssd, a.T, a.nh, a.hd, a.N);
  const int64_t c = blockIdx.x, h = blockIdx.y, t0 = c * L, di = a.nh * a.hd, g = h / (a.nh / a.G);
  const int n_tok = (int)min((int64_t)L, a.T - t0);
  const float* S_in = sc.state + (c * a.nh + h) * a.hd * a.N;
  for (int i = threadIdx.x; i < L * N; i += blockDim.x) {
    const int t = i / N, n = i % N;
    sC[t * Np + n] = t < n_tok ? a.xbc[(t0 + t) * a.C + di + (a.G + g) * N + n] : 0.0f;
  }
  for (int i = threadIdx.x; i < hd * N; i += blockDim.x) sS[(i / N) * Np + i % N] = S_in[i];
  if (threadIdx.x < L) sdec[threadIdx.x] = threadIdx.x < n_tok ? expf(sc.cum[(t0 + threadIdx.x) * a.nh + h]) : 0.0f;
  __syncthreads();
  // tiles of kSsdRows tokens t = warp + kSsdWarps i by kSsdOutCols channels p = p0 + lane + 32 j
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int p0 = 0; p0 < hd; p0 += 32 * kSsdOutCols) {
    float acc[kSsdRows][kSsdOutCols] = {};
    int pr[kSsdOutCols];
#pragma unroll
    for (int j = 0; j < kSsdOutCols; ++j) pr[j] = min(p0 + lane + 32 * j, hd - 1);  // (extra lanes repeat a row)
    for (int n = 0; n < N; ++n) {
      float cv[kSsdRows], sv[kSsdOutCols];
#pragma unroll
      for (int i = 0; i < kSsdRows; ++i) cv[i] = sC[(warp + kSsdWarps * i) * Np + n];
#pragma unroll
      for (int j = 0; j < kSsdOutCols; ++j) sv[j] = sS[pr[j] * Np + n];
      rank1_update(acc, cv, sv);
    }
#pragma unroll
    for (int i = 0; i < kSsdRows; ++i)
#pragma unroll
      for (int j = 0; j < kSsdOutCols; ++j) {
        const int t = warp + kSsdWarps * i, p = p0 + lane + 32 * j;
        if (t < n_tok && p < hd) a.y[(t0 + t) * di + h * hd + p] += sdec[t] * acc[i][j];
      }
  }
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

// Prefill (and decode shapes attn_decode_kernel does not take, after kv_write): block (token t,
// kv head g), the rep query heads of group g against the causal keys, online softmax in fp32.
// (Split-K for long contexts is attn_decode_kernel's.)
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
  const int64_t t = blockIdx.x, g = blockIdx.y;
  const int64_t n_keys = (int64_t)*a.n_past + t + 1;
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
  for (int64_t kt = 0; kt < n_keys; kt += kKeyTile) {
    const int64_t nk = min((int64_t)kKeyTile, n_keys - kt);
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
    const int64_t h = i / hd, d = i % hd;
    a.out[t * a.nq * hd + (g * rep + h) * hd + d] = acc[i] / lrow[h];
  }
}

// ---- single-token attention (decode): one launch ------------------------------------
// Grid (kv head g, split sp) of kDecThreads. The key count (n_past + 1) lives on the device (a
// decode step is a replayed CUDA graph), so each block sizes the split itself: `used` =
// ceil(keys / kDecMinKeys) splits, at most a.splits; the other blocks return at once. A split
// costs a fixed ~1-2 us (partials out, fence, counter, the last block reading them back), about
// what a block spends on 64 keys (estimates, not measured): shorter contexts run in one block
// per KV head, and a split of up to 64 keys is one tile for head_dim <= 128. The block
// holding the newest key (n_past) takes this token's k/v rows from k_new/v_new (rounded as the
// cache stores them) and writes them to the caches: no kv_write launch, and only that block
// touches them. With several splits each writes its partial (max, sum, acc) to `part`; the
// last to arrive (count[g]) combines them and resets the counter: no combine launch.
// The rep query heads share K/V tiles in shared memory (K rows padded by 4 floats: eight rows
// read by one float4 load fall in distinct banks). Scores: a thread does 4 heads x 1 key, the
// 8 lanes of an octet hold 8 keys of one head quad (so one K load serves 4 quads); softmax
// statistics reduce over octets (shuffles) and the tile's octet slots (shared memory);
// P.V: a thread keeps 4 heads x 2 dims of the output in registers. fp32 with expf throughout.
constexpr int kDecThreads = 256;
constexpr int kDecStage = 8;     // float4 of K (and of V) per thread per tile: sets the tile's keys
constexpr int kDecMinKeys = 64;  // keys per split at least (above)
constexpr int kDecItems = 2;     // (head quad, key) and (head quad, dim pair) items per thread

// Keys per tile: a multiple of 32 (QK items stay warp-uniform), at most 64.
__host__ __device__ inline int dec_tile_keys(int64_t hd) {
  const int tk = (int)(kDecStage * kDecThreads * 4 / hd) / 32 * 32;
  return tk < 64 ? tk : 64;
}

size_t attn_dec_smem_floats(int64_t rep, int64_t hd, int splits) {
  const int64_t rp = (rep + 3) / 4 * 4, tk = dec_tile_keys(hd);
  return rp * (hd + 4) + tk * (hd + 4) + tk * hd + tk * rp + 2 * (tk / 8) * rp + rp * splits + rp;
}

bool attn_dec_fits(const AttnArgs& a) {
  const int64_t hq = (a.nq / a.nkv + 3) / 4, hd = a.hd;
  return a.T == 1 && a.k_new && a.v_new && hd % 4 == 0 && hd <= 256 &&
         hq * dec_tile_keys(hd) <= kDecItems * kDecThreads && hq * (hd / 2) <= kDecItems * kDecThreads &&
         (a.splits == 1 || a.count);
}

// The cache's 4-value word: float4 (f32) or 4 halves (f16).
template <bool F16> struct KvWord { using T = float4; };
template <> struct KvWord<true> { using T = uint2; };
__device__ __forceinline__ float4 kv_f32(const float4& w) { return w; }
__device__ __forceinline__ float4 kv_f32(const uint2& w) {
  const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&w.x));
  const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&w.y));
  return make_float4(a.x, a.y, b.x, b.y);
}
__device__ __forceinline__ void kv_word(const float4& f, float4& w) { w = f; }
__device__ __forceinline__ void kv_word(const float4& f, uint2& w) {  // round to nearest, as kv_write
  __half2 a = __floats2half2_rn(f.x, f.y), b = __floats2half2_rn(f.z, f.w);
  w.x = *reinterpret_cast<const uint32_t*>(&a);
  w.y = *reinterpret_cast<const uint32_t*>(&b);
}

template <bool F16>
__global__ void __launch_bounds__(kDecThreads) attn_decode_kernel(AttnArgs a) {
  pdl_trigger();
  using Word = typename KvWord<F16>::T;
  const int hd = (int)a.hd, hd4 = hd / 4, hd2 = hd / 2, rep = (int)(a.nq / a.nkv), HQ = (rep + 3) / 4, RP = 4 * HQ;
  const int S = a.splits, TK = dec_tile_keys(hd), NS = TK / 8, QS4 = hd4 + 1;
  const int g = blockIdx.x, sp = blockIdx.y, tid = threadIdx.x;
  const int n_new = *a.n_past, n_keys = n_new + 1;  // this token's key is key n_new
  const int used = min(S, (n_keys + kDecMinKeys - 1) / kDecMinKeys);
  if (sp >= used) return;
  const int chunk = (n_keys + used - 1) / used, k0 = sp * chunk, k1 = min(n_keys, k0 + chunk);

  extern __shared__ float4 sm4[];
  float4* qs4 = sm4;                               // [RP][hd + 4] q * hd^-1/2, rows >= rep zero
  float4* ks4 = qs4 + RP * QS4;                    // [TK][hd + 4]
  float4* vs4 = ks4 + TK * QS4;                    // [TK][hd]
  float* ps = reinterpret_cast<float*>(vs4 + TK * hd4);  // [TK][RP] probabilities, column 4*hq + i
  float* wmax = ps + TK * RP;                      // [NS][RP] per-octet max of the tile
  float* wsum = wmax + NS * RP;                    // [NS][RP] per-octet sum of the tile
  float* cw = wsum + NS * RP;                      // [RP][S] combine weights
  float* cl = cw + RP * S;                         // [RP] combine sums
  const int64_t kvw4 = a.nkv * hd4, col4 = (int64_t)g * hd4;
  Word kr[kDecStage], vr[kDecStage];
  auto load = [&](int kt) {  // tile at key kt -> registers; the new key from k_new / v_new
    const int nk = min(TK, k1 - kt);
#pragma unroll
    for (int u = 0; u < kDecStage; ++u) {
      const int e = tid + u * kDecThreads, row = e / hd4, c4 = e - row * hd4;
      if (row < nk) {
        const int key = kt + row;
        const int64_t at = key * kvw4 + col4 + c4;
        if (key == n_new) {
          kv_word(reinterpret_cast<const float4*>(a.k_new)[col4 + c4], kr[u]);
          kv_word(reinterpret_cast<const float4*>(a.v_new)[col4 + c4], vr[u]);
          static_cast<Word*>(a.kc)[at] = kr[u];
          static_cast<Word*>(a.vc)[at] = vr[u];
        } else {
          kr[u] = static_cast<const Word*>(a.kc)[at];
          vr[u] = static_cast<const Word*>(a.vc)[at];
        }
      }
    }
  };
  auto store = [&](int nk) {
#pragma unroll
    for (int u = 0; u < kDecStage; ++u) {
      const int e = tid + u * kDecThreads, row = e / hd4, c4 = e - row * hd4;
      if (row < nk) {
        ks4[row * QS4 + c4] = kv_f32(kr[u]);
        vs4[row * hd4 + c4] = kv_f32(vr[u]);
      }
    }
  };

  // Running max of the heads of each item, kept alike by the QK and the P.V threads (fmaxf of
  // the same slots: equal values), the P.V threads also the sums and their output columns.
  float qmax[kDecItems][4], pmax[kDecItems][4], psum[kDecItems][4], acc[kDecItems][4][2], sc[kDecItems][4];
#pragma unroll
  for (int r = 0; r < kDecItems; ++r)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      qmax[r][i] = pmax[r][i] = -INFINITY;
      psum[r][i] = acc[r][i][0] = acc[r][i][1] = 0.0f;
    }

  if (k0 < k1) load(k0);  // first, so that these loads and q's are in flight together
  // Thread heads: quad hq holds heads hq + HQ * i (i < 4): the 4 quads of a K load read 4
  // consecutive q rows (distinct banks); column 4 * hq + i of ps / wmax / wsum.
  {
    const float4* q4 = reinterpret_cast<const float4*>(a.q) + (int64_t)g * rep * hd4;
    const float scale = rsqrtf((float)hd);
    for (int i = tid; i < RP * hd4; i += kDecThreads) {
      const int h = i / hd4, c4 = i - h * hd4;
      float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (h < rep) {
        v = q4[h * hd4 + c4];
        v.x *= scale;
        v.y *= scale;
        v.z *= scale;
        v.w *= scale;
      }
      qs4[h * QS4 + c4] = v;
    }
  }
  for (int kt = k0; kt < k1; kt += TK) {
    const int nk = min(TK, k1 - kt);
    store(nk);
    __syncthreads();
    if (kt + TK < k1) load(kt + TK);  // in flight during this tile's math
    // scores of (head quad hq, key j): octet o = i / 8 is (key octet o / HQ, quad o % HQ)
#pragma unroll
    for (int r = 0; r < kDecItems; ++r) {
      const int i = tid + r * kDecThreads;
      if (i < HQ * TK) {  // warp-uniform (HQ * TK % 32 == 0): the shuffles need whole warps
        const int o = i >> 3, j = (o / HQ) * 8 + (i & 7), hq = o - (o / HQ) * HQ;
        float s[4];
        if (j < nk) {
          float x[4] = {0.0f, 0.0f, 0.0f, 0.0f}, y[4] = {0.0f, 0.0f, 0.0f, 0.0f};
          const float4* kp = ks4 + j * QS4;
          const float4* qp = qs4 + hq * QS4;
#pragma unroll 4
          for (int d4 = 0; d4 < hd4; ++d4) {
            const float4 k = kp[d4];
#pragma unroll
            for (int h = 0; h < 4; ++h) {
              const float4 qv = qp[h * HQ * QS4 + d4];
              x[h] = fmaf(qv.x, k.x, x[h]);
              y[h] = fmaf(qv.y, k.y, y[h]);
              x[h] = fmaf(qv.z, k.z, x[h]);
              y[h] = fmaf(qv.w, k.w, y[h]);
            }
          }
#pragma unroll
          for (int h = 0; h < 4; ++h) s[h] = x[h] + y[h];
        } else {
#pragma unroll
          for (int h = 0; h < 4; ++h) s[h] = -INFINITY;
        }
#pragma unroll
        for (int h = 0; h < 4; ++h) sc[r][h] = s[h];
        octet_reduce_store(s, MaxOp{}, (i & 7) == 0, wmax + (j >> 3) * RP + 4 * hq);
      }
    }
    __syncthreads();
    // probabilities against the new running max; per-octet sums
#pragma unroll
    for (int r = 0; r < kDecItems; ++r) {
      const int i = tid + r * kDecThreads;
      if (i < HQ * TK) {
        const int o = i >> 3, j = (o / HQ) * 8 + (i & 7), hq = o - (o / HQ) * HQ;
        for (int s = 0; s < NS; ++s) max4(qmax[r], *reinterpret_cast<const float4*>(wmax + s * RP + 4 * hq));
        float p[4];
#pragma unroll
        for (int h = 0; h < 4; ++h) p[h] = j < nk ? expf(sc[r][h] - qmax[r][h]) : 0.0f;
        *reinterpret_cast<float4*>(ps + j * RP + 4 * hq) = make_float4(p[0], p[1], p[2], p[3]);
        octet_reduce_store(p, AddOp{}, (i & 7) == 0, wsum + (j >> 3) * RP + 4 * hq);
      }
    }
    __syncthreads();
    // acc = acc * exp(m_old - m_new) + P . V
#pragma unroll
    for (int r = 0; r < kDecItems; ++r) {
      const int i = tid + r * kDecThreads;
      if (i < HQ * hd2) {
        const int hq = i / hd2, dp = i - hq * hd2;
        float mn[4] = {pmax[r][0], pmax[r][1], pmax[r][2], pmax[r][3]}, sum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int s = 0; s < NS; ++s) {
          max4(mn, *reinterpret_cast<const float4*>(wmax + s * RP + 4 * hq));
          add4(sum, *reinterpret_cast<const float4*>(wsum + s * RP + 4 * hq));
        }
#pragma unroll
        for (int h = 0; h < 4; ++h) {
          const float c = expf(pmax[r][h] - mn[h]);
          pmax[r][h] = mn[h];
          psum[r][h] = psum[r][h] * c + sum[h];
          acc[r][h][0] *= c;
          acc[r][h][1] *= c;
        }
        const float4* pp = reinterpret_cast<const float4*>(ps) + hq;
        const float2* vp = reinterpret_cast<const float2*>(vs4) + dp;
#pragma unroll 4
        for (int j = 0; j < nk; ++j) {
          const float4 p = pp[j * HQ];
          const float2 v = vp[j * hd2];
          acc[r][0][0] = fmaf(p.x, v.x, acc[r][0][0]);
          acc[r][0][1] = fmaf(p.x, v.y, acc[r][0][1]);
          acc[r][1][0] = fmaf(p.y, v.x, acc[r][1][0]);
          acc[r][1][1] = fmaf(p.y, v.y, acc[r][1][1]);
          acc[r][2][0] = fmaf(p.z, v.x, acc[r][2][0]);
          acc[r][2][1] = fmaf(p.z, v.y, acc[r][2][1]);
          acc[r][3][0] = fmaf(p.w, v.x, acc[r][3][0]);
          acc[r][3][1] = fmaf(p.w, v.y, acc[r][3][1]);
        }
      }
    }
    __syncthreads();  // before the next tile overwrites ks / vs / ps / wmax / wsum
  }

  // One split: the output. Several: the partial, then the last block to arrive combines.
#pragma unroll
  for (int r = 0; r < kDecItems; ++r) {
    const int i = tid + r * kDecThreads;
    if (i < HQ * hd2) {
      const int hq = i / hd2, dp = i - hq * hd2;
#pragma unroll
      for (int h4 = 0; h4 < 4; ++h4) {
        const int h = hq + HQ * h4;
        if (h >= rep) continue;
        const int64_t head = (int64_t)g * rep + h;
        if (used == 1) {
          reinterpret_cast<float2*>(a.out + head * hd)[dp] =
              make_float2(acc[r][h4][0] / psum[r][h4], acc[r][h4][1] / psum[r][h4]);
        } else {
          float* pt = a.part + (head * S + sp) * (hd + 2);
          if (dp == 0) {
            pt[0] = pmax[r][h4];
            pt[1] = psum[r][h4];
          }
          pt[2 + 2 * dp] = acc[r][h4][0];
          pt[3 + 2 * dp] = acc[r][h4][1];
        }
      }
    }
  }
  if (used == 1 || !last_block_to_arrive(a.count + g, used)) return;
  // Combine (L2 loads: other blocks wrote the partials): weights exp(m_s - M) per head and split.
  const int lane = tid & 31;
  for (int h = tid >> 5; h < rep; h += kDecThreads / 32) {
    const float* pt = a.part + ((int64_t)g * rep + h) * S * (hd + 2);
    float M = -INFINITY;
    for (int s = lane; s < used; s += 32) M = fmaxf(M, __ldcg(pt + s * (hd + 2)));
    for (int off = 16; off > 0; off >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, off));
    float L = 0.0f;
    for (int s = lane; s < used; s += 32) {
      const float e = expf(__ldcg(pt + s * (hd + 2)) - M);
      cw[h * S + s] = e;
      L += __ldcg(pt + s * (hd + 2) + 1) * e;
    }
    for (int off = 16; off > 0; off >>= 1) L += __shfl_xor_sync(0xffffffffu, L, off);
    if (lane == 0) cl[h] = L;
  }
  __syncthreads();
  for (int i = tid; i < rep * hd; i += kDecThreads) {
    const int h = i / hd, d = i - h * hd;
    const float* pt = a.part + ((int64_t)g * rep + h) * S * (hd + 2) + 2 + d;
    float o = 0.0f;
#pragma unroll 8
    for (int s = 0; s < used; ++s) o += __ldcg(pt + s * (hd + 2)) * cw[h * S + s];
    a.out[((int64_t)g * rep + h) * hd + d] = o / cl[h];
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

__global__ void moe_combine_kernel(const float* ye, const float* shared, const float* shared2, const float* wt,
                                   const int32_t* row_of, int64_t T, int k, int64_t E, float* out) {
  pdl_trigger();
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= T * E) return;
  const int64_t t = i / E, c = i % E;
  float v = (shared ? shared[i] : 0.0f) + (shared2 ? shared2[i] : 0.0f);
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
  embed_kernel<<<dim3((unsigned)T, blocks_for(E)), kThreads, 0, s>>>(w, tokens, x, E);
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

size_t ssd_scratch_floats(int64_t T, int64_t nh, int64_t hd, int64_t N) {
  const int64_t chunks = (T + kSsdChunk - 1) / kSsdChunk;
  return (size_t)(chunks * nh * hd * N + T * nh + chunks * nh);
}

// The chunked form where it applies (NEMOCPU_CUDA_SSD=0: never, for A/B measurements).
bool ssd_scan(const MambaArgs& a, cudaStream_t s) {
  static const bool off = env_off("NEMOCPU_CUDA_SSD");
  static const int cap = current_device_attr(cudaDevAttrMaxSharedMemoryPerBlockOptin);
  const size_t chunk_smem = ssd_chunk_smem(a.hd, a.N), out_smem = ssd_out_smem(a.hd, a.N);
  if (off || !a.ssd || a.T < kSsdMinTokens || std::max(chunk_smem, out_smem) > (size_t)cap) return false;
  static bool raised = false;
  if (!raised) {
    NEMOCPU_CUDA_CHECK(cudaFuncSetAttribute(ssd_chunk_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, cap));
    NEMOCPU_CUDA_CHECK(cudaFuncSetAttribute(ssd_out_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, cap));
    raised = true;
  }
  const dim3 grid((unsigned)((a.T + kSsdChunk - 1) / kSsdChunk), (unsigned)a.nh);
  ssd_chunk_kernel<<<grid, kThreads, chunk_smem, s>>>(a);
  NEMOCPU_CUDA_CHECK(cudaGetLastError());
  ssd_state_kernel<<<blocks_for(a.nh * a.hd * a.N), kThreads, 0, s>>>(a);
  NEMOCPU_CUDA_CHECK(cudaGetLastError());
  ssd_out_kernel<<<grid, kThreads, out_smem, s>>>(a);
  NEMOCPU_CUDA_CHECK(cudaGetLastError());
  return true;
}

void mamba_scan(const MambaArgs& a, cudaStream_t s) {
  if (a.N > 32 * kMaxStatePerLane) throw std::invalid_argument("CUDA: ssm_d_state above 256 is not supported");
  if (!a.norm_out && ssd_scan(a, s)) return;
  int nw = kThreads / 32;  // warps per block: a power of two dividing hd (one head per block)
  while (a.hd % nw) nw /= 2;
  if (a.norm_out && (a.T != 1 || !a.group_count))
    throw std::invalid_argument("CUDA mamba_scan: the fused gated norm takes one token and its counters");
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

size_t attention_part_floats(int64_t T, int64_t nq, int64_t nkv, int64_t hd, int splits) {
  return (splits > 1 ? (size_t)(T * nq * splits * (hd + 2)) : 0) + (size_t)(T * nkv);  // + counters
}

int32_t* attention_counters(float* part, int64_t T, int64_t nq, int64_t hd, int splits) {
  return reinterpret_cast<int32_t*>(part + (splits > 1 ? T * nq * splits * (hd + 2) : 0));
}

void attention(const AttnArgs& a, cudaStream_t s) {
  const int64_t rep = a.nq / a.nkv;
  if (a.k_new) {  // one token: its k/v rows go to the caches here
    if (attn_dec_fits(a)) {
      const size_t smem = attn_dec_smem_floats(rep, a.hd, a.splits) * sizeof(float);
      static size_t raised[2] = {48 * 1024, 48 * 1024};
      auto kernel = a.f16 ? attn_decode_kernel<true> : attn_decode_kernel<false>;
      if (smem > raised[a.f16]) {
        NEMOCPU_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        raised[a.f16] = smem;
      }
      kernel<<<dim3((unsigned)a.nkv, (unsigned)a.splits), kDecThreads, smem, s>>>(a);
      NEMOCPU_CUDA_CHECK(cudaGetLastError());
      return;
    }
    // shapes the one-launch kernel does not take (head_dim % 4, > 256, very wide GQA groups):
    // the prefill kernel, one block per KV head (no split-K)
    kv_write(a.k_new, a.v_new, a.T, a.nkv * a.hd, a.n_past, a.kc, a.vc, a.f16, s);
  }
  const size_t smem = attn_smem_floats(rep, a.hd) * sizeof(float);
  static size_t raised[2] = {48 * 1024, 48 * 1024};
  auto kernel = a.f16 ? attn_kernel<true> : attn_kernel<false>;
  if (smem > raised[a.f16]) {
    NEMOCPU_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    raised[a.f16] = smem;
  }
  kernel<<<dim3((unsigned)a.T, (unsigned)a.nkv), 128, smem, s>>>(a);
  NEMOCPU_CUDA_CHECK(cudaGetLastError());
}

void route(const RouterArgs& a, cudaStream_t s) {
  if (a.n_expert > 32 * 32 || a.n_group > 64)
    throw std::invalid_argument("CUDA router: at most 1024 experts in at most 64 groups");
  route_kernel<<<(unsigned)a.T, (a.n_expert + 31) / 32 * 32, (2 * a.n_expert + a.k) * sizeof(float), s>>>(a);
  NEMOCPU_CUDA_CHECK(cudaGetLastError());
}

void moe_combine(const float* ye, const float* shared, const float* shared2, const float* wt, const int32_t* row_of,
                 int64_t T, int k, int64_t E, float* out, cudaStream_t s) {
  moe_combine_kernel<<<blocks_for(T * E), kThreads, 0, s>>>(ye, shared, shared2, wt, row_of, T, k, E, out);
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
