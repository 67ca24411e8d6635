#include "model/engine.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "cpu/dispatch.h"

namespace nemocpu {

namespace {
constexpr int64_t kMaxUbatch = 256;  // prefill runs in chunks of this many tokens (bounds scratch)
// A chunk handed to a thread should carry at least this many multiply-adds: below it the
// hand-off costs more than the work (decode of small matrices on many threads).
constexpr int64_t kMinChunkWork = 1 << 16;

int64_t weight_bytes(const Weight& w) { return w.row_bytes * w.rows * w.n_mat; }
}  // namespace

Engine::Engine(const HParams& hp, const TensorMap& tensors, int n_threads, double dt_floor,
               const EngineOptions& options)
    : hp_(hp), w_(bind_weights(hp, tensors)), kt_(active_kernels()),
      pool_(std::make_unique<ThreadPool>(n_threads)), dt_floor_((float)dt_floor) {
  if (!(dt_floor >= 0.0) || !std::isfinite(dt_floor)) throw std::invalid_argument("dt_floor must be >= 0");
  router_.n_expert = (int)hp.n_expert;
  router_.n_used = (int)hp.n_expert_used;
  router_.n_group = (int)hp.expert_group_count;
  router_.n_group_used = (int)hp.expert_group_used_count;
  router_.norm = hp.expert_weights_norm;
  router_.scale = (float)hp.expert_weights_scale;
  int nm = 0, na = 0;
  for (char k : hp.layer_kinds) {
    mamba_index_.push_back(k == 'M' ? nm++ : -1);
    attn_index_.push_back(k == '*' ? na++ : -1);
  }
  if (options.repack) repack_weights(options.release_mapped);
}

void Engine::repack_weights(bool release_mapped) {
  std::vector<Weight*> todo;
  for (Layer& L : w_.layers)
    for (Weight* w : {&L.ssm_in, &L.ssm_out, &L.wq, &L.wk, &L.wv, &L.wo, &L.up_exps, &L.down_exps,
                      &L.up_shexp, &L.down_shexp, &L.ffn_up, &L.ffn_down})
      todo.push_back(w);
  todo.push_back(&w_.output);
  std::vector<int64_t> offset;  // of each matrix stack in the arena, 64-byte aligned
  int64_t total = 0;
  for (Weight* w : todo) {
    offset.push_back(total);
    if (w->data && x8_supported(w->type)) total += (x8_matrix_bytes(w->type, w->rows, w->K) * w->n_mat + 63) / 64 * 64;
  }
  if (total == 0) return;
  repacked_ = WeightArena(total);
  for (size_t i = 0; i < todo.size(); ++i) {
    Weight& w = *todo[i];
    if (!w.data || !x8_supported(w.type)) continue;
    const int64_t per_mat = x8_matrix_bytes(w.type, w.rows, w.K), groups = (w.rows + X8_ROWS - 1) / X8_ROWS;
    const uint8_t* src = w.data;
    uint8_t* dst = repacked_.data() + offset[i];
    const Weight orig = w;
    pool_->parallel_for(w.n_mat, [&](int64_t m0, int64_t m1) {
      prefault_read(src + m0 * orig.mat_bytes, (m1 - m0) * orig.mat_bytes);
    }, 1);
    pool_->parallel_for(groups * w.n_mat, [&](int64_t u0, int64_t u1) {
      for (int64_t u = u0; u < u1;) {  // units = (matrix, group); a chunk may span matrices
        const int64_t m = u / groups, g0 = u % groups, g1 = std::min(groups, g0 + (u1 - u));
        repack_x8_groups(orig.type, src + m * orig.mat_bytes, orig.rows, orig.K, g0, g1, dst + m * per_mat);
        u += g1 - g0;
      }
    }, 16);
    // a tied lm_head shares its bytes with the embedding, which keeps reading the file's rows
    if (release_mapped && !(&w == &w_.output && w.data == w_.token_embd.data))
      release_file_pages(src, orig.mat_bytes * orig.n_mat);
    w.data = dst;
    w.layout = LAYOUT_X8;
    w.mat_bytes = per_mat;
    repacked_bytes_ += per_mat * w.n_mat;
  }
}

void Engine::set_threads(int n) {
  std::lock_guard<std::mutex> lk(eval_mu_);
  pool_ = std::make_unique<ThreadPool>(n);
}

std::map<std::string, int64_t> Engine::memory_report() const {
  // bytes the kernels read in place from the file (repacked matrices count in repacked_bytes_)
  int64_t mapped = weight_bytes(w_.token_embd) + 4 * hp_.n_embd;
  if (w_.output.data != w_.token_embd.data && w_.output.layout == LAYOUT_ROWS) mapped += weight_bytes(w_.output);
  for (const Layer& L : w_.layers) {
    for (const Weight* w : {&L.ssm_in, &L.ssm_out, &L.wq, &L.wk, &L.wv, &L.wo, &L.up_exps, &L.down_exps,
                            &L.up_shexp, &L.down_shexp, &L.ffn_up, &L.ffn_down})
      if (w->data && w->layout == LAYOUT_ROWS) mapped += weight_bytes(*w);
  }
  return {{"weights_mapped_bytes", mapped},
          {"weights_copied_bytes", 0},   // no kernel needs the file's bytes copied as they are
          {"weights_repacked_bytes", repacked_bytes_},
          {"scratch_bytes", (int64_t)(qbuf_.capacity() * sizeof(BlockQ8Act))}};
}

std::unique_ptr<State> Engine::new_state(int64_t n_ctx, int kv_type) const {
  if (n_ctx <= 0) throw std::invalid_argument("n_ctx must be positive, got " + std::to_string(n_ctx));
  if (kv_type != GGML_F16 && kv_type != GGML_F32) throw std::invalid_argument("kv_type must be f16 or f32");
  return std::make_unique<State>(StateLayout::of(hp_, n_ctx, kv_type));
}

void Engine::eval(State& st, const int32_t* tokens, int64_t T, bool all_logits, float* logits) {
  check_eval_request(hp_, st.layout(), st.n_past(), st.n_ctx(), tokens, T);
  std::lock_guard<std::mutex> lk(eval_mu_);
  const bool clamp_dt = dt_clamp_applies(dt_floor_, st.n_past(), T);
  st.reserve_tokens(st.n_past() + T);
  for (int64_t t0 = 0; t0 < T; t0 += kMaxUbatch) {
    const int64_t n = std::min(kMaxUbatch, T - t0);
    const bool last = t0 + n == T;
    float* out = all_logits ? logits + t0 * hp_.n_vocab : (last ? logits : nullptr);
    forward_chunk(st, tokens + t0, n, clamp_dt, out, all_logits);
  }
}

void Engine::rmsnorm_rows(const float* x, const float* w, int64_t T, float* out) {
  const int64_t E = hp_.n_embd;
  const float eps = (float)hp_.rms_eps;
  pool_->parallel_for(T, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) kt_.rmsnorm(x + t * E, w, E, eps, out + t * E);
  }, 4);
}

