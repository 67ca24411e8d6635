// The Nemotron-H forward pass on an NVIDIA GPU. The seam with the CPU engine: the same
// HParams, the same tensor binding and checks (model/weights.cpp: a file the CPU engine
// rejects is rejected here with the same message), the same state layout and eval checks
// (model/state.h) and the same layer sequence (model/graph.h, one template both engines
// instantiate); only the kernels (csrc/cuda/*.cu) and the memory differ.
// Weights are uploaded (repacked) once; a decode step replays a CUDA graph.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cuda/kernels.cuh"
#include "model/graph.h"
#include "model/hparams.h"
#include "model/router.h"
#include "model/state.h"
#include "model/weights.h"

namespace nemocpu {
namespace cuda {

class CudaEngine;

// Conv/SSM state (fp32) and the KV cache of one sequence, in device memory.
class CudaState {
 public:
  CudaState(const StateLayout& layout, int device);
  ~CudaState();
  CudaState(const CudaState&) = delete;
  CudaState& operator=(const CudaState&) = delete;

  const StateLayout& layout() const { return layout_; }
  int64_t n_past() const { return n_past_; }
  int64_t n_ctx() const { return layout_.n_ctx; }
  int64_t nbytes() const;
  std::unique_ptr<CudaState> snapshot() const;  // deep copy of the used part
  void restore(const CudaState& snap);
  void reset();

 private:
  friend class CudaEngine;
  void copy_from(const CudaState& o);
  void drop_graph();

  StateLayout layout_;
  int device_;
  int64_t n_past_ = 0;
  float* conv_ = nullptr;   // [n_mamba][conv_floats]
  float* ssm_ = nullptr;    // [n_mamba][ssm_floats]
  uint8_t* k_ = nullptr;    // [n_attn][n_ctx][kv_row_bytes]
  uint8_t* v_ = nullptr;
  int32_t* d_n_past_ = nullptr;  // device copy read by the kernels (graph-replay safe)
  cudaGraphExec_t graph_ = nullptr;  // decode step bound to this state's buffers
  const CudaEngine* graph_owner_ = nullptr;
};

class CudaEngine {
 public:
  static constexpr int64_t kPrefillStep = 1024;  // prefill chunk (bounds scratch; GEMM tiles stay full)

  CudaEngine(const HParams& hp, const TensorMap& tensors, double dt_floor, int device = 0);
  ~CudaEngine();

  const HParams& hparams() const { return hp_; }
  const std::string& device_name() const { return device_name_; }
  std::map<std::string, int64_t> memory_report() const;
  std::unique_ptr<CudaState> new_state(int64_t n_ctx, int kv_type) const;
  void eval(CudaState& st, const int32_t* tokens, int64_t T, bool all_logits, float* logits);

 private:
  struct DevLayer {
    char kind = 'M';
    float* attn_norm = nullptr;
    GpuWeight ssm_in, ssm_out, wq, wk, wv, wo, gate, up_exps, down_exps, up_shexp, down_shexp, ffn_up, ffn_down;
    GpuWeight down_shexp_halves;  // decode: down_shexp's K in two stacked halves (split_k), or none
    float *conv_w = nullptr, *conv_b = nullptr, *dt_bias = nullptr, *ssm_a = nullptr, *ssm_d = nullptr,
          *ssm_norm = nullptr, *exp_probs_b = nullptr;
    bool has_shexp = false;
  };
  // Activations of one forward pass for up to `cap` tokens.
  struct Scratch {
    int64_t cap = 0, logit_rows = 0;
    int32_t* tok = nullptr;
    int32_t* scan_count = nullptr;  // decode: the fused gated norm's arrival counters [ssm_n_group]
    float *x = nullptr, *h = nullptr, *y = nullptr, *u = nullptr, *xbc = nullptr, *ys = nullptr, *v = nullptr,
          *q = nullptr, *k = nullptr, *kv_v = nullptr, *o = nullptr, *part = nullptr, *glog = nullptr,
          *wt = nullptr, *xe = nullptr, *act = nullptr, *ye = nullptr, *logits = nullptr,
          *ssd = nullptr;  // prefill: the chunked scan's scratch (MambaArgs::ssd)
    int32_t *idx = nullptr, *row_of = nullptr, *src_row = nullptr, *grp = nullptr;
    std::vector<void*> owned;
  };

  void upload_weights(const ModelWeights& mw);
  GpuWeight upload_matrix(const Weight& w);
  GpuWeight split_k(const GpuWeight& w);
  float* upload_f32(const float* src, int64_t n);
  void alloc_scratch(Scratch& sc, int64_t cap, int64_t logit_rows);
  void free_scratch(Scratch& sc);
  struct Pass;  // one forward pass: the operations the layer sequence (model/graph.h) calls
  void forward(CudaState& st, Scratch& sc, int64_t T, bool clamp_dt, bool all_logits);
  void mamba(const DevLayer& L, int mi, CudaState& st, Scratch& sc, int64_t T, bool clamp_dt);
  void attention(const DevLayer& L, int ai, CudaState& st, Scratch& sc, int64_t T);
  void moe(const DevLayer& L, Scratch& sc, int64_t T);
  void lin(const GpuWeight& w, const float* x, int64_t ldx, int64_t T, float* y, int64_t ldy, bool relu2 = false,
           int mat = 0);
  void decode_step(CudaState& st, int32_t token, float* logits);

  HParams hp_;
  LayerPlan plan_;  // layer -> state slot
  float dt_floor_;
  int device_;
  std::string device_name_;
  cudaStream_t stream_ = nullptr;
  GpuWeight token_embd_, output_;
  float* output_norm_ = nullptr;
  std::vector<DevLayer> layers_;
  std::vector<void*> owned_;  // every device allocation of the weights
  int64_t weight_bytes_ = 0;
  Scratch dec_, pre_;
  int32_t* h_tok_ = nullptr;     // pinned: the decode graph's token input
  float* h_logits_ = nullptr;    // pinned: decode logits staged for a pageable caller buffer
  int32_t* h_idx_ = nullptr;     // pinned: routing read back in prefill
  int32_t* h_rows_ = nullptr;    // pinned: row maps sent in prefill
  int64_t h_idx_cap_ = 0;
  std::mutex mu_;
};

// Names of usable devices ("" list when no driver / no GPU).
std::vector<std::string> device_names();
std::map<std::string, std::string> build_info();

}  // namespace cuda
}  // namespace nemocpu
