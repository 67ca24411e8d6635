// Weight products on the GPU for every type nemocpu reads: F32, F16, BF16, FP8 (E4M3 codes x
// per-row scale), Q8_0 and Q4_0.
//   * repack_weight: GGUF rows -> rows padded to Kp (16-byte aligned), quant codes split from
//     their fp16 block scales, so every kernel loads 16 aligned bytes per lane.
//   * gemv: few tokens (decode, small MoE groups): one warp per weight row, fp32 math, the
//     activations in shared memory laid out so that lanes reading consecutive 16-byte weight
//     chunks read consecutive words (no bank conflicts). Memory-bound: weights read once.
//   * gemm: many tokens (prefill): bf16 tensor cores (WMMA, fp32 accumulation); weight tiles
//     are decoded from their stored type into shared memory, activations rounded to bf16.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <mma.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/check.h"
#include "cuda/kernels.cuh"
#include "nemocpu/ggml_types.h"

namespace nemocpu {
namespace cuda {

namespace {

constexpr int kWarps = 8;        // gemv: warps per block
constexpr int kRowsPerWarp = 2;  // gemv: rows per warp (activation reads shared by both)
constexpr int kMaxGemvTokens = 8;

// Elements held by one 16-byte chunk of a padded row.
template <int TYPE> struct Chunk;
template <> struct Chunk<GGML_F32> { static constexpr int n = 4; };
template <> struct Chunk<GGML_F16> { static constexpr int n = 8; };
template <> struct Chunk<GGML_BF16> { static constexpr int n = 8; };
template <> struct Chunk<GGML_I8> { static constexpr int n = 16; };
template <> struct Chunk<GGML_Q8_0> { static constexpr int n = 16; };
template <> struct Chunk<GGML_Q4_0> { static constexpr int n = 32; };

int sm_count() {
  static int n = 0;
  if (!n) {
    int dev = 0;
    NEMOCPU_CUDA_CHECK(cudaGetDevice(&dev));
    NEMOCPU_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  }
  return n;
}

int64_t elem_bytes_x2(int type) {  // bytes per 2 elements of a padded row
  switch (type) {
    case GGML_F32: return 8;
    case GGML_F16: case GGML_BF16: return 4;
    case GGML_I8: case GGML_Q8_0: return 2;
    case GGML_Q4_0: return 1;
    default: throw std::invalid_argument("CUDA: unsupported weight type " + std::to_string(type));
  }
}

// Decode one 16-byte chunk into Chunk<TYPE>::n floats (block scale `d` applied by caller).
template <int TYPE>
__device__ __forceinline__ void decode_chunk(const uint4 raw, float* w) {
  const uint8_t* b = reinterpret_cast<const uint8_t*>(&raw);
  if constexpr (TYPE == GGML_F32) {
    const float* f = reinterpret_cast<const float*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; ++i) w[i] = f[i];
  } else if constexpr (TYPE == GGML_F16) {
    const __half* h = reinterpret_cast<const __half*>(&raw);
#pragma unroll
    for (int i = 0; i < 8; ++i) w[i] = __half2float(h[i]);
  } else if constexpr (TYPE == GGML_BF16) {
    const uint16_t* h = reinterpret_cast<const uint16_t*>(&raw);
#pragma unroll
    for (int i = 0; i < 8; ++i) w[i] = __uint_as_float((uint32_t)h[i] << 16);
  } else if constexpr (TYPE == GGML_I8) {  // hardware e4m3x2 -> f16x2 conversion (sm_89+)
    const __nv_fp8x2_storage_t* p2 = reinterpret_cast<const __nv_fp8x2_storage_t*>(&raw);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const float2 f = __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2(p2[i], __NV_E4M3)));
      w[2 * i] = f.x;
      w[2 * i + 1] = f.y;
    }
  } else if constexpr (TYPE == GGML_Q8_0) {
#pragma unroll
    for (int i = 0; i < 16; ++i) w[i] = (float)(int8_t)b[i];
  } else {  // Q4_0: byte j holds element j (low nibble) and j + 16 (high nibble)
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      w[i] = (float)((int)(b[i] & 0xf) - 8);
      w[i + 16] = (float)((int)(b[i] >> 4) - 8);
    }
  }
}

