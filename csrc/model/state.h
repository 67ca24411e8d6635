// The per-sequence memory of a model: conv window + SSM state per Mamba layer (fp32) and a
// KV cache per attention layer (f16 or f32), grown on demand up to n_ctx.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "model/hparams.h"

namespace nemocpu {

struct StateLayout {
  int n_mamba = 0, n_attn = 0;
  int64_t conv_floats = 0;     // (K-1) * conv_dim per Mamba layer
  int64_t ssm_floats = 0;      // nh * hd * N per Mamba layer
  int64_t kv_width = 0;        // n_head_kv * head_dim values per token, for K and for V
  int kv_type = 1;             // GGML_F16 | GGML_F32
  int64_t n_ctx = 0;

  static StateLayout of(const HParams& hp, int64_t n_ctx, int kv_type);
  bool operator==(const StateLayout& o) const;
  int64_t kv_row_bytes() const { return kv_width * (kv_type == 0 ? 4 : 2); }
};

class State {
 public:
  explicit State(const StateLayout& layout);

  const StateLayout& layout() const { return layout_; }
  int64_t n_past() const { return n_past_; }
  int64_t n_ctx() const { return layout_.n_ctx; }
  int64_t nbytes() const;

  float* conv(int i) { return conv_[i].data(); }
  float* ssm(int i) { return ssm_[i].data(); }
  uint8_t* k(int i) { return k_[i].data(); }
  uint8_t* v(int i) { return v_[i].data(); }

  void reserve_tokens(int64_t n);  // KV capacity for n positions (n <= n_ctx)
  void advance(int64_t n) { n_past_ += n; }

  std::unique_ptr<State> snapshot() const;  // deep copy of the used part
  void restore(const State& snap);          // std::invalid_argument if layouts differ
  void reset();

 private:
  StateLayout layout_;
  int64_t n_past_ = 0;
  int64_t kv_capacity_ = 0;  // positions allocated in k_/v_
  std::vector<std::vector<float>> conv_, ssm_;
  std::vector<std::vector<uint8_t>> k_, v_;
};

// What every engine (CPU and CUDA) checks before an eval touches a state, with the same
// messages: the state fits this model, token ids are in range, the tokens fit in n_ctx.
// Throws std::invalid_argument.
void check_eval_request(const HParams& hp, const StateLayout& layout, int64_t n_past, int64_t n_ctx,
                        const int32_t* tokens, int64_t T);

// transformers clamps dt only in its chunked (prefill) path: a fresh sequence or T > 1.
inline bool dt_clamp_applies(float dt_floor, int64_t n_past, int64_t T) {
  return dt_floor > 0.0f && (n_past == 0 || T > 1);
}

}  // namespace nemocpu
