// The kernel table: one function pointer per kernel. Every CPU variant (generic, avx2,
// avx512, neon) fills one from csrc/kernels/*.cpp compiled with that variant's flags;
// csrc/cpu/dispatch.cpp picks one at run time. The model calls kernels only through it.
// Kernels know shapes and encodings, never layer names; they never allocate.
#pragma once
#include <cstdint>

#include "nemocpu/ggml_types.h"

namespace nemocpu {

// One [rows, K] weight matrix in its on-disk encoding (a view; never owned).
struct WeightMatrix {
  const uint8_t* data = nullptr;   // LAYOUT_ROWS: row r starts at data + r * row_bytes
  int type = GGML_F32;
  int layout = LAYOUT_ROWS;        // LAYOUT_X8 (Q8_0/Q4_0 only): group g of 8 rows at
                                   // data + g * 8 * row_bytes (ggml_types.h)
  int64_t K = 0;                   // input features (ggml ne0)
  int64_t rows = 0;                // output features (ggml ne1)
  int64_t row_bytes = 0;
  const float* scale = nullptr;    // FP8 only: scale of row r = scale[r * scale_stride]
  int64_t scale_stride = 0;        // 0 = one scale for the matrix, 1 = per row
};

// T rows of activations: fp32 always; Q8 blocks too when the weight type dots in int8.
struct Activations {
  const float* x = nullptr;        // [T, ldx]
  int64_t ldx = 0;
  const BlockQ8Act* q = nullptr;   // [T, ldq] blocks (Q8_0 / Q4_0 weights only)
  int64_t ldq = 0;
  int64_t T = 0;
};

// Mamba-2 selective scan over T tokens for heads [h0, h1). dt is already softplus'ed.
struct ScanArgs {
  float* state;                    // [nh, hd, N], updated in place
  const float* x;   int64_t ldx;   // [T, ldx]: head h at x + h*hd
  const float* B;   const float* C; int64_t ldbc;  // [T, ldbc]: group g at B + g*N
  const float* dt;  int64_t lddt;  // [T, lddt]: head h at dt[h]
  const float* A;                  // [nh] = -exp(A_log)
  const float* D;                  // [nh]
  float* y;         int64_t ldy;   // [T, ldy]: head h at y + h*hd
  int64_t T, nh, hd, N, G;
};

// Keys per block of the attention kernel's online softmax (sizes AttnArgs::scratch).
constexpr int64_t kAttnKeyBlock = 32;

// Grouped-query attention (no positional encoding) of the `rep` query heads that share ONE kv
// head, for n_tok consecutive tokens, over the keys [k0, k1) of a KV cache. Causal: token t of
// the tile sees keys [0, n_keys + t). Rows r = t * rep + i (head i of the group).
// Writes this key range's softmax-normalised output, and per row its max score m and
// l = sum exp(score - m); a row that sees no key of the range gets out 0, m -inf, l 0.
// Split-K: calls over disjoint ranges are combined exactly by attention_merge.
struct AttnArgs {
  const float* q; int64_t ldq;     // head i of token t at q + t * ldq + i * hd
  const void* k; const void* v;    // position 0 of this kv head; position j at + j * ld elements
  int kv_type;                     // GGML_F16 | GGML_F32
  int64_t ld, hd, rep, n_tok;
  int64_t n_keys;                  // keys visible to the first token
  int64_t k0, k1;                  // key range of this call
  float scale;
  float* out; int64_t ldo;         // head i of token t at out + t * ldo + i * hd
  float* m; float* l;              // [n_tok * rep]
  float* scratch;                  // (n_tok * rep + hd) * kAttnKeyBlock floats
};

struct KernelTable {
  const char* variant = nullptr;  // "generic", "avx2", ...
  // The LAYOUT_X8 kernels beat the file-layout ones here (SIMD int8 dots: AVX2, NEON dotprod);
  // the portable scalar build runs the file's rows faster, so the engine does not repack for it.
  bool x8_faster = false;

  // y[t*ldy + r] = W[r,:] . x[t,:] for r in [r0, r1), t in [0, T).
  // LAYOUT_X8 matrices: r0 % 8 == 0 and (r1 % 8 == 0 or r1 == rows).
  void (*matmul)(const WeightMatrix& w, int64_t r0, int64_t r1, const Activations& a,
                 float* y, int64_t ldy) = nullptr;
  // the scalar reference of matmul (the spec; tests compare the two)
  void (*matmul_ref)(const WeightMatrix& w, int64_t r0, int64_t r1, const Activations& a,
                     float* y, int64_t ldy) = nullptr;
  // n % 32 == 0
  void (*quantize_q8)(const float* x, int64_t n, BlockQ8Act* out) = nullptr;
  // row r of W as fp32 [K] (embedding lookup; LAYOUT_ROWS: the embedding is never repacked)
  void (*dequant_row)(const WeightMatrix& w, int64_t r, float* out) = nullptr;
  // out = x / sqrt(mean(x^2) + eps) * w
  void (*rmsnorm)(const float* x, const float* w, int64_t n, float eps, float* out) = nullptr;
  // out = rmsnorm per group of `group` channels of (y * silu(z)), times w
  void (*gated_rmsnorm)(const float* y, const float* z, const float* w, int64_t n, int64_t group,
                        float eps, float* out) = nullptr;
  // Causal depthwise conv + bias + SiLU over channels [c0, c1) for T tokens.
  // state [K-1, C] (oldest first) holds the previous pre-conv inputs and is advanced.
  // x [T, ldx], w [C, K] (tap K-1 multiplies the current token), out [T, ldo].
  void (*conv1d_silu)(float* state, const float* x, int64_t ldx, int64_t T, const float* w,
                      const float* bias, int64_t C, int64_t K, int64_t c0, int64_t c1,
                      float* out, int64_t ldo) = nullptr;
  void (*ssm_scan)(const ScanArgs& a, int64_t h0, int64_t h1) = nullptr;
  void (*attention)(const AttnArgs& a) = nullptr;
  // the scalar reference of attention (the spec; needs no scratch)
  void (*attention_ref)(const AttnArgs& a) = nullptr;
  // Exact log-sum-exp merge of n_split partial results of attention over disjoint key ranges:
  // split s wrote rows r (dense, [n_tok * rep, hd]) at o + (s * n_tok * rep + r) * hd and
  // m, l at [s * n_tok * rep + r]. Row r = t * rep + i goes to out + t * ldo + i * hd.
  void (*attention_merge)(const float* o, const float* m, const float* l, int64_t n_split, int64_t n_tok,
                          int64_t rep, int64_t hd, float* out, int64_t ldo) = nullptr;
  // fp32 -> fp16, round to nearest even (KV cache writes)
  void (*to_f16)(const float* x, int64_t n, uint16_t* out) = nullptr;
};

// Defined in csrc/kernels/variant.cpp, once per compiled variant (namespace nemocpu::<v>).
#define NEMOCPU_DECLARE_VARIANT(v) namespace v { void fill_kernel_table(KernelTable& t); }

}  // namespace nemocpu