// ---- repack ----------------------------------------------------------------------------
__global__ void repack_kernel(const uint8_t* src, int64_t src_rb, int type, int64_t K, int64_t Kp, int64_t n_rows,
                              uint8_t* q, int64_t rb, uint16_t* d) {
  const int64_t row = blockIdx.x;
  if (row >= n_rows) return;
  const uint8_t* s = src + row * src_rb;
  uint8_t* o = q + row * rb;
  if (type == GGML_Q8_0 || type == GGML_Q4_0) {
    const int bsz = type == GGML_Q8_0 ? 34 : 18, nq = bsz - 2;
    const int64_t nb = K / QK;
    for (int64_t i = threadIdx.x; i < nb * nq; i += blockDim.x) {
      const int64_t b = i / nq, j = i % nq;
      o[b * nq + j] = s[b * bsz + 2 + j];
    }
    for (int64_t b = threadIdx.x; b < nb; b += blockDim.x)
      d[row * (Kp / QK) + b] = (uint16_t)s[b * bsz] | ((uint16_t)s[b * bsz + 1] << 8);
    return;
  }
  const int esz = type == GGML_F32 ? 4 : (type == GGML_I8 ? 1 : 2);
  for (int64_t i = threadIdx.x; i < Kp * esz; i += blockDim.x) o[i] = i < K * esz ? s[i] : 0;
}

// ---- gemv ------------------------------------------------------------------------------
struct GemvParams {
  const uint8_t* q; const uint16_t* d; const float* s;
  int64_t K, Kp, rows, row_bytes;
  const int32_t* mat_idx; int mat;
  const float* x; int64_t ldx, x_slice;
  float* y; int64_t ldy, y_slice;
  int relu2;
};

template <int TYPE, int NT>
__global__ void __launch_bounds__(kWarps * 32) gemv_kernel(GemvParams p) {
  constexpr int EPC = Chunk<TYPE>::n;
  extern __shared__ float xs[];  // [NT][Kp], element k of a row at (k % EPC) * nch + k / EPC
  const int64_t Kp = p.Kp, nch = Kp / EPC;
  const int slice = blockIdx.y;
  const float* x = p.x + slice * p.x_slice;
  for (int t = 0; t < NT; ++t)  // 32-bit index math: this loop is on every block's critical path
    for (int k = threadIdx.x; k < (int)Kp; k += blockDim.x)
      xs[t * (int)Kp + (k % EPC) * (int)nch + k / EPC] = k < p.K ? x[t * p.ldx + k] : 0.0f;
  __syncthreads();
  const int mat = p.mat_idx ? p.mat_idx[slice] : p.mat;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  // Blocks stride over groups of kWarps * kRowsPerWarp rows: the activations staged above
  // serve many rows, and the grid stays at a few blocks per multiprocessor.
  const int64_t n_groups = (p.rows + kWarps * kRowsPerWarp - 1) / (kWarps * kRowsPerWarp);
  for (int64_t grp = blockIdx.x; grp < n_groups; grp += gridDim.x) {
  const int64_t r0 = (grp * kWarps + warp) * kRowsPerWarp;
  if (r0 >= p.rows) continue;
  const uint8_t* wrow[kRowsPerWarp];
  const uint16_t* drow[kRowsPerWarp];
  bool ok[kRowsPerWarp];
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    ok[rr] = r0 + rr < p.rows;
    const int64_t grow = (int64_t)mat * p.rows + (ok[rr] ? r0 + rr : r0);
    wrow[rr] = p.q + grow * p.row_bytes;
    drow[rr] = p.d ? p.d + grow * (Kp / QK) : nullptr;
  }
  float acc[kRowsPerWarp][NT];
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr)
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[rr][t] = 0.0f;

