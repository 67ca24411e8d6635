// Weight products on the GPU for every type nemocpu reads: F32, F16, BF16, FP8 (E4M3 codes x
// per-row scale), Q8_0 and Q4_0.
//   * repack_weight: GGUF rows -> rows padded to Kp (16-byte aligned), quant codes split from
//     their fp16 block scales, so every kernel loads 16 aligned bytes per lane.
//   * gemv: few tokens (decode): two weight rows per warp, one 32-bit word per lane per step,
//     many words in flight, fp32 math; several products per launch. Memory-bound: weights
//     read once.
//   * gemm: many tokens (prefill): bf16 tensor cores (WMMA, fp32 accumulation); weight tiles
//     are decoded from their stored type into shared memory, activations rounded to bf16.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <mma.h>

#include <algorithm>
#include <cstdint>
#include <utility>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/check.h"
#include "cuda/decode.cuh"
#include "cuda/device_math.cuh"
#include "cuda/kernels.cuh"
#include "cuda/launch.cuh"
#include "nemocpu/ggml_types.h"

namespace nemocpu {
namespace cuda {

namespace {

constexpr int kMaxGemvTokens = 8;  // more tokens: the tensor-core kernel

int64_t elem_bytes_x2(int type) {  // bytes per 2 elements of a padded row
  switch (type) {
    case GGML_F32: return 8;
    case GGML_F16: case GGML_BF16: return 4;
    case GGML_I8: case GGML_Q8_0: return 2;
    case GGML_Q4_0: return 1;
    default: throw std::invalid_argument("CUDA: unsupported weight type " + std::to_string(type));
  }
}

// One 16-byte chunk of a padded row (4, 8, 16 or 32 elements by type) as floats, in element
// order (block scale applied by the caller).
template <int TYPE>
__device__ __forceinline__ void decode_chunk(const uint4 raw, float* w) {
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
  constexpr int n = WordElems<TYPE>::n;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    if constexpr (TYPE == GGML_Q4_0) {  // word j: elements 4j.. (low nibbles) and 16 + 4j..
      float v[8];
      decode_word<TYPE>(words[j], v);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        w[4 * j + i] = v[i];
        w[16 + 4 * j + i] = v[4 + i];
      }
    } else {
      decode_word<TYPE>(words[j], w + n * j);
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
// Few tokens (decode, prefills of <= 8 tokens, F32 weights). Each warp owns kVecRows weight
// rows (or a slice of their K when a matrix has too few rows to fill the GPU: `ksplit` warps of
// a block share the rows and the block sums their partials); each lane reads one 32-bit word
// of each row per step, so a warp reads 128 contiguous bytes per row (one coalesced request),
// and kVecUnroll words per row are requested before the first is used: a multiprocessor keeps tens of
// KB of weight loads in flight, which is what batch-1 decode on an HBM GPU needs (the earlier
// kernel staged x in shared memory first and kept ~4 KB per warp in flight: 1.4 TB/s; one that
// copied the weights to shared memory with cp.async, ~190 KB in flight per multiprocessor, was
// slower than this one: bench/RESULTS.md). The activations are read through L1 (every warp of a
// multiprocessor reads the same few KB).
// Several products of one weight type share a launch (VecBatch): blockIdx.y picks the product;
// blockIdx.z: groups of NT tokens.
//
// Launched as a programmatic dependent (Hopper): the kernel may start while the previous one
// still runs, requests its first weight words (weights never depend on earlier kernels), and
// only then waits for the previous kernel (griddepcontrol.wait) before reading anything that
// kernel wrote (activations, expert ids, routing weights) and before it writes its output.
constexpr int kVecWarps = 8, kVecRows = 2;
constexpr int kVecUnroll = 8;  // words in flight per row and lane (16, at 80 registers: 403 vs 423 tok/s FP8)

struct VecJobDev {
  const uint8_t* q; const uint16_t* d; const float* s;
  int64_t K, Kp, rows, row_bytes;
  const int32_t* mat_idx; int mat;
  const float* x; int64_t ldx;
  float* y; int64_t ldy;
};
VecJobDev dev_job(const VecJob& v) {
  const GpuWeight& w = *v.w;
  return VecJobDev{w.q, w.d, w.s, w.K, w.Kp, w.rows, w.row_bytes, v.mat_idx, v.mat, v.x, v.ldx, v.y, v.ldy};
}
struct VecParams {
  VecJobDev job[kMaxVecJobs];
  int n_jobs, relu2;
  int ksplit;  // warps sharing the rows of a row group (1, 2, 4 or 8)
};

// Activations x[e .. e+3]. GUARD: zero past K (padded weights are zero, but x may hold anything
// there) and no alignment assumed; else a plain 16-byte load.
template <bool GUARD>
__device__ __forceinline__ float4 ld_x4(const float* x, int e, int K) {
  if constexpr (!GUARD) return __ldg(reinterpret_cast<const float4*>(x + e));
  return make_float4(e < K ? x[e] : 0.0f, e + 1 < K ? x[e + 1] : 0.0f, e + 2 < K ? x[e + 2] : 0.0f,
                     e + 3 < K ? x[e + 3] : 0.0f);
}
template <bool GUARD>
__device__ __forceinline__ float2 ld_x2(const float* x, int e, int K) {
  if constexpr (!GUARD) return __ldg(reinterpret_cast<const float2*>(x + e));
  return make_float2(e < K ? x[e] : 0.0f, e + 1 < K ? x[e + 1] : 0.0f);
}
// The activations one word of a row multiplies: word w holds elements 4w.. (FP8, Q8_0), 2w..
// (F16, BF16), w (F32), or, for Q4_0, word m of block b holds 32b + 4m + i (low nibbles) and
// 32b + 16 + 4m + i (high nibbles). Loaded once, used by every row of the warp.
struct WordX { float4 lo, hi; };

template <int TYPE, bool GUARD>
__device__ __forceinline__ WordX load_word_x(const float* x, int w, int K) {
  WordX r;
  if constexpr (TYPE == GGML_F32) {
    r.lo.x = !GUARD || w < K ? x[w] : 0.0f;
  } else if constexpr (TYPE == GGML_F16 || TYPE == GGML_BF16) {
    const float2 v = ld_x2<GUARD>(x, 2 * w, K);
    r.lo.x = v.x;
    r.lo.y = v.y;
  } else if constexpr (TYPE == GGML_I8 || TYPE == GGML_Q8_0) {
    r.lo = ld_x4<GUARD>(x, 4 * w, K);
  } else {
    const int e = (w / 4) * QK + (w % 4) * 4;
    r.lo = ld_x4<GUARD>(x, e, K);
    r.hi = ld_x4<GUARD>(x, e + 16, K);
  }
  return r;
}

// Leading words of a row whose activations all lie below K (no guard needed there).
template <int TYPE>
__device__ __forceinline__ int safe_words(int K) {
  if constexpr (TYPE == GGML_F32) return K;
  else if constexpr (TYPE == GGML_F16 || TYPE == GGML_BF16) return K / 2;
  else if constexpr (TYPE == GGML_Q4_0) return K / QK * 4;
  else return K / 4;
}

// Sum over the elements of word `wd` of weight * x (block scale not applied).
template <int TYPE>
__device__ __forceinline__ float dot_word(uint32_t wd, const WordX& x) {
  float v[WordElems<TYPE>::n];
  decode_word<TYPE>(wd, v);
  if constexpr (WordElems<TYPE>::n == 1) {
    return v[0] * x.lo.x;
  } else if constexpr (WordElems<TYPE>::n == 2) {
    return v[0] * x.lo.x + v[1] * x.lo.y;
  } else if constexpr (WordElems<TYPE>::n == 4) {
    return v[0] * x.lo.x + v[1] * x.lo.y + v[2] * x.lo.z + v[3] * x.lo.w;
  } else {
    return v[0] * x.lo.x + v[1] * x.lo.y + v[2] * x.lo.z + v[3] * x.lo.w + v[4] * x.hi.x + v[5] * x.hi.y +
           v[6] * x.hi.z + v[7] * x.hi.w;
  }
}

// One step of kVecUnroll words per lane and row: all the words requested, then used. FULL: all
// kVecUnroll * 32 words exist (no predicates); GUARD: activations may end inside these words.
template <int TYPE, int NT, bool FULL, bool GUARD>
__device__ __forceinline__ void dot_step(const uint32_t* const (&wrow)[kVecRows], const uint16_t* const (&drow)[kVecRows],
                                         const float* x, int64_t ldx, int K, int w0, int w_end, int lane,
                                         float (&acc)[kVecRows][NT]) {
  constexpr int U = kVecUnroll;
  uint32_t wd[kVecRows][U];
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int w = w0 + u * 32 + lane;
#pragma unroll
    for (int rr = 0; rr < kVecRows; ++rr) wd[rr][u] = FULL || w < w_end ? __ldg(wrow[rr] + w) : 0u;
  }
  pdl_wait();  // from here on, data of earlier kernels (a no-op after the first time)
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int w = w0 + u * 32 + lane;
    if (!FULL && w >= w_end) break;
    float dsc[kVecRows];
#pragma unroll
    for (int rr = 0; rr < kVecRows; ++rr) {
      dsc[rr] = 1.0f;
      if constexpr (TYPE == GGML_Q8_0) dsc[rr] = __half2float(__ushort_as_half(__ldg(drow[rr] + w / 8)));
      if constexpr (TYPE == GGML_Q4_0) dsc[rr] = __half2float(__ushort_as_half(__ldg(drow[rr] + w / 4)));
    }
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const WordX xw = load_word_x<TYPE, GUARD>(x + t * ldx, w, K);
#pragma unroll
      for (int rr = 0; rr < kVecRows; ++rr) {
        const float v = dot_word<TYPE>(wd[rr][u], xw);
        if constexpr (TYPE == GGML_Q8_0 || TYPE == GGML_Q4_0) {
          acc[rr][t] = fmaf(v, dsc[rr], acc[rr][t]);
        } else {
          acc[rr][t] += v;
        }
      }
    }
  }
}

// acc[rr][t] = row (r0 + rr) of job J dotted with token t of x over words [w_begin, w_end) of
// the row (warp-reduced, valid in every lane), FP8 row scale applied.
template <int TYPE, int NT>
__device__ __forceinline__ void dot_rows(const VecJobDev& J, int64_t r0, int w_begin, int w_end, int lane,
                                         float (&acc)[kVecRows][NT]) {
  if (J.mat_idx) pdl_wait();  // the expert id comes from the router
  const int64_t m = J.mat_idx ? J.mat_idx[J.mat] : J.mat;
  const uint32_t* wrow[kVecRows];
  const uint16_t* drow[kVecRows];
#pragma unroll
  for (int rr = 0; rr < kVecRows; ++rr) {
    const int64_t row = m * J.rows + min(r0 + rr, J.rows - 1);  // a missing last row repeats (not written)
    wrow[rr] = reinterpret_cast<const uint32_t*>(J.q + row * J.row_bytes);
    drow[rr] = J.d ? J.d + row * (J.Kp / QK) : nullptr;
  }
#pragma unroll
  for (int rr = 0; rr < kVecRows; ++rr)
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[rr][t] = 0.0f;
  // Unguarded 16-byte activation loads need 16-byte aligned rows; the words past K (or all of
  // them, unaligned) take the guarded path.
  const bool vec = (reinterpret_cast<uintptr_t>(J.x) % 16 == 0) && (J.ldx % 4 == 0);
  const int K = (int)J.K;
  const int w_safe = vec ? max(w_begin, min(w_end, safe_words<TYPE>(K))) : w_begin;
  int w0 = w_begin;
  constexpr int step = 32 * kVecUnroll;
  for (; w0 + step <= w_safe; w0 += step) dot_step<TYPE, NT, true, false>(wrow, drow, J.x, J.ldx, K, w0, w_safe, lane, acc);
  if (w0 < w_safe) dot_step<TYPE, NT, false, false>(wrow, drow, J.x, J.ldx, K, w0, w_safe, lane, acc);
  for (w0 = w_safe; w0 < w_end; w0 += step) dot_step<TYPE, NT, false, true>(wrow, drow, J.x, J.ldx, K, w0, w_end, lane, acc);
#pragma unroll
  for (int rr = 0; rr < kVecRows; ++rr)
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      float v = acc[rr][t];
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      if constexpr (TYPE == GGML_I8) v *= J.s[m * J.rows + min(r0 + rr, J.rows - 1)];
      acc[rr][t] = v;
    }
}

