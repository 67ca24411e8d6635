#include "model/state.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

namespace nemocpu {

StateLayout StateLayout::of(const HParams& hp, int64_t n_ctx, int kv_type) {
  StateLayout l;
  for (char k : hp.layer_kinds) {
    if (k == 'M') ++l.n_mamba;
    if (k == '*') ++l.n_attn;
  }
  if (l.n_mamba) {
    l.conv_floats = (hp.ssm_conv_kernel - 1) * hp.ssm_conv_dim();
    l.ssm_floats = hp.ssm_n_head * hp.ssm_head_dim * hp.ssm_d_state;
  }
  l.kv_width = l.n_attn ? hp.n_head_kv * hp.head_dim : 0;
  l.kv_type = kv_type;
  l.n_ctx = n_ctx;
  return l;
}

bool StateLayout::operator==(const StateLayout& o) const {
  return n_mamba == o.n_mamba && n_attn == o.n_attn && conv_floats == o.conv_floats &&
         ssm_floats == o.ssm_floats && kv_width == o.kv_width && kv_type == o.kv_type && n_ctx == o.n_ctx;
}

State::State(const StateLayout& layout) : layout_(layout) {
  conv_.assign(layout.n_mamba, std::vector<float>(layout.conv_floats, 0.0f));
  ssm_.assign(layout.n_mamba, std::vector<float>(layout.ssm_floats, 0.0f));
  k_.resize(layout.n_attn);
  v_.resize(layout.n_attn);
}

int64_t State::nbytes() const {
  int64_t n = 4 * layout_.n_mamba * (layout_.conv_floats + layout_.ssm_floats);
  return n + 2 * layout_.n_attn * kv_capacity_ * layout_.kv_row_bytes();
}

// Geometric growth keeps appends amortised O(1) without reserving n_ctx up front.
void State::reserve_tokens(int64_t n) {
  if (n <= kv_capacity_ || layout_.n_attn == 0) return;
  const int64_t cap = std::min(layout_.n_ctx, std::max<int64_t>({n, 2 * kv_capacity_, 256}));
  const size_t bytes = (size_t)(cap * layout_.kv_row_bytes());
  for (int i = 0; i < layout_.n_attn; ++i) {
    k_[i].resize(bytes);
    v_[i].resize(bytes);
  }
  kv_capacity_ = cap;
}

std::unique_ptr<State> State::snapshot() const {
  auto s = std::make_unique<State>(layout_);
  s->conv_ = conv_;
  s->ssm_ = ssm_;
  s->n_past_ = n_past_;
  s->reserve_tokens(n_past_);
  const size_t used = (size_t)(n_past_ * layout_.kv_row_bytes());
  for (int i = 0; i < layout_.n_attn; ++i) {
    if (used) {
      std::memcpy(s->k_[i].data(), k_[i].data(), used);
      std::memcpy(s->v_[i].data(), v_[i].data(), used);
    }
  }
  return s;
}

void State::restore(const State& snap) {
  if (!(snap.layout_ == layout_))
    throw std::invalid_argument("snapshot was taken from a state of another model, n_ctx or kv_type");
  if (&snap == this) return;
  conv_ = snap.conv_;
  ssm_ = snap.ssm_;
  n_past_ = snap.n_past_;
  reserve_tokens(n_past_);
  const size_t used = (size_t)(n_past_ * layout_.kv_row_bytes());
  for (int i = 0; i < layout_.n_attn; ++i) {
    if (used) {
      std::memcpy(k_[i].data(), snap.k_[i].data(), used);
      std::memcpy(v_[i].data(), snap.v_[i].data(), used);
    }
  }
}

void State::reset() {
  for (auto& c : conv_) std::fill(c.begin(), c.end(), 0.0f);
  for (auto& s : ssm_) std::fill(s.begin(), s.end(), 0.0f);
  n_past_ = 0;  // KV rows beyond n_past are never read
}

void check_eval_request(const HParams& hp, const StateLayout& layout, int64_t n_past, int64_t n_ctx,
                        const int32_t* tokens, int64_t T) {
  if (T <= 0) throw std::invalid_argument("eval needs at least one token");
  if (!(layout == StateLayout::of(hp, n_ctx, layout.kv_type)))
    throw std::invalid_argument("state was made by another engine");
  for (int64_t t = 0; t < T; ++t)
    if (tokens[t] < 0 || tokens[t] >= hp.n_vocab)
      throw std::invalid_argument("token id " + std::to_string(tokens[t]) + " at position " + std::to_string(t) +
                                  " is out of range [0, " + std::to_string(hp.n_vocab) + ")");
  if (n_past + T > n_ctx)
    throw std::invalid_argument("context overflow: n_past " + std::to_string(n_past) + " + " + std::to_string(T) +
                                " tokens > n_ctx " + std::to_string(n_ctx));
}

}  // namespace nemocpu