Activations Engine::activations(const Weight& w, const float* x, int64_t ldx, int64_t T,
                                std::vector<BlockQ8Act>& blocks) {
  Activations a;
  a.x = x;
  a.ldx = ldx;
  a.T = T;
  if (w.quantized_act()) {
    const int64_t nb = w.K / QK;
    if ((int64_t)blocks.size() < T * nb) blocks.resize(T * nb);
    BlockQ8Act* q = blocks.data();
    pool_->parallel_for(T, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) kt_.quantize_q8(x + t * ldx, w.K, q + t * nb);
    }, 8);
    a.q = q;
    a.ldq = nb;
  }
  return a;
}

void Engine::run(const std::vector<MatJob>& jobs) {
  // Work is handed out in units of 8 rows (the last unit of a job may be short), so a chunk
  // never splits a group of an X8 matrix.
  constexpr int64_t U = X8_ROWS;
  std::vector<int64_t> start(jobs.size() + 1, 0);  // first global unit of each job
  int64_t work = 0;
  for (size_t j = 0; j < jobs.size(); ++j) {
    start[j + 1] = start[j] + (jobs[j].w.rows + U - 1) / U;
    work += jobs[j].w.rows * jobs[j].w.K * jobs[j].a.T;
  }
  if (start.back() == 0) return;
  const int64_t per_unit = std::max<int64_t>(1, work / start.back());
  const int64_t grain = std::clamp<int64_t>(kMinChunkWork / per_unit, 1, 32);
  pool_->parallel_for(start.back(), [&](int64_t u0, int64_t u1) {
    size_t j = std::upper_bound(start.begin(), start.end(), u0) - start.begin() - 1;
    for (; u0 < u1; ++j) {
      const int64_t e = std::min(u1, start[j + 1]);
      if (e > u0) {
        const MatJob& job = jobs[j];
        kt_.matmul(job.w, (u0 - start[j]) * U, std::min(job.w.rows, (e - start[j]) * U), job.a, job.y, job.ldy);
      }
      u0 = std::max(u0, e);
    }
  }, grain);
}

void Engine::linear(const Weight& w, int64_t m, const float* x, int64_t ldx, int64_t T, float* y, int64_t ldy) {
  run({MatJob{w.mat(m), activations(w, x, ldx, T, qbuf_), y, ldy}});
}

void Engine::forward_chunk(State& st, const int32_t* tokens, int64_t T, bool clamp_dt, float* logits,
                           bool all_logits) {
  const int64_t E = hp_.n_embd;
  std::vector<float> x(T * E), h(T * E), y(T * E);
  for (int64_t t = 0; t < T; ++t) kt_.dequant_row(w_.token_embd.mat(), tokens[t], x.data() + t * E);

  for (size_t i = 0; i < w_.layers.size(); ++i) {
    const Layer& L = w_.layers[i];
    rmsnorm_rows(x.data(), L.attn_norm, T, h.data());
    switch (L.kind) {
      case 'M': mamba(L, mamba_index_[i], st, h.data(), T, clamp_dt, y.data()); break;
      case '*': attention(L, attn_index_[i], st, h.data(), T, y.data()); break;
      case 'E': moe(L, h.data(), T, y.data()); break;
      default: mlp(L.ffn_up, L.ffn_down, h.data(), T, y.data()); break;
    }
    pool_->parallel_for(T * E, [&](int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j) x[j] += y[j];
    }, 1 << 14);
  }
  st.advance(T);
  if (!logits) return;
  // lm_head runs only on the rows whose logits are returned.
  const int64_t first = all_logits ? 0 : T - 1, n = T - first;
  rmsnorm_rows(x.data() + first * E, w_.output_norm, n, h.data());
  linear(w_.output, 0, h.data(), E, n, logits, hp_.n_vocab);
}

}  // namespace nemocpu