template <int TYPE, int NT>
__global__ void __launch_bounds__(kVecWarps * 32, NT == 1 ? 4 : 1) gemv_kernel(const __grid_constant__ VecParams p) {
  pdl_trigger();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t t0 = (int64_t)blockIdx.z * NT;
  __shared__ float part[kVecWarps][kVecRows][NT];
  float acc[kVecRows][NT];
  VecJobDev J = p.job[blockIdx.y];
  J.x += t0 * J.ldx;
  const int groups = kVecWarps / p.ksplit, ks = warp % p.ksplit;
  const int64_t r0 = ((int64_t)blockIdx.x * groups + warp / p.ksplit) * kVecRows;
  const int W = (int)(J.row_bytes / 4), per = (W + 32 * p.ksplit - 1) / (32 * p.ksplit) * 32;
  if (r0 < J.rows) {
    dot_rows<TYPE, NT>(J, r0, min(W, ks * per), min(W, (ks + 1) * per), lane, acc);
    if (lane == 0)
#pragma unroll
      for (int rr = 0; rr < kVecRows; ++rr)
#pragma unroll
        for (int t = 0; t < NT; ++t) part[warp][rr][t] = acc[rr][t];
  }
  pdl_wait();  // (every thread: the writes below follow the previous kernel)
  __syncthreads();
  for (int i = threadIdx.x; i < groups * kVecRows * NT; i += blockDim.x) {
    const int g = i / (kVecRows * NT), rr = i / NT % kVecRows, t = i % NT;
    const int64_t row = ((int64_t)blockIdx.x * groups + g) * kVecRows + rr;
    if (row >= J.rows) continue;
    float v = 0.0f;
    for (int k = 0; k < p.ksplit; ++k) v += part[g * p.ksplit + k][rr][t];
    if (p.relu2) v = v > 0.0f ? v * v : 0.0f;
    J.y[(t0 + t) * J.ldy + row] = v;
  }
}

