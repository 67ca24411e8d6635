// MoE router of Nemotron-H: sigmoid scores, selection bias, optional group-limited routing,
// top-k (ties: lower index wins), weights from the unbiased scores, renormalised and scaled.
#pragma once
#include <cstdint>

namespace nemocpu {

struct RouterConfig {
  int n_expert = 0;
  int n_used = 0;           // top-k
  int n_group = 1;          // expert_group_count
  int n_group_used = 1;     // expert_group_used_count
  bool norm = true;         // expert_weights_norm
  float scale = 1.0f;       // expert_weights_scale
};

// logits [n_expert], bias [n_expert] (exp_probs_b, may be null) -> idx [n_used], weight [n_used]
void route_token(const RouterConfig& c, const float* logits, const float* bias, int32_t* idx, float* weight);

}  // namespace nemocpu
