// The hyperparameters the forward pass needs (mirror of nemocpu.arch.HParams.as_dict()).
#pragma once
#include <cstdint>
#include <string>

namespace nemocpu {

struct HParams {
  std::string arch;
  int64_t n_vocab = 0, n_embd = 0;
  std::string layer_kinds;  // one of M * E - per layer
  int64_t n_head = 0, n_head_kv = 0, head_dim = 0;
  int64_t ssm_n_head = 0, ssm_head_dim = 0, ssm_d_state = 0, ssm_n_group = 0, ssm_conv_kernel = 0;
  int64_t n_ff = 0, n_expert = 0, n_expert_used = 0, n_ff_exp = 0, n_ff_shexp = 0;
  bool expert_weights_norm = true;
  double expert_weights_scale = 1.0;
  int64_t expert_group_count = 1, expert_group_used_count = 1;
  double rms_eps = 1e-5;
  bool tie_word_embeddings = false;

  int64_t n_layer() const { return (int64_t)layer_kinds.size(); }
  int64_t ssm_d_inner() const { return ssm_n_head * ssm_head_dim; }
  int64_t ssm_conv_dim() const { return ssm_d_inner() + 2 * ssm_n_group * ssm_d_state; }
  int64_t ssm_in_dim() const { return 2 * ssm_d_inner() + 2 * ssm_n_group * ssm_d_state + ssm_n_head; }

  // std::invalid_argument when the numbers cannot describe a runnable model.
  void validate() const;
};

}  // namespace nemocpu