// Blocks per multiprocessor the gemv reaches (registers bound it; measured by the runtime).
template <int TYPE, int NT>
int gemv_blocks_per_sm() {
  static int n = 0;
  if (!n) {
    NEMOCPU_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, gemv_kernel<TYPE, NT>, kVecWarps * 32, 0));
    n = std::max(n, 1);
  }
  return n;
}

template <int TYPE, int NT>
void launch_gemv_t(VecParams p, int64_t max_rows, int64_t groups_of_nt, cudaStream_t s) {
  // Split K until the launch fills the resident warps once (small matrices: the router's 128
  // rows, the 2688-row output projections), keeping >= 4 words per lane.
  const int64_t want = (int64_t)sm_count() * gemv_blocks_per_sm<TYPE, NT>() * kVecWarps;
  int64_t W = p.job[0].row_bytes / 4;  // the shortest row of the launch sets the limit
  for (int j = 1; j < p.n_jobs; ++j) W = std::min(W, p.job[j].row_bytes / 4);
  int64_t warps = (max_rows + kVecRows - 1) / kVecRows * p.n_jobs * groups_of_nt;
  p.ksplit = 1;
  while (p.ksplit < kVecWarps && warps < want && W / (2 * p.ksplit) >= 32 * 4) {
    p.ksplit *= 2;
    warps *= 2;
  }
  const int64_t rows_per_block = (int64_t)(kVecWarps / p.ksplit) * kVecRows;
  const dim3 grid((unsigned)((max_rows + rows_per_block - 1) / rows_per_block), (unsigned)p.n_jobs,
                  (unsigned)groups_of_nt);
  launch_pdl(gemv_kernel<TYPE, NT>, grid, dim3(kVecWarps * 32), s, p);
}

template <int TYPE>
void launch_gemv(const VecParams& p, int nt, int64_t max_rows, int64_t groups, cudaStream_t s) {
  switch (nt) {
    case 1: launch_gemv_t<TYPE, 1>(p, max_rows, groups, s); break;
    case 2: launch_gemv_t<TYPE, 2>(p, max_rows, groups, s); break;
    case 4: launch_gemv_t<TYPE, 4>(p, max_rows, groups, s); break;
    default: launch_gemv_t<TYPE, 8>(p, max_rows, groups, s); break;
  }
}

