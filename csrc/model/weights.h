// Binding of the GGUF tensors to the model: every tensor the forward pass reads is looked up
// by its GGUF name, checked (present, allowed type, ggml shape, byte size) and turned into a
// typed view. Nothing is copied. Errors are std::invalid_argument naming the tensor.
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "model/hparams.h"
#include "nemocpu/kernels.h"

namespace nemocpu {

struct TensorView {
  const uint8_t* data = nullptr;
  int64_t nbytes = 0;
  int type = 0;
  std::vector<int64_t> ne;
};
using TensorMap = std::map<std::string, TensorView>;

// A matrix or a stack of n_mat matrices [rows, K] (ggml ne {K, rows, n_mat}).
struct Weight {
  const uint8_t* data = nullptr;
  int type = 0;
  int64_t K = 0, rows = 0, n_mat = 1, row_bytes = 0;
  const float* scale = nullptr;  // FP8
  int64_t n_scale = 0;

  WeightMatrix mat(int64_t m = 0) const;
  bool quantized_act() const;  // dots int8 activations (Q8_0, Q4_0)
};

struct Layer {
  char kind = 'M';
  const float* attn_norm = nullptr;
  // Mamba
  Weight ssm_in, ssm_out;
  const float *conv_w = nullptr, *conv_b = nullptr, *dt_bias = nullptr, *ssm_a = nullptr,
              *ssm_d = nullptr, *ssm_norm = nullptr;
  // attention
  Weight wq, wk, wv, wo;
  // MoE
  const float *gate_inp = nullptr, *exp_probs_b = nullptr;
  Weight up_exps, down_exps, up_shexp, down_shexp;
  bool has_shexp = false;
  // dense MLP
  Weight ffn_up, ffn_down;

  // Every matrix slot of the layer (unused ones have data == nullptr).
  std::array<const Weight*, 12> matrices() const {
    return {&ssm_in, &ssm_out, &wq, &wk, &wv, &wo, &up_exps, &down_exps, &up_shexp, &down_shexp, &ffn_up, &ffn_down};
  }
};

struct ModelWeights {
  Weight token_embd, output;  // output == token_embd when the file has no output.weight
  const float* output_norm = nullptr;
  std::vector<Layer> layers;
};

ModelWeights bind_weights(const HParams& hp, const TensorMap& tensors);

const char* ggml_type_name(int type);

}  // namespace nemocpu
