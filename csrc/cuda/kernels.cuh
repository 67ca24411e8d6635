// CUDA kernels of the Nemotron-H forward pass, as host-side launchers. Every launcher
// enqueues on the given stream and never synchronizes, so a decode step can be captured
// in a CUDA graph. Shapes follow the CPU kernel table (csrc/include/nemocpu/kernels.h).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

namespace nemocpu {
namespace cuda {

constexpr int kPadK = 32;  // weight rows are padded (with zeros) to a multiple of this

// A weight matrix (or a stack of n_mat matrices) in the GPU layout made by repack_weight:
// rows padded to Kp elements; Q8_0/Q4_0 split into codes `q` and fp16 block scales `d`.
struct GpuWeight {
  int type = 0;                 // ggml type id (F32, F16, BF16, Q8_0, Q4_0, I8 = FP8)
  int64_t K = 0, Kp = 0, rows = 0, n_mat = 1;
  uint8_t* q = nullptr;         // [n_mat * rows, row_bytes]
  int64_t row_bytes = 0;        // bytes of one padded row in q
  uint16_t* d = nullptr;        // Q8_0 / Q4_0: fp16 scale per 32 elements, [n_mat * rows, Kp / 32]
  float* s = nullptr;           // FP8: scale per row, [n_mat * rows]
};

// Mamba-2 (reference/nemotron-h.md §3.3).
struct MambaArgs {
  const float* u; int64_t ldu;       // in_proj output [T, ldu] = [z | xBC | dt]
  float* conv_state;                 // [K-1, C]
  const float* conv_w; const float* conv_b;  // [C, K], [C]
  float* xbc;                        // [T, C] conv + SiLU output
  float* ssm_state;                  // [nh, hd, N]
  const float* dt_bias; const float* A; const float* D;
  float* y;                          // [T, di]
  int64_t T, C, K, nh, hd, N, G;
  float dt_floor;                    // 0 = no clamp
  // One token: the scan also runs the gated RMSNorm (norm_out = gated_rmsnorm(y, z) with
  // norm_w), done by the last block of each group to finish (group_count: G counters, zero
  // between launches). norm_out null: gated_rmsnorm is launched separately.
  const float* norm_w = nullptr; float norm_eps = 0.0f;
  float* norm_out = nullptr; int32_t* group_count = nullptr;
  // Many tokens: scratch of the chunked scan (ssd_scratch_floats; null: the recurrent scan).
  float* ssd = nullptr;
};
// Floats of MambaArgs::ssd for up to T tokens (per-chunk states, running sums, chunk decays).
size_t ssd_scratch_floats(int64_t T, int64_t nh, int64_t hd, int64_t N);

// y[t*ldy + r] = (W_mat . x[t*ldx + :K])[r] for T tokens; x must be finite up to K (not Kp).
struct LinearArgs {
  const GpuWeight* w;
  int mat = 0;                       // matrix of a stack (experts)
  const float* x; int64_t ldx;
  float* y; int64_t ldy;
  int64_t T = 1;
  bool relu2 = false;                // y = relu(y)^2 (MoE / MLP up projections)
  // Mamba in_proj: y is conv->u; then the causal conv of its xBC columns (mamba_conv). Fused
  // into the FP8 tensor-core decode product's epilogue where that runs (one launch less).
  const MambaArgs* conv = nullptr;
};

// Matrix-vector products launched together (decode: attention q/k/v, the MoE's routed experts
// and its shared expert): runs of one weight type share a launch, up to kMaxVecJobs per launch.
constexpr int kMaxVecJobs = 8;
struct VecJob {
  const GpuWeight* w = nullptr;
  const int32_t* mat_idx = nullptr;  // matrix = mat_idx[mat], read on the device (MoE routing),
  int mat = 0;                       // or matrix `mat` when mat_idx is null
  const float* x = nullptr; int64_t ldx = 0;
  float* y = nullptr; int64_t ldy = 0;
};
struct VecBatch {
  std::vector<VecJob> jobs;
  bool relu2 = false;
};
void gemv_batch(const VecBatch& b, int64_t T, cudaStream_t s);

// Raw GGUF bytes (device pointer; rows of src_row_bytes) -> the GPU layout, in place in w.
void repack_weight(const uint8_t* src, int64_t src_row_bytes, const float* fp8_scales, int64_t n_scale,
                   GpuWeight& w, cudaStream_t s);

// Chooses the matrix-vector kernel (few tokens or F32 weights: fp32 math) or the tensor-core
// matrix-matrix kernel (bf16 pairs, fp32 accumulation) and launches it.
void linear(const LinearArgs& a, cudaStream_t s);

void embed(const GpuWeight& w, const int32_t* tokens, int64_t T, float* x, int64_t E, cudaStream_t s);
// x += y (skipped when y is null: first block), then out = rmsnorm(x) * w; T rows of n.
void add_rmsnorm(float* x, const float* y, const float* w, int64_t T, int64_t n, float eps, float* out,
                 cudaStream_t s);

// Expert products of a prefill in one launch: group g multiplies matrix grp[3g] by the
// activation rows [grp[3g+1], grp[3g+1] + grp[3g+2]) of x, writing the same rows of y.
struct GroupedArgs {
  const GpuWeight* w;
  const int32_t* grp; int n_groups; int64_t max_rows;
  const float* x; int64_t ldx;
  float* y; int64_t ldy;
  bool relu2 = false;
};
void grouped_linear(const GroupedArgs& a, cudaStream_t s);

void mamba_conv(const MambaArgs& a, cudaStream_t s);
void mamba_scan(const MambaArgs& a, cudaStream_t s);
// out = groupwise rmsnorm(y * silu(z)) * w, z = u[:, :di]
void gated_rmsnorm(const float* y, const float* u, int64_t ldu, const float* w, int64_t T, int64_t di,
                   int64_t group, float eps, float* out, cudaStream_t s);

// Attention: KV rows of kv_width values (f16 or f32) at positions n_past + t.
void kv_write(const float* k, const float* v, int64_t T, int64_t kvw, const int32_t* n_past, void* kc,
              void* vc, bool f16, cudaStream_t s);
struct AttnArgs {
  const float* q;                    // [T, nq*hd]
  void* kc; void* vc;                // caches [n_ctx, nkv*hd]
  bool f16;
  const int32_t* n_past;             // device: position of token 0 (keys 0..n_past+t visible)
  float* out;                        // [T, nq*hd]
  float* part;                       // T == 1: split-K scratch (splits > 1)
  int64_t T, nq, nkv, hd;
  int splits;                        // T == 1: split the keys over up to this many blocks per KV head
  // Single token (T == 1): its k and v rows [nkv*hd]; attention() writes them to the caches
  // itself (no kv_write before it). Null: the caches already hold them (prefill).
  const float* k_new = nullptr; const float* v_new = nullptr;
  int32_t* count = nullptr;          // T == 1, splits > 1: attention_counters(part, ...)
};
void attention(const AttnArgs& a, cudaStream_t s);
// Split-K scratch of `part`: (max, sum, acc[hd]) per (token, head, split), then one int32
// arrival counter per (token, kv head). Zero the whole buffer once when allocating it: the
// attention kernel leaves every counter at zero again.
size_t attention_part_floats(int64_t T, int64_t nq, int64_t nkv, int64_t hd, int splits);
int32_t* attention_counters(float* part, int64_t T, int64_t nq, int64_t hd, int splits);

// MoE
struct RouterArgs {
  const float* logits; const float* bias;   // [T, n_expert], [n_expert]
  int32_t* idx; float* wt;                   // [T, k]
  int64_t T; int n_expert, k, n_group, n_group_used;
  bool norm; float scale;
};
void route(const RouterArgs& a, cudaStream_t s);
// out[t] = shared[t] + shared2[t] (either may be null: 0) + sum_j wt[t,j] * ye[row(t,j)];
// row_of null = t*k + j. shared2: the second K half of the shared expert's down product (decode).
void moe_combine(const float* ye, const float* shared, const float* shared2, const float* wt, const int32_t* row_of,
                 int64_t T, int k, int64_t E, float* out, cudaStream_t s);
void gather_rows(const float* x, int64_t ld, const int32_t* src_row, int64_t n, float* out, cudaStream_t s);

void add_scalar_i32(int32_t* p, int32_t v, cudaStream_t s);

}  // namespace cuda
}  // namespace nemocpu