#pragma unroll 4
  for (int64_t c = lane; c < nch; c += 32) {
    uint4 raw[kRowsPerWarp];
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) raw[rr] = __ldg(reinterpret_cast<const uint4*>(wrow[rr]) + c);
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      float w[EPC];
      decode_chunk<TYPE>(raw[rr], w);
      float dsc = 1.0f;
      if constexpr (TYPE == GGML_Q8_0) dsc = __half2float(__ushort_as_half(drow[rr][c / 2]));
      if constexpr (TYPE == GGML_Q4_0) dsc = __half2float(__ushort_as_half(drow[rr][c]));
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        const float* xt = xs + t * Kp + c;
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < EPC; ++i) s += w[i] * xt[i * nch];
        acc[rr][t] += s * dsc;
      }
    }
  }
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr)
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      float v = acc[rr][t];
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      acc[rr][t] = v;
    }
  if (lane == 0) {
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      if (!ok[rr]) continue;
      const int64_t row = r0 + rr;
      const float sc = TYPE == GGML_I8 ? p.s[(int64_t)mat * p.rows + row] : 1.0f;
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        float v = acc[rr][t] * sc;
        if (p.relu2) v = v > 0.0f ? v * v : 0.0f;
        p.y[slice * p.y_slice + t * p.ldy + row] = v;
      }
    }
  }
  }
}

template <int TYPE, int NT>
void launch_gemv_t(const GemvParams& p, int slices, cudaStream_t s) {
  const size_t smem = (size_t)NT * p.Kp * sizeof(float);
  static size_t raised = 48 * 1024;  // per instantiation: dynamic shared memory opted into
  if (smem > raised) {
    NEMOCPU_CUDA_CHECK(cudaFuncSetAttribute(gemv_kernel<TYPE, NT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            (int)smem));
    raised = smem;
  }
  const int64_t rows_per_block = kWarps * kRowsPerWarp;
  const int64_t groups = (p.rows + rows_per_block - 1) / rows_per_block;
  const int64_t cap = std::max<int64_t>(1, (int64_t)sm_count() * 8 / slices);  // 8 blocks of 256 fill an SM
  dim3 grid((unsigned)std::min(groups, cap), (unsigned)slices);
  gemv_kernel<TYPE, NT><<<grid, kWarps * 32, smem, s>>>(p);
  NEMOCPU_CUDA_CHECK(cudaGetLastError());
}

template <int TYPE>
void launch_gemv(const GemvParams& p, int nt, int slices, cudaStream_t s) {
  switch (nt) {
    case 1: launch_gemv_t<TYPE, 1>(p, slices, s); break;
    case 2: launch_gemv_t<TYPE, 2>(p, slices, s); break;
    case 4: launch_gemv_t<TYPE, 4>(p, slices, s); break;
    default: launch_gemv_t<TYPE, 8>(p, slices, s); break;
  }
}

void gemv(const LinearArgs& a, cudaStream_t s) {
  const GpuWeight& w = *a.w;
  GemvParams p{w.q, w.d, w.s, w.K, w.Kp, w.rows, w.row_bytes, a.mat_idx, a.mat,
               a.x, a.ldx, a.x_slice, a.y, a.ldy, a.y_slice, a.relu2 ? 1 : 0};
  for (int64_t t0 = 0; t0 < a.T;) {
    const int64_t left = a.T - t0;
    const int nt = left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1;
    p.x = a.x + t0 * a.ldx;
    p.y = a.y + t0 * a.ldy;
    switch (w.type) {
      case GGML_F32: launch_gemv<GGML_F32>(p, nt, a.slices, s); break;
      case GGML_F16: launch_gemv<GGML_F16>(p, nt, a.slices, s); break;
      case GGML_BF16: launch_gemv<GGML_BF16>(p, nt, a.slices, s); break;
      case GGML_I8: launch_gemv<GGML_I8>(p, nt, a.slices, s); break;
      case GGML_Q8_0: launch_gemv<GGML_Q8_0>(p, nt, a.slices, s); break;
      case GGML_Q4_0: launch_gemv<GGML_Q4_0>(p, nt, a.slices, s); break;
      default: throw std::invalid_argument("CUDA gemv: unsupported type");
    }
    t0 += nt;
  }
}

