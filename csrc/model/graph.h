// The Nemotron-H layer sequence, one copy shared by the CPU engine (model/engine.cpp) and the
// CUDA engine (cuda/engine.cu): the order of the blocks, which state slot each mixer owns, where
// the norms and residual adds go, when the state advances, and which rows reach the lm_head
// (reference/nemotron-h.md §2). An engine supplies the operations as a "pass" object; only their
// kernels and memory differ:
//
//   embed(T)               x = token_embd[tokens]
//   add_norm(i, T)         x += y (the previous block's output, when i > 0); h = rmsnorm(x) * norm_i
//   mamba(i, slot, T)      y = Mamba-2 mixer of layer i on h, with conv/SSM state `slot`
//   attention(i, slot, T)  y = attention of layer i on h, with KV cache `slot`
//   moe(i, T) / mlp(i, T)  y = routed experts + shared expert / relu^2 MLP of layer i on h
//   advance(T)             the state now holds T more positions
//   head(first, n)         x += y of the last block; logits = lm_head(rmsnorm(x) * output_norm)
//                          for rows [first, first + n)
//
// (The residual add sits at the start of the next block so that the CUDA engine can fuse it with
// the norm; the CPU engine does the same arithmetic in the same order.)
#pragma once
#include <cstdint>
#include <vector>

#include "model/hparams.h"

namespace nemocpu {

// Layer -> state slot: the i-th Mamba layer owns conv/SSM state i, the i-th attention layer
// KV cache i (model/state.h); -1 for layers of the other kinds.
struct LayerPlan {
  std::vector<int> mamba_slot, attn_slot;
  static LayerPlan of(const HParams& hp) {
    LayerPlan p;
    int nm = 0, na = 0;
    for (char k : hp.layer_kinds) {
      p.mamba_slot.push_back(k == 'M' ? nm++ : -1);
      p.attn_slot.push_back(k == '*' ? na++ : -1);
    }
    return p;
  }
};

// One forward pass of T tokens; logits for every row (all_logits) or the last one.
template <class Pass>
void run_layers(const HParams& hp, const LayerPlan& plan, Pass& pass, int64_t T, bool all_logits) {
  pass.embed(T);
  for (size_t i = 0; i < hp.layer_kinds.size(); ++i) {
    pass.add_norm(i, T);
    switch (hp.layer_kinds[i]) {
      case 'M': pass.mamba(i, plan.mamba_slot[i], T); break;
      case '*': pass.attention(i, plan.attn_slot[i], T); break;
      case 'E': pass.moe(i, T); break;
      default: pass.mlp(i, T); break;  // '-'
    }
  }
  pass.advance(T);
  const int64_t first = all_logits ? 0 : T - 1;
  pass.head(first, T - first);
}

}  // namespace nemocpu
