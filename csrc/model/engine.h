// The Nemotron-H forward pass (Mamba-2 + NoPE GQA attention + sigmoid-routed MoE / relu^2 MLP)
// over weights used in place. Model knowledge lives here and in weights.cpp; the arithmetic
// runs through the kernel table. Residual stream and all state math are fp32.
#pragma once
#include <cstdint>
#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "cpu/thread_pool.h"
#include "model/graph.h"
#include "model/hparams.h"
#include "model/repack.h"
#include "model/router.h"
#include "model/state.h"
#include "model/weights.h"
#include "nemocpu/kernels.h"

namespace nemocpu {

struct EngineOptions {
  // Repack Q8_0 / Q4_0 matrices into the 8-row interleaved layout (model/repack.h): a copy of
  // those weights (memory_report()["weights_repacked_bytes"]) that the matmul kernels stream
  // ~2-3x faster than the file's row-major blocks. Each matrix (each expert on its own) is
  // repacked the first time a matmul needs it, or all at once by repack_all(): loading stays
  // instant and experts a model never routes to cost no memory.
  bool repack = true;
  // The tensors are views of a read-only file mapping: after repacking a tensor, drop its
  // mapped pages from this process (madvise DONTNEED; they stay in the page cache), so the
  // resident set holds one copy of the weights. Never set it for heap-backed tensors.
  bool release_mapped = false;
};

class Engine {
 public:
  // Prefill runs in chunks of this many tokens (bounds scratch). Callers that split a prompt
  // themselves (the chat path, so that Ctrl-C can land) split at this step: same arithmetic.
  static constexpr int64_t kPrefillStep = 256;

  // dt_floor: Mamba dt lower clamp applied only in "prefill" evals (n_past == 0 or T > 1),
  // as transformers 5.23 does; 0 = no clamp (NVIDIA / vLLM semantics).
  Engine(const HParams& hp, const TensorMap& tensors, int n_threads, double dt_floor,
         const EngineOptions& options = {});

  const HParams& hparams() const { return hp_; }
  const KernelTable& kernels() const { return kt_; }
  int n_threads() const { return pool_->n_threads(); }
  void set_threads(int n);
  std::map<std::string, int64_t> memory_report() const;

  std::unique_ptr<State> new_state(int64_t n_ctx, int kv_type) const;
  // Repacks every matrix not repacked yet (what the first evals would do piecemeal).
  void repack_all();
  // Whether Q8_0/Q4_0 matrices are repacked (asked for, and the kernel variant gains from it).
  bool repacks() const { return !x8_.empty(); }
  // Checks everything (std::invalid_argument) before touching the state, then runs T tokens.
  // logits: [T, n_vocab] if all_logits else [1, n_vocab] (last position).
  void eval(State& st, const int32_t* tokens, int64_t T, bool all_logits, float* logits);

 private:
  struct Pass;  // one forward pass: the operations the layer sequence (model/graph.h) calls
  void mamba(const Layer& L, int mi, State& st, const float* h, int64_t T, bool clamp_dt, float* out);
  void attention(const Layer& L, int ai, State& st, const float* h, int64_t T, float* out);
  void moe(const Layer& L, const float* h, int64_t T, float* out);
  void mlp(const Weight& up, const Weight& down, const float* h, int64_t T, float* out);
  // One product of a batch: y[t, r] = W[r, :] . a.x[t, :] for all rows r of W.
  struct MatJob {
    WeightMatrix w;
    Activations a;
    float* y;
    int64_t ldy;
  };
  // Activations of x [T, ldx] for weight w; quantized into `blocks` when w dots int8.
  Activations activations(const Weight& w, const float* x, int64_t ldx, int64_t T,
                          std::vector<BlockQ8Act>& blocks);
  // All jobs in one parallel region over their concatenated output rows (one barrier).
  // Matrices with a pending repack are repacked first and then read in the X8 layout.
  void run(std::vector<MatJob> jobs);
  // y[t, :] = W_m . x[t, :] for T rows.
  void linear(const Weight& w, int64_t m, const float* x, int64_t ldx, int64_t T, float* y, int64_t ldy);
  void rmsnorm_rows(const float* x, const float* w, int64_t T, float* out);
  // Every Q8_0 / Q4_0 matrix the matmuls read gets a slot in repacked_ (reserved, untouched).
  void plan_repack(bool release_mapped);
  struct PendingRepack;
  // Repacks these matrices in one parallel region.
  void repack(const std::vector<PendingRepack*>& todo);

  HParams hp_;
  ModelWeights w_;
  const KernelTable& kt_;
  std::unique_ptr<ThreadPool> pool_;
  float dt_floor_;
  RouterConfig router_;
  LayerPlan plan_;                             // layer -> state slot
  std::mutex eval_mu_;                         // one eval at a time per engine
  std::vector<BlockQ8Act> qbuf_;               // activation blocks for linear()
  // One matrix in the file's layout and its slot in the X8 arena.
  struct PendingRepack {
    WeightMatrix src;        // the file's rows
    uint8_t* dst = nullptr;  // its X8 copy (valid once done)
    bool release = false;    // drop the file's pages once repacked
    bool done = false;
  };
  std::unordered_map<const uint8_t*, PendingRepack> x8_;  // key: src.data
  WeightArena repacked_;                                  // reserved address space for every X8 copy
  std::atomic<int64_t> repacked_bytes_{0}, repacked_src_bytes_{0};
};

}  // namespace nemocpu