// ---- gemm (tensor cores) ---------------------------------------------------------------
// Operands are split into bf16 pairs, v = hi + lo (hi = bf16(v), lo = bf16(v - hi)), and
// W.X ~ Wh.Xh + Wh.Xl + Wl.Xh ("3xBF16"): about 16 significant bits per operand, so prefill
// matches the fp32 matrix-vector path to ~1e-5 instead of bf16's 4e-3 (which flips MoE
// routing decisions at near-ties).
constexpr int BM = 64, BN = 128, BK = 32, LDS = BK + 8, LDC = BN + 4;

struct GemmParams {
  const uint8_t* q; const uint16_t* d; const float* s;
  int64_t K, Kp, rows, row_bytes;
  const float* x; int64_t ldx, T;
  float* y; int64_t ldy;
  int relu2;
  const int32_t* grp;  // grouped (MoE prefill): blockIdx.z -> {matrix, first row, rows}
};

__device__ __forceinline__ void split_bf16(float v, __nv_bfloat16& hi, __nv_bfloat16& lo) {
  hi = __float2bfloat16(v);
  lo = __float2bfloat16(v - __bfloat162float(hi));
}

// 16 consecutive weights (k0 % 16 == 0) of one row of the matrix at q/d/s, as fp32.
template <int TYPE>
__device__ __forceinline__ void load_w16(const GemmParams& p, const uint8_t* q, const uint16_t* d, const float* s,
                                         int64_t row, int64_t k0, float* w) {
  const uint8_t* r = q + row * p.row_bytes;
  float sc = 1.0f;
  if constexpr (TYPE == GGML_F32) {
#pragma unroll
    for (int j = 0; j < 4; ++j) decode_chunk<TYPE>(__ldg(reinterpret_cast<const uint4*>(r + k0 * 4) + j), w + 4 * j);
  } else if constexpr (TYPE == GGML_F16 || TYPE == GGML_BF16) {
#pragma unroll
    for (int j = 0; j < 2; ++j) decode_chunk<TYPE>(__ldg(reinterpret_cast<const uint4*>(r + k0 * 2) + j), w + 8 * j);
  } else if constexpr (TYPE == GGML_I8) {
    decode_chunk<TYPE>(__ldg(reinterpret_cast<const uint4*>(r + k0)), w);
    sc = s[row];
  } else if constexpr (TYPE == GGML_Q8_0) {
    decode_chunk<TYPE>(__ldg(reinterpret_cast<const uint4*>(r + k0)), w);
    sc = __half2float(__ushort_as_half(d[row * (p.Kp / QK) + k0 / QK]));
  } else {  // Q4_0: the block's 16 bytes; first or second half of its 32 elements
    float all[32];
    decode_chunk<TYPE>(__ldg(reinterpret_cast<const uint4*>(r + (k0 / QK) * 16)), all);
    const int h = (int)(k0 % QK) / 16;
#pragma unroll
    for (int i = 0; i < 16; ++i) w[i] = h ? all[16 + i] : all[i];
    sc = __half2float(__ushort_as_half(d[row * (p.Kp / QK) + k0 / QK]));
  }
#pragma unroll
  for (int i = 0; i < 16; ++i) w[i] *= sc;
}

