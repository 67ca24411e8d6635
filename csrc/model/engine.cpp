#include "model/engine.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "cpu/dispatch.h"
#include "model/graph.h"

namespace nemocpu {

namespace {
// A chunk handed to a thread should carry at least this many multiply-adds: below it the
// hand-off costs more than the work (decode of small matrices on many threads).
constexpr int64_t kMinChunkWork = 1 << 16;

int64_t weight_bytes(const Weight& w) { return w.row_bytes * w.rows * w.n_mat; }
}  // namespace

Engine::Engine(const HParams& hp, const TensorMap& tensors, int n_threads, double dt_floor,
               const EngineOptions& options)
    : hp_(hp), w_(bind_weights(hp, tensors)), kt_(active_kernels()),
      pool_(std::make_unique<ThreadPool>(n_threads)), dt_floor_((float)dt_floor), plan_(LayerPlan::of(hp)) {
  if (!(dt_floor >= 0.0) || !std::isfinite(dt_floor)) throw std::invalid_argument("dt_floor must be >= 0");
  router_.n_expert = (int)hp.n_expert;
  router_.n_used = (int)hp.n_expert_used;
  router_.n_group = (int)hp.expert_group_count;
  router_.n_group_used = (int)hp.expert_group_used_count;
  router_.norm = hp.expert_weights_norm;
  router_.scale = (float)hp.expert_weights_scale;
  if (options.repack && kt_.x8_faster) plan_repack(options.release_mapped);
}

void Engine::plan_repack(bool release_mapped) {
  std::vector<const Weight*> todo;
  for (const Layer& L : w_.layers)
    for (const Weight* w : L.matrices())
      if (w->data && x8_supported(w->type)) todo.push_back(w);
  if (w_.output.data && x8_supported(w_.output.type)) todo.push_back(&w_.output);
  // every matrix's slot, 64-byte aligned
  auto slot_bytes = [](const Weight* w) { return (x8_matrix_bytes(w->type, w->rows, w->K) + 63) / 64 * 64; };
  int64_t total = 0;
  for (const Weight* w : todo) total += slot_bytes(w) * w->n_mat;
  if (total == 0) return;
  repacked_ = WeightArena(total);  // address space only: pages appear as matrices are repacked
  int64_t off = 0;
  for (const Weight* w : todo) {
    // a tied lm_head shares its bytes with the embedding, which keeps reading the file's rows
    const bool release = release_mapped && !(w == &w_.output && w->data == w_.token_embd.data);
    for (int64_t m = 0; m < w->n_mat; ++m, off += slot_bytes(w)) {
      PendingRepack p;
      p.src = w->mat(m);
      p.dst = repacked_.data() + off;
      p.release = release;
      x8_.emplace(p.src.data, p);
    }
  }
}

void Engine::repack(const std::vector<PendingRepack*>& todo) {
  if (todo.empty()) return;
  std::vector<int64_t> first(todo.size() + 1, 0);  // first (matrix, group) unit of each matrix
  for (size_t i = 0; i < todo.size(); ++i) first[i + 1] = first[i] + (todo[i]->src.rows + X8_ROWS - 1) / X8_ROWS;
  pool_->parallel_for(first.back(), [&](int64_t u0, int64_t u1) {
    size_t i = std::upper_bound(first.begin(), first.end(), u0) - first.begin() - 1;
    for (; u0 < u1; ++i) {
      const int64_t e = std::min(u1, first[i + 1]);
      const WeightMatrix& s = todo[i]->src;
      const int64_t g0 = u0 - first[i], g1 = e - first[i];
      const int64_t r0 = g0 * X8_ROWS, r1 = std::min(s.rows, g1 * X8_ROWS);
      prefault_read(s.data + r0 * s.row_bytes, (r1 - r0) * s.row_bytes);  // one call, not a fault per page
      repack_x8_groups(s.type, s.data, s.rows, s.K, g0, g1, todo[i]->dst);
      u0 = e;
    }
  }, 64);
  for (PendingRepack* p : todo) {
    const int64_t src_bytes = p->src.row_bytes * p->src.rows;
    if (p->release) release_file_pages(p->src.data, src_bytes);
    p->done = true;
    repacked_bytes_ += x8_matrix_bytes(p->src.type, p->src.rows, p->src.K);
    repacked_src_bytes_ += src_bytes;
  }
}

void Engine::repack_all() {
  std::lock_guard<std::mutex> lk(eval_mu_);
  std::vector<PendingRepack*> todo;
  for (auto& kv : x8_)
    if (!kv.second.done) todo.push_back(&kv.second);
  // in file order, so the source is read front to back
  std::sort(todo.begin(), todo.end(), [](auto* a, auto* b) { return a->src.data < b->src.data; });
  for (size_t i = 0; i < todo.size(); i += 64)  // bounded batches: one parallel region each
    repack({todo.begin() + i, todo.begin() + std::min(todo.size(), i + 64)});
}

void Engine::set_threads(int n) {
  std::lock_guard<std::mutex> lk(eval_mu_);
  pool_ = std::make_unique<ThreadPool>(n);
}

std::map<std::string, int64_t> Engine::memory_report() const {
  // bytes the kernels read in place from the file; a repacked matrix moves to repacked_bytes_
  int64_t mapped = weight_bytes(w_.token_embd) + 4 * hp_.n_embd;
  if (w_.output.data != w_.token_embd.data) mapped += weight_bytes(w_.output);
  for (const Layer& L : w_.layers) {
    for (const Weight* w : L.matrices())
      if (w->data) mapped += weight_bytes(*w);
  }
  mapped -= repacked_src_bytes_.load();
  return {{"weights_mapped_bytes", mapped},
          {"weights_copied_bytes", 0},   // no kernel needs the file's bytes copied as they are
          {"weights_repacked_bytes", repacked_bytes_.load()},
          {"scratch_bytes", (int64_t)(qbuf_.capacity() * sizeof(BlockQ8Act))}};
}

std::unique_ptr<State> Engine::new_state(int64_t n_ctx, int kv_type) const {
  if (n_ctx <= 0) throw std::invalid_argument("n_ctx must be positive, got " + std::to_string(n_ctx));
  if (kv_type != GGML_F16 && kv_type != GGML_F32) throw std::invalid_argument("kv_type must be f16 or f32");
  return std::make_unique<State>(StateLayout::of(hp_, n_ctx, kv_type));
}

// One forward pass over a chunk of tokens: the operations of model/graph.h on the CPU.
struct Engine::Pass {
  Engine& e;
  State& st;
  const int32_t* tokens;
  bool clamp_dt;
  float* logits;  // null: this chunk returns none
  std::vector<float> x, h, y;