// ---- FP8 matrix-vector on the tensor cores (Hopper, one token) ---------------------------
// The gemv above keeps its weights in flight in registers (occupancy-bound, ~2.2 TB/s at best
// on an H200). Here (sm_90+, one token, FP8 rows of at most 4096 codes) the weights stream
// into shared memory through the bulk-copy engine and the tensor cores do the products:
//   * Each block owns a contiguous run of the launch's 16-row groups (balanced by bytes). One
//     producer lane copies a whole group (16 consecutive rows: one contiguous range) plus its
//     16 row scales into a ring of stages with cp.async.bulk (up to ~200 KB of stages per
//     multiprocessor, no registers held; how many groups are in flight at once: launch()). It
//     requests the first groups before waiting for the previous kernel (PDL), except for
//     routed experts, whose ids come from it.
//   * 8 consumer warps split a group's K in 64-byte steps. Lane (g, t) takes bytes 16t..16t+15
//     of rows g and g + 8: the A fragments of four m16n8k16 products after the exact e4m3x2 ->
//     f16x2 conversion (the dot product is indifferent to the order of k, so the bytes of a
//     lane need no shuffling). B has two live columns, x * 2^sh split into f16 hi + lo, with
//     max |x| * 2^sh in [2^14, 2^15): every product is exact, the sum fp32 (5-7e-7 relative to
//     float64 on the model's shapes; the fp32 gemv: 1-2e-7).
//   * The warps' partial sums meet in shared memory; y = (hi + lo) * 2^-sh * row scale.
//   * Two blocks per multiprocessor where two stages of 16 rows still fit each (rows up to
//     ~2.9 KB): a group's consumers wait on one another (barrier, slowest warp), so two groups
//     in flight per multiprocessor is what closes part of the gap to the copy engine.
// bench/cuda_gemv_lab.cu (cold L2, graph-replayed PDL launches, H200; us, fp32 gemv -> this ->
// bulk copy alone): MoE up 18.0 -> 13.6 -> 10.2, in_proj 15.7 -> 10.6 -> 6.4, lm_head 129.5 ->
// 84.8 -> 78.2; one block per multiprocessor: MoE down 19.0 -> 18.6 -> 10.3, out_proj 8.4 -> 6.4
// -> 2.7. Measured and not kept (RESULTS.md): no conversion at all (timing only, 2-4% faster: the
// conversion is not the limit), integer decode for half the rows, four accumulator chains,
// groups of 8 rows so that large rows fit two blocks, Mamba's gated norm in the x staging.
namespace tc {

constexpr int kCons = 8;         // consumer warps
constexpr int kMaxK = 4096;      // codes per row (x split held in registers, then shared memory)
constexpr int kMaxStages = 8;

__device__ __forceinline__ uint32_t smem_u32(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ void mbar_init(uint64_t* b, int n) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(b)), "r"(n));
}
__device__ __forceinline__ void mbar_expect_tx(uint64_t* b, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(b)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* b) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_u32(b)) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* b, uint32_t parity) {
  asm volatile(
      "{\n .reg .pred p;\n TC_WAIT%=:\n mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n @!p bra TC_WAIT%=;\n}" ::"r"(
          smem_u32(b)),
      "r"(parity)
      : "memory");
}
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, uint32_t bytes, uint64_t* b) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                   smem_u32(dst)),
               "l"(src), "r"(bytes), "r"(smem_u32(b))
               : "memory");
}
// The consumer warps of one team (named barrier 1 + team; the producer warp never joins).
__device__ __forceinline__ void consumer_sync(int team) {
  if (team == 0)
    asm volatile("bar.sync 1, %0;" ::"n"(kCons * 32) : "memory");
  else
    asm volatile("bar.sync 2, %0;" ::"n"(kCons * 32) : "memory");
}
__device__ __forceinline__ void mma16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
#endif

// Codes 0 and 1 of a word as the f16x2 register of a fragment (lower k in the low half), exact.
__device__ __forceinline__ uint32_t e4m3x2_f16x2(uint32_t v) {
  const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(v & 0xffffu), __NV_E4M3);
  return (uint32_t)h.x | ((uint32_t)h.y << 16);
}

struct Params {
  VecJobDev job[kMaxVecJobs];
  int first[kMaxVecJobs + 1];      // first row group of each job
  int64_t byte0[kMaxVecJobs + 1];  // first byte of each job in the launch's weight stream
  int n_jobs, relu2, ns, slot_bytes, kx;
  int depth;  // groups a block's producer keeps in flight (0: as many as stages are free)
  int64_t total_bytes;
  // Mamba in_proj epilogue (conv_w null: none): output rows [conv_row0, conv_row0 + conv_C) of
  // job 0 are the xBC channels; each also gets its causal conv + SiLU (into conv_out) and its
  // conv state moved, as conv_kernel for one token does.
  const float* conv_w; const float* conv_b;
  float* conv_state; float* conv_out;
  int64_t conv_row0, conv_C;
};
constexpr int kFusedConvK = 4;  // conv widths the epilogue takes (Nemotron-H: 4)