template <int TYPE>
__global__ void __launch_bounds__(256) gemm_kernel(GemmParams p) {
  using namespace nvcuda;
  __shared__ __align__(128) unsigned char smem[BM * LDC * 4];
  __nv_bfloat16* Ah = reinterpret_cast<__nv_bfloat16*>(smem);  // [BM][LDS] tokens x k
  __nv_bfloat16* Al = Ah + BM * LDS;
  __nv_bfloat16* Bh = Al + BM * LDS;                            // [BN][LDS] rows x k
  __nv_bfloat16* Bl = Bh + BN * LDS;
  float* Cs = reinterpret_cast<float*>(smem);                   // [BM][LDC] after the loop
  const uint8_t* q = p.q;
  const uint16_t* d = p.d;
  const float* s = p.s;
  const float* x = p.x;
  float* y = p.y;
  int64_t T = p.T;
  if (p.grp) {
    const int32_t* g = p.grp + 3 * blockIdx.z;
    const int64_t off = (int64_t)g[0] * p.rows;
    q += off * p.row_bytes;
    if (d) d += off * (p.Kp / QK);
    if (s) s += off;
    x += (int64_t)g[1] * p.ldx;
    y += (int64_t)g[1] * p.ldy;
    T = g[2];
  }
  const int64_t t0 = (int64_t)blockIdx.y * BM, n0 = (int64_t)blockIdx.x * BN;
  if (t0 >= T) return;
  const int tid = threadIdx.x, warp = tid / 32;
  const int wm = warp / 4, wn = warp % 4;  // 2 x 4 warps, each 32 x 32
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  for (int64_t kb = 0; kb < p.Kp; kb += BK) {
    {  // A: 64 tokens x 32 k; 8 per thread
      const int m = tid / 4, kk = (tid % 4) * 8;
      const int64_t t = t0 + m;
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int64_t k = kb + kk + i;
        const float v = (t < T && k < p.K) ? x[t * p.ldx + k] : 0.0f;
        split_bf16(v, Ah[m * LDS + kk + i], Al[m * LDS + kk + i]);
      }
    }
    {  // B: 128 rows x 32 k; 16 per thread
      const int n = tid / 2, kk = (tid % 2) * 16;
      const int64_t row = n0 + n;
      float w[16];
      if (row < p.rows) {
        load_w16<TYPE>(p, q, d, s, row, kb + kk, w);
      } else {
#pragma unroll
        for (int i = 0; i < 16; ++i) w[i] = 0.0f;
      }
#pragma unroll
      for (int i = 0; i < 16; ++i) split_bf16(w[i], Bh[n * LDS + kk + i], Bl[n * LDS + kk + i]);
    }
    __syncthreads();
#pragma unroll
    for (int ks = 0; ks < BK; ks += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa[2], fal[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb[2], fbl[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        wmma::load_matrix_sync(fa[i], Ah + (wm * 32 + i * 16) * LDS + ks, LDS);
        wmma::load_matrix_sync(fal[i], Al + (wm * 32 + i * 16) * LDS + ks, LDS);
      }
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        wmma::load_matrix_sync(fb[j], Bh + (wn * 32 + j * 16) * LDS + ks, LDS);
        wmma::load_matrix_sync(fbl[j], Bl + (wn * 32 + j * 16) * LDS + ks, LDS);
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          wmma::mma_sync(acc[i][j], fal[i], fb[j], acc[i][j]);
          wmma::mma_sync(acc[i][j], fa[i], fbl[j], acc[i][j]);
          wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(Cs + (wm * 32 + i * 16) * LDC + wn * 32 + j * 16, acc[i][j], LDC, wmma::mem_row_major);
  __syncthreads();
  for (int i = tid; i < BM * BN; i += blockDim.x) {
    const int m = i / BN, n = i % BN;
    const int64_t t = t0 + m, row = n0 + n;
    if (t < T && row < p.rows) {
      float v = Cs[m * LDC + n];
      if (p.relu2) v = v > 0.0f ? v * v : 0.0f;
      y[t * p.ldy + row] = v;
    }
  }
}

void launch_gemm(const GemmParams& p, int type, dim3 grid, cudaStream_t s) {
  switch (type) {
    case GGML_F32: gemm_kernel<GGML_F32><<<grid, 256, 0, s>>>(p); break;
    case GGML_F16: gemm_kernel<GGML_F16><<<grid, 256, 0, s>>>(p); break;
    case GGML_BF16: gemm_kernel<GGML_BF16><<<grid, 256, 0, s>>>(p); break;
    case GGML_I8: gemm_kernel<GGML_I8><<<grid, 256, 0, s>>>(p); break;
    case GGML_Q8_0: gemm_kernel<GGML_Q8_0><<<grid, 256, 0, s>>>(p); break;
    case GGML_Q4_0: gemm_kernel<GGML_Q4_0><<<grid, 256, 0, s>>>(p); break;
    default: throw std::invalid_argument("CUDA gemm: unsupported type");
  }
  NEMOCPU_CUDA_CHECK(cudaGetLastError());
}

void gemm(const LinearArgs& a, cudaStream_t s) {
  const GpuWeight& w = *a.w;
  const int64_t off = (int64_t)a.mat * w.rows;
  GemmParams p{w.q + off * w.row_bytes, w.d ? w.d + off * (w.Kp / QK) : nullptr, w.s ? w.s + off : nullptr,
               w.K, w.Kp, w.rows, w.row_bytes, a.x, a.ldx, a.T, a.y, a.ldy, a.relu2 ? 1 : 0, nullptr};
  launch_gemm(p, w.type, dim3((unsigned)((w.rows + BN - 1) / BN), (unsigned)((a.T + BM - 1) / BM)), s);
}

}  // namespace

void repack_weight(const uint8_t* src, int64_t src_row_bytes, const float* fp8_scales, int64_t n_scale, GpuWeight& w,
                   cudaStream_t s) {
  w.Kp = (w.K + kPadK - 1) / kPadK * kPadK;
  w.row_bytes = w.Kp * elem_bytes_x2(w.type) / 2;
  const int64_t n_rows = w.n_mat * w.rows;
  NEMOCPU_CUDA_CHECK(cudaMalloc(&w.q, n_rows * w.row_bytes));
  if (w.type == GGML_Q8_0 || w.type == GGML_Q4_0)
    NEMOCPU_CUDA_CHECK(cudaMalloc(&w.d, n_rows * (w.Kp / QK) * sizeof(uint16_t)));
  if (n_rows) {
    repack_kernel<<<(unsigned)n_rows, 128, 0, s>>>(src, src_row_bytes, w.type, w.K, w.Kp, n_rows, w.q, w.row_bytes, w.d);
    NEMOCPU_CUDA_CHECK(cudaGetLastError());
  }
  if (w.type == GGML_I8) {  // one scale per row on the device, whatever the file stored
    std::vector<float> host(n_scale), rows(n_rows);
    NEMOCPU_CUDA_CHECK(cudaMemcpy(host.data(), fp8_scales, n_scale * sizeof(float), cudaMemcpyDefault));
    for (int64_t r = 0; r < n_rows; ++r)
      rows[r] = n_scale == 1 ? host[0] : n_scale == w.n_mat ? host[r / w.rows] : host[r];
    NEMOCPU_CUDA_CHECK(cudaMalloc(&w.s, n_rows * sizeof(float)));
    NEMOCPU_CUDA_CHECK(cudaMemcpyAsync(w.s, rows.data(), n_rows * sizeof(float), cudaMemcpyHostToDevice, s));
    NEMOCPU_CUDA_CHECK(cudaStreamSynchronize(s));  // `rows` dies here
  }
}

void grouped_linear(const GroupedArgs& a, cudaStream_t s) {
  if (a.n_groups <= 0) return;
  const GpuWeight& w = *a.w;
  GemmParams p{w.q, w.d, w.s, w.K, w.Kp, w.rows, w.row_bytes, a.x, a.ldx, 0, a.y, a.ldy, a.relu2 ? 1 : 0, a.grp};
  launch_gemm(p, w.type, dim3((unsigned)((w.rows + BN - 1) / BN), (unsigned)((a.max_rows + BM - 1) / BM),
                              (unsigned)a.n_groups), s);
}

void linear(const LinearArgs& a, cudaStream_t s) {
  if (a.T <= 0) return;
  if (a.w->type == GGML_F32 || a.T <= kMaxGemvTokens || a.slices > 1 || a.mat_idx) {
    gemv(a, s);  // F32 weights stay exact fp32 (tests, norms-sized tensors)
  } else {
    gemm(a, s);
  }
}

}  // namespace cuda
}  // namespace nemocpu