  const Layer& layer(size_t i) const { return e.w_.layers[i]; }
  void add_residual(int64_t first, int64_t n) {  // rows [first, first + n) of x += y
    const int64_t E = e.hp_.n_embd;
    float* xs = x.data() + first * E;
    const float* ys = y.data() + first * E;
    e.pool_->parallel_for(n * E, [&](int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j) xs[j] += ys[j];
    }, 1 << 14);
  }
  void embed(int64_t T) {
    const int64_t E = e.hp_.n_embd;
    x.resize(T * E);
    h.resize(T * E);
    y.resize(T * E);
    for (int64_t t = 0; t < T; ++t) e.kt_.dequant_row(e.w_.token_embd.mat(), tokens[t], x.data() + t * E);
  }
  void add_norm(size_t i, int64_t T) {
    if (i) add_residual(0, T);
    e.rmsnorm_rows(x.data(), layer(i).attn_norm, T, h.data());
  }
  void mamba(size_t i, int slot, int64_t T) { e.mamba(layer(i), slot, st, h.data(), T, clamp_dt, y.data()); }
  void attention(size_t i, int slot, int64_t T) { e.attention(layer(i), slot, st, h.data(), T, y.data()); }
  void moe(size_t i, int64_t T) { e.moe(layer(i), h.data(), T, y.data()); }
  void mlp(size_t i, int64_t T) { e.mlp(layer(i).ffn_up, layer(i).ffn_down, h.data(), T, y.data()); }
  void advance(int64_t T) { st.advance(T); }
  void head(int64_t first, int64_t n) {  // lm_head runs only on the rows whose logits are returned
    if (!logits) return;
    const int64_t E = e.hp_.n_embd;
    add_residual(first, n);
    e.rmsnorm_rows(x.data() + first * E, e.w_.output_norm, n, h.data());
    e.linear(e.w_.output, 0, h.data(), E, n, logits, e.hp_.n_vocab);
  }
};

void Engine::eval(State& st, const int32_t* tokens, int64_t T, bool all_logits, float* logits) {
  check_eval_request(hp_, st.layout(), st.n_past(), st.n_ctx(), tokens, T);
  std::lock_guard<std::mutex> lk(eval_mu_);
  const bool clamp_dt = dt_clamp_applies(dt_floor_, st.n_past(), T);
  st.reserve_tokens(st.n_past() + T);
  for (int64_t t0 = 0; t0 < T; t0 += kPrefillStep) {
    const int64_t n = std::min(kPrefillStep, T - t0);
    const bool last = t0 + n == T;
    Pass pass{*this, st, tokens + t0, clamp_dt, all_logits ? logits + t0 * hp_.n_vocab : (last ? logits : nullptr)};
    run_layers(hp_, plan_, pass, n, all_logits);
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

void Engine::run(std::vector<MatJob> jobs) {
  if (!x8_.empty()) {  // first use of a matrix: repack it, then read the X8 copy
    std::vector<PendingRepack*> todo;
    for (MatJob& j : jobs) {
      if (j.w.layout != LAYOUT_ROWS) continue;
      const auto it = x8_.find(j.w.data);
      if (it == x8_.end()) continue;
      // (the same matrix in two jobs is repacked once)
      if (!it->second.done && std::find(todo.begin(), todo.end(), &it->second) == todo.end())
        todo.push_back(&it->second);
      j.w.data = it->second.dst;
      j.w.layout = LAYOUT_X8;
    }
    repack(todo);
  }
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

}  // namespace nemocpu