// The 16 row scales of a group ride along with its rows when they are whole aligned 16-byte
// pieces (always, for row counts that are multiples of 4); else the consumers read them.
__device__ __forceinline__ bool scales_copied(const VecJobDev& J, int64_t m, int64_t r0, int n) {
  return n % 4 == 0 && (m * J.rows + r0) % 4 == 0;
}
__device__ __forceinline__ int job_of_group(const Params& p, int g) {
  int j = 0;
  while (j + 1 < p.n_jobs && g >= p.first[j + 1]) ++j;
  return j;
}
// The first group starting at or after byte b of the stream.
__device__ __forceinline__ int group_at_byte(const Params& p, int64_t b) {
  for (int j = 0; j < p.n_jobs; ++j)
    if (b < p.byte0[j + 1]) {
      const int64_t gb = 16 * p.job[j].row_bytes;
      return p.first[j] + (int)((b - p.byte0[j] + gb - 1) / gb);
    }
  return p.first[p.n_jobs];
}

// TEAMS consumer teams of kCons warps take alternate groups, each with its own x split and
// sums: several groups consumed at once within a block (as two blocks per SM do, for rows
// too large for two blocks).
template <int TEAMS>
__global__ void __launch_bounds__((TEAMS * kCons + 1) * 32, TEAMS == 1 ? 2 : 1) fp8_gemv_kernel(const __grid_constant__ Params p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  pdl_trigger();
  extern __shared__ __align__(128) uint8_t sm[];
  // [ns stages][slot_bytes] | per team: x split [2][kx] f16 | per team: partial sums
  // [2][kCons][16] and maxima [kCons] (2 kCons floats) | full[ns], empty[ns] barriers | row scales [ns][16]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, team = min(warp / kCons, TEAMS - 1);
  __half* xs_all = reinterpret_cast<__half*>(sm + (size_t)p.ns * p.slot_bytes);
  float* red_all = reinterpret_cast<float*>(xs_all + TEAMS * 2 * p.kx);
  constexpr int kTeamFloats = 2 * kCons * 16 + 2 * kCons;
  __half* xs = xs_all + team * 2 * p.kx;
  float* red = red_all + team * kTeamFloats;
  float* wmax = red + 2 * kCons * 16;
  uint64_t* full = reinterpret_cast<uint64_t*>(red_all + TEAMS * kTeamFloats);
  uint64_t* empty = full + p.ns;
  float* sscale = reinterpret_cast<float*>(empty + p.ns);
  const int g0 = group_at_byte(p, p.total_bytes * blockIdx.x / gridDim.x);
  const int g1 = group_at_byte(p, p.total_bytes * (blockIdx.x + 1) / gridDim.x);
  if (threadIdx.x == 0) {
    for (int s = 0; s < p.ns; ++s) {
      mbar_init(full + s, 1);
      mbar_init(empty + s, kCons);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  if (warp == TEAMS * kCons) {  // producer
    if (lane == 0) {
      bool waited = false;
      for (int g = g0; g < g1; ++g) {
        const int i = g - g0, s = i % p.ns, j = job_of_group(p, g);
        if (i >= p.ns) mbar_wait(empty + s, ((i / p.ns) & 1) ^ 1);  // the stage's last use is read
        if (p.depth > 0 && p.depth < p.ns && i >= p.depth) {  // group i - depth has landed
          const int d = i - p.depth;
          mbar_wait(full + d % p.ns, (d / p.ns) & 1);
        }
        const VecJobDev& J = p.job[j];
        if (J.mat_idx && !waited) {  // the expert id comes from the router
          pdl_wait();
          waited = true;
        }
        const int64_t m = J.mat_idx ? J.mat_idx[J.mat] : J.mat;
        const int64_t r0 = (int64_t)(g - p.first[j]) * 16;
        const int n = (int)min((int64_t)16, J.rows - r0);
        const uint32_t bytes = (uint32_t)(n * J.row_bytes);
        const uint32_t sbytes = scales_copied(J, m, r0, n) ? 4u * n : 0u;
        mbar_expect_tx(full + s, bytes + sbytes);
        bulk_copy(sm + (size_t)s * p.slot_bytes, J.q + (m * J.rows + r0) * J.row_bytes, bytes, full + s);
        if (sbytes) bulk_copy(sscale + 16 * s, J.s + m * J.rows + r0, sbytes, full + s);
      }
    }
    return;
  }
  pdl_wait();  // x (and the outputs) belong to earlier kernels
  const int tid = threadIdx.x % (kCons * 32), wt = warp % kCons, gi = lane >> 2, t = lane & 3;
  int cur = -1;
  int64_t m = 0;
  float unscale = 1.0f;
  for (int g = g0 + team; g < g1; g += TEAMS) {
    const int i = g - g0, s = i % p.ns, j = job_of_group(p, g);
    const VecJobDev& J = p.job[j];
    if (j != cur) m = J.mat_idx ? J.mat_idx[J.mat] : J.mat;
    if (j != cur && !(cur >= 0 && p.job[cur].x == J.x && p.job[cur].K == J.K)) {  // a new x: scale, split
      const int K = (int)J.K;
      constexpr int kPer = kMaxK / (kCons * 32);
      float xv[kPer];
      float mx = 0.0f;
#pragma unroll
      for (int u = 0; u < kPer; ++u) {
        const int k = tid + u * kCons * 32;
        xv[u] = k < K ? J.x[k] : 0.0f;
        mx = fmaxf(mx, fabsf(xv[u]));
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      consumer_sync(team);  // every warp of the team is done with the previous x
      if (lane == 0) wmax[wt] = mx;
      consumer_sync(team);
      mx = 0.0f;
      for (int w = 0; w < kCons; ++w) mx = fmaxf(mx, wmax[w]);
      // 2^sh * max|x| in [2^14, 2^15): no f16 overflow; inf / nan x keep sh = 0 and propagate
      const int sh = mx > 0.0f && mx <= 3.0e38f ? max(-100, min(100, 14 - ilogbf(mx))) : 0;
      const float sc = __int_as_float((127 + sh) << 23);
      unscale = __int_as_float((127 - sh) << 23);
#pragma unroll
      for (int u = 0; u < kPer; ++u) {
        const int k = tid + u * kCons * 32;
        if (k < p.kx) {
          const float v = xv[u] * sc;
          const __half h = __float2half_rn(v);
          xs[k] = h;
          xs[p.kx + k] = __float2half_rn(v - __half2float(h));
        }
      }
      consumer_sync(team);
    }
    cur = j;
    const int64_t r0 = (int64_t)(g - p.first[j]) * 16;
    const int n_rows = (int)min((int64_t)16, J.rows - r0);
    // conv epilogue: this layer's own weights and state, loaded now (their latency hides
    // behind the group's products)
    const int64_t cc = r0 + tid - p.conv_row0;
    const bool conv_row = p.conv_w && tid < n_rows && cc >= 0 && cc < p.conv_C;
    float cw[kFusedConvK], cst[kFusedConvK - 1], cb = 0.0f;
    if (conv_row) {
#pragma unroll
      for (int k = 0; k < kFusedConvK; ++k) cw[k] = p.conv_w[cc * kFusedConvK + k];
#pragma unroll
      for (int k = 0; k < kFusedConvK - 1; ++k) cst[k] = p.conv_state[k * p.conv_C + cc];
      cb = p.conv_b[cc];
    }
    mbar_wait(full + s, (i / p.ns) & 1);
    float srow = 0.0f;  // read before the stage is released
    if (tid < n_rows) srow = scales_copied(J, m, r0, n_rows) ? sscale[16 * s + tid] : J.s[m * J.rows + r0 + tid];
    const uint8_t* base = sm + (size_t)s * p.slot_bytes;
    const int rb = (int)J.row_bytes, nks = (rb + 63) / 64;
    float c[4] = {0.f, 0.f, 0.f, 0.f};
    const __half* xcol = xs + (gi == 0 ? 0 : p.kx);
    for (int ks = wt; ks < nks; ks += kCons) {
      const int off = ks * 64 + 16 * t;
      const bool in = off + 16 <= rb;  // rows of 32-byte multiples: the last step may be half
      // rows >= n_rows of the stage hold stale bytes: their sums are never written
      const uint4 ra = in ? *reinterpret_cast<const uint4*>(base + gi * rb + off) : make_uint4(0, 0, 0, 0);
      const uint4 rc = in ? *reinterpret_cast<const uint4*>(base + (gi + 8) * rb + off) : make_uint4(0, 0, 0, 0);
      uint4 bx = make_uint4(0, 0, 0, 0), by = make_uint4(0, 0, 0, 0);
      if (gi < 2) {  // B columns 0 (hi) and 1 (lo); the other six are zero
        bx = *reinterpret_cast<const uint4*>(xcol + off);
        by = *reinterpret_cast<const uint4*>(xcol + off + 8);
      }
      const uint32_t wa[4] = {ra.x, ra.y, ra.z, ra.w}, wc[4] = {rc.x, rc.y, rc.z, rc.w};
      const uint32_t xb[8] = {bx.x, bx.y, bx.z, bx.w, by.x, by.y, by.z, by.w};
#pragma unroll
      for (int q = 0; q < 4; ++q)
        mma16816(c, e4m3x2_f16x2(wa[q]), e4m3x2_f16x2(wc[q]), e4m3x2_f16x2(wa[q] >> 16), e4m3x2_f16x2(wc[q] >> 16),
                 xb[2 * q], xb[2 * q + 1]);
    }
    __syncwarp();
    if (lane == 0) mbar_arrive(empty + s);  // the stage may be refilled
    float* rd = red + ((i / TEAMS) & 1) * kCons * 16;  // two buffers: no barrier after the sums are read
    if (t == 0) {
      rd[wt * 16 + gi] = c[0] + c[1];
      rd[wt * 16 + gi + 8] = c[2] + c[3];
    }
    consumer_sync(team);
    if (tid < n_rows) {
      float v = 0.0f;
#pragma unroll
      for (int w = 0; w < kCons; ++w) v += rd[w * 16 + tid];
      v = v * unscale * srow;
      if (p.relu2) v = v > 0.0f ? v * v : 0.0f;
      J.y[r0 + tid] = v;
      if (conv_row) {  // conv_kernel's arithmetic and order: bias, then taps oldest first
        float acc = cb;
#pragma unroll
        for (int k = 0; k < kFusedConvK - 1; ++k) acc += cw[k] * cst[k];
        acc += cw[kFusedConvK - 1] * v;
        p.conv_out[cc] = silu(acc);
#pragma unroll
        for (int k = 0; k + 1 < kFusedConvK - 1; ++k) p.conv_state[k * p.conv_C + cc] = cst[k + 1];
        p.conv_state[(kFusedConvK - 2) * p.conv_C + cc] = v;
      }
    }
  }
#else
  __trap();  // launched only on sm_90+ (usable())
#endif
}

size_t fixed_smem(int kx, int teams) {
  return teams * (2 * (size_t)kx * 2 + (2 * kCons * 16 + 2 * kCons) * 4) + 2 * kMaxStages * 8 + kMaxStages * 16 * 4;
}

bool enabled() {
  static const bool on = current_device_attr(cudaDevAttrComputeCapabilityMajor) >= 9 && !env_off("NEMOCPU_CUDA_FP8_TC");
  return on;
}

// One token of FP8 products whose rows hold at most kMaxK codes.
bool usable(const VecJob* jobs, int n, int64_t T) {
  if (T != 1 || !enabled()) return false;
  for (int j = 0; j < n; ++j)
    if (jobs[j].w->type != GGML_I8 || jobs[j].w->Kp > kMaxK || jobs[j].w->rows <= 0) return false;
  return true;
}

// blocks_per_sm: 1 or 2 (0: NEMOCPU_CUDA_FP8_TC_BLOCKS, default 2), where shared memory allows;
// teams: consumer teams per block where one block per SM remains (0: NEMOCPU_CUDA_FP8_TC_TEAMS,
// default 2), with at least three stages.
// conv: the Mamba in_proj's conv epilogue (one job; fusable_conv), or null.
void launch(const VecJob* jobs, int n, bool relu2, cudaStream_t s, int blocks_per_sm = 0, int teams = 0,
            const MambaArgs* conv = nullptr) {
  static const int cap = current_device_attr(cudaDevAttrMaxSharedMemoryPerBlockOptin);
  static const int per_sm = current_device_attr(cudaDevAttrMaxSharedMemoryPerMultiprocessor);
  static bool raised = false;
  if (!raised) {
    NEMOCPU_CUDA_CHECK(cudaFuncSetAttribute(fp8_gemv_kernel<1>, cudaFuncAttributeMaxDynamicSharedMemorySize, cap));
    NEMOCPU_CUDA_CHECK(cudaFuncSetAttribute(fp8_gemv_kernel<2>, cudaFuncAttributeMaxDynamicSharedMemorySize, cap));
    raised = true;
  }
  static const int env_blocks = env_int("NEMOCPU_CUDA_FP8_TC_BLOCKS", 2), env_teams = env_int("NEMOCPU_CUDA_FP8_TC_TEAMS", 2);
  if (blocks_per_sm <= 0) blocks_per_sm = env_blocks;
  if (teams <= 0) teams = env_teams;
  int64_t max_rb = 0, max_kp = 0;
  for (int j = 0; j < n; ++j) {
    max_rb = std::max(max_rb, jobs[j].w->row_bytes);
    max_kp = std::max(max_kp, jobs[j].w->Kp);
  }
  const int kx = (int)((max_kp + 63) / 64 * 64);
  // Two blocks per multiprocessor (two groups consumed at once) where each still gets two
  // stages: rows up to ~2.9 KB (in_proj, MoE up, lm_head: 1.1-1.4x faster than one block,
  // bench/RESULTS.md). Larger rows: one block with two consumer teams where three stages fit.
  const int64_t half = per_sm / 2 - 1024;  // the runtime reserves 1 KB per block
  const auto stages = [&](int64_t budget, int t) { return (budget - (int64_t)fixed_smem(kx, t)) / (16 * max_rb); };
  blocks_per_sm = blocks_per_sm >= 2 && stages(half, 1) >= 2 ? 2 : 1;
  teams = blocks_per_sm == 1 && teams >= 2 && stages(cap, 2) >= 3 ? 2 : 1;
  Params p{};
  p.n_jobs = n;
  p.relu2 = relu2;
  p.kx = kx;
  p.slot_bytes = (int)(16 * max_rb);
  p.ns = (int)std::min<int64_t>(kMaxStages, stages(blocks_per_sm == 2 ? half : cap, teams));
  if (p.ns < 2) throw std::runtime_error("CUDA FP8 gemv: not enough shared memory for two stages");
  int groups = 0;
  int64_t bytes = 0;
  for (int j = 0; j < n; ++j) {
    const GpuWeight& w = *jobs[j].w;
    p.job[j] = dev_job(jobs[j]);
    p.first[j] = groups;
    p.byte0[j] = bytes;
    groups += (int)((w.rows + 15) / 16);
    bytes += w.rows * w.row_bytes;
  }
  p.first[n] = groups;
  p.byte0[n] = bytes;
  p.total_bytes = bytes;
  if (conv) {
    p.conv_w = conv->conv_w;
    p.conv_b = conv->conv_b;
    p.conv_state = conv->conv_state;
    p.conv_out = conv->xbc;
    p.conv_row0 = conv->nh * conv->hd;  // [z | xBC | dt]
    p.conv_C = conv->C;
  }
  // Two blocks per SM: one group in flight per block. Requests that all start together also land
  // together, late; the consumers then work through every group at the end instead of while the
  // rest streams (lab: in_proj 11.8 -> 10.2 us, routed MoE down 14.0 -> 12.2). One block per SM
  // keeps every stage in flight: its stages fill during the small kernel before it (out_proj
  // after the scan). NEMOCPU_CUDA_FP8_TC_DEPTH (two blocks per SM) and _DEPTH_1B (one): groups
  // in flight per block, 0 = as many as stages are free.
  static const int depth2 = env_int("NEMOCPU_CUDA_FP8_TC_DEPTH", 1), depth1 = env_int("NEMOCPU_CUDA_FP8_TC_DEPTH_1B", 0);
  p.depth = blocks_per_sm == 2 ? depth2 : depth1;
  const size_t smem = (size_t)p.ns * p.slot_bytes + fixed_smem(p.kx, teams);
  const int grid = std::min(groups, sm_count() * blocks_per_sm);
  if (teams == 2)
    launch_pdl_smem(fp8_gemv_kernel<2>, dim3((unsigned)grid), dim3((2 * kCons + 1) * 32), smem, s, p);
  else
    launch_pdl_smem(fp8_gemv_kernel<1>, dim3((unsigned)grid), dim3((kCons + 1) * 32), smem, s, p);
}

// The in_proj's conv can ride in the epilogue: one token, one job whose y is conv->u, the conv
// width the epilogue holds (NEMOCPU_CUDA_FUSED_CONV=0: never, for A/B measurements).
bool fusable_conv(const MambaArgs& c, const VecJob& j) {
  static const bool off = env_off("NEMOCPU_CUDA_FUSED_CONV");
  return !off && c.T == 1 && c.K == kFusedConvK && j.y == c.u && j.w->rows >= c.nh * c.hd + c.C;
}

}  // namespace tc

// T tokens of up to kMaxVecJobs products of one type, in launches of 8, 4, 2 and 1 tokens.
// The fp32 kernel (gemv_kernel) for every type and token count.
void gemv_fp32(const VecJob* jobs, int n, bool relu2, int64_t T, cudaStream_t s) {
  const int type = jobs[0].w->type;
  VecParams p{};
  p.n_jobs = n;
  p.relu2 = relu2;
  int64_t max_rows = 0;
  for (int j = 0; j < n; ++j) {
    p.job[j] = dev_job(jobs[j]);
    max_rows = std::max(max_rows, jobs[j].w->rows);
  }
  // all whole groups of 8 tokens in one launch (grid.z), then the rest in 4, 2, 1
  for (int64_t t0 = 0; t0 < T;) {
    const int64_t left = T - t0;
    const int nt = left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1;
    const int64_t groups = nt == 8 ? std::min<int64_t>(left / 8, 65535) : 1;
    for (int j = 0; j < n; ++j) {
      p.job[j].x = jobs[j].x + t0 * jobs[j].ldx;
      p.job[j].y = jobs[j].y + t0 * jobs[j].ldy;
    }
    switch (type) {
      case GGML_F32: launch_gemv<GGML_F32>(p, nt, max_rows, groups, s); break;
      case GGML_F16: launch_gemv<GGML_F16>(p, nt, max_rows, groups, s); break;
      case GGML_BF16: launch_gemv<GGML_BF16>(p, nt, max_rows, groups, s); break;
      case GGML_I8: launch_gemv<GGML_I8>(p, nt, max_rows, groups, s); break;
      case GGML_Q8_0: launch_gemv<GGML_Q8_0>(p, nt, max_rows, groups, s); break;
      case GGML_Q4_0: launch_gemv<GGML_Q4_0>(p, nt, max_rows, groups, s); break;
      default: throw std::invalid_argument("CUDA gemv: unsupported type");
    }
    t0 += nt * groups;
  }
}

void gemv(const VecJob* jobs, int n, bool relu2, int64_t T, cudaStream_t s) {
  if (tc::usable(jobs, n, T)) return tc::launch(jobs, n, relu2, s);
  gemv_fp32(jobs, n, relu2, T, s);
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

// Weights whose tile values are exact in bf16 need no low half: BF16 itself, and FP8 codes (3
// mantissa bits) when the per-row scale multiplies the product instead. Their products take 2
// tensor-core steps instead of 3.
template <int TYPE> constexpr bool kExactBf16 = TYPE == GGML_BF16 || TYPE == GGML_I8;

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
  } else if constexpr (TYPE == GGML_I8) {  // the row scale is applied to the product (kExactBf16)
    decode_chunk<TYPE>(__ldg(reinterpret_cast<const uint4*>(r + k0)), w);
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
      for (int i = 0; i < 16; ++i) {
        if constexpr (kExactBf16<TYPE>) {
          Bh[n * LDS + kk + i] = __float2bfloat16(w[i]);
        } else {
          split_bf16(w[i], Bh[n * LDS + kk + i], Bl[n * LDS + kk + i]);
        }
      }
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
        if constexpr (!kExactBf16<TYPE>) wmma::load_matrix_sync(fbl[j], Bl + (wn * 32 + j * 16) * LDS + ks, LDS);
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          wmma::mma_sync(acc[i][j], fal[i], fb[j], acc[i][j]);
          if constexpr (!kExactBf16<TYPE>) wmma::mma_sync(acc[i][j], fa[i], fbl[j], acc[i][j]);
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
      if constexpr (TYPE == GGML_I8) v *= s[row];
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

void gemv_batch(const VecBatch& b, int64_t T, cudaStream_t s) {
  if (T <= 0) return;
  for (size_t j0 = 0; j0 < b.jobs.size();) {  // runs of one type, kMaxVecJobs at most
    size_t j1 = j0 + 1;
    while (j1 < b.jobs.size() && j1 - j0 < (size_t)kMaxVecJobs && b.jobs[j1].w->type == b.jobs[j0].w->type) ++j1;
    gemv(b.jobs.data() + j0, (int)(j1 - j0), b.relu2, T, s);
    j0 = j1;
  }
}

void linear(const LinearArgs& a, cudaStream_t s) {
  if (a.T <= 0) return;
  if (a.w->type == GGML_F32 || a.T <= kMaxGemvTokens) {  // F32 weights stay exact fp32 (tests, router)
    const VecJob j{a.w, nullptr, a.mat, a.x, a.ldx, a.y, a.ldy};
    if (a.conv && tc::usable(&j, 1, a.T) && tc::fusable_conv(*a.conv, j))
      return tc::launch(&j, 1, a.relu2, s, 0, 0, a.conv);
    gemv(&j, 1, a.relu2, a.T, s);
  } else {
    gemm(a, s);
  }
  if (a.conv) mamba_conv(*a.conv, s);
}

}  // namespace cuda
}  // namespace nemocpu
