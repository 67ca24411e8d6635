// The four mixers of Nemotron-H (reference/nemotron-h.md §3.3-3.6). Each reads the normed
// input h [T, n_embd] and writes its output [T, n_embd]; the caller adds the residual.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "model/engine.h"

namespace nemocpu {

namespace {
inline float softplus(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }
inline float relu2(float x) { return x > 0.0f ? x * x : 0.0f; }

// Rows [r0, r0 + n) of a batch of activations.
Activations rows_of(const Activations& a, int64_t r0, int64_t n) {
  Activations s = a;
  if (s.x) s.x += r0 * a.ldx;
  if (s.q) s.q += r0 * a.ldq;
  s.T = n;
  return s;
}
}  // namespace

// ---- Mamba-2 ---------------------------------------------------------------------------
void Engine::mamba(const Layer& L, int mi, State& st, const float* h, int64_t T, bool clamp_dt, float* out) {
  const int64_t di = hp_.ssm_d_inner(), cd = hp_.ssm_conv_dim(), nin = hp_.ssm_in_dim();
  const int64_t nh = hp_.ssm_n_head, G = hp_.ssm_n_group, N = hp_.ssm_d_state, K = hp_.ssm_conv_kernel;
  std::vector<float> u(T * nin), xbc(T * cd), dt(T * nh), y(T * di), v(T * di);

  linear(L.ssm_in, 0, h, hp_.n_embd, T, u.data(), nin);  // [z | xBC | dt] per token

  float* conv_state = st.conv(mi);
  pool_->parallel_for(cd, [&](int64_t c0, int64_t c1) {
    kt_.conv1d_silu(conv_state, u.data() + di, nin, T, L.conv_w, L.conv_b, cd, K, c0, c1, xbc.data(), cd);
  }, std::max<int64_t>(64, 8192 / T));

  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < nh; ++j) {
      float d = softplus(u[t * nin + di + cd + j] + L.dt_bias[j]);
      dt[t * nh + j] = clamp_dt ? std::max(d, dt_floor_) : d;
    }

  ScanArgs a;
  a.state = st.ssm(mi);
  a.x = xbc.data(); a.ldx = cd;
  a.B = xbc.data() + di; a.C = xbc.data() + di + G * N; a.ldbc = cd;
  a.dt = dt.data(); a.lddt = nh;
  a.A = L.ssm_a; a.D = L.ssm_d;
  a.y = y.data(); a.ldy = di;
  a.T = T; a.nh = nh; a.hd = hp_.ssm_head_dim; a.N = N; a.G = G;
  pool_->parallel_for(nh, [&](int64_t h0, int64_t h1) { kt_.ssm_scan(a, h0, h1); }, 1);

  const float eps = (float)hp_.rms_eps;
  pool_->parallel_for(T, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      kt_.gated_rmsnorm(y.data() + t * di, u.data() + t * nin, L.ssm_norm, di, di / G, eps, v.data() + t * di);
  }, 4);

  linear(L.ssm_out, 0, v.data(), di, T, out, hp_.n_embd);
}

// ---- attention (no positional encoding, GQA, causal) -----------------------------------
void Engine::attention(const Layer& L, int ai, State& st, const float* h, int64_t T, float* out) {
  const int64_t E = hp_.n_embd, hd = hp_.head_dim, nq = hp_.n_head, nkv = hp_.n_head_kv;
  const int64_t qw = nq * hd, kvw = nkv * hd, n_past = st.n_past();
  std::vector<float> q(T * qw), k(T * kvw), v(T * kvw), o(T * qw);
  {  // q, k, v in one parallel region; the int8 activations are shared when the types allow
    std::vector<BlockQ8Act> qb, kb, vb;
    const Activations aq = activations(L.wq, h, E, T, qb);
    const Activations ak = L.wk.quantized_act() && L.wq.quantized_act() ? aq : activations(L.wk, h, E, T, kb);
    const Activations av = L.wv.quantized_act() && L.wq.quantized_act() ? aq : activations(L.wv, h, E, T, vb);
    run({MatJob{L.wq.mat(), aq, q.data(), qw}, MatJob{L.wk.mat(), ak, k.data(), kvw},
         MatJob{L.wv.mat(), av, v.data(), kvw}});
  }

  const int kv_type = st.layout().kv_type;
  const int64_t rb = st.layout().kv_row_bytes();
  uint8_t* kc = st.k(ai);
  uint8_t* vc = st.v(ai);
  for (int64_t t = 0; t < T; ++t) {
    uint8_t* kd = kc + (n_past + t) * rb;
    uint8_t* vd = vc + (n_past + t) * rb;
    if (kv_type == GGML_F32) {
      std::memcpy(kd, k.data() + t * kvw, rb);
      std::memcpy(vd, v.data() + t * kvw, rb);
    } else {
      kt_.to_f16(k.data() + t * kvw, kvw, (uint16_t*)kd);
      kt_.to_f16(v.data() + t * kvw, kvw, (uint16_t*)vd);
    }
  }

  // One task per (kv head, tile of tokens, key range): the kernel reads each K and V row once
  // for all rep query heads of the tile. Decode has only nkv (kv head) tasks, so the keys are
  // split too (split-K) towards kTasks tasks, in ranges of >= kMinSplitKeys keys cut at multiples
  // of the kernel's key block. The cut depends on the key count and T only, never on the thread
  // count, so threads do not change the result; attention_merge combines ranges in a fixed order.
  constexpr int64_t kRowsPerTask = 64, kTasks = 64, kMinSplitKeys = 256;
  const int64_t rep = nq / nkv;
  const int64_t esz = kv_type == GGML_F32 ? 4 : 2;
  const int64_t tile = std::min<int64_t>(T, std::max<int64_t>(1, kRowsPerTask / rep)), rows = tile * rep;
  const int64_t n_tiles = (T + tile - 1) / tile, n_groups = nkv * n_tiles;
  const int64_t n_split = std::max<int64_t>(1, std::min(kTasks / n_groups, (n_past + T) / kMinSplitKeys));
  std::vector<float> part(n_split > 1 ? n_groups * n_split * rows * hd : 0), ml(2 * n_groups * n_split * rows);
  float* const m_all = ml.data();
  float* const l_all = ml.data() + n_groups * n_split * rows;
  const float scale = 1.0f / std::sqrt((float)hd);
  pool_->parallel_for(n_groups * n_split, [&](int64_t i0, int64_t i1) {
    std::vector<float> scratch((rows + hd) * kAttnKeyBlock);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t s = i % n_split, gt = i / n_split, g = gt / n_tiles, t0 = gt % n_tiles * tile;
      const int64_t nt = std::min(tile, T - t0), extent = n_past + t0 + nt;
      const int64_t chunk = ((extent + n_split - 1) / n_split + kAttnKeyBlock - 1) / kAttnKeyBlock * kAttnKeyBlock;
      AttnArgs a;
      a.q = q.data() + t0 * qw + g * rep * hd;
      a.ldq = qw;
      a.k = kc + g * hd * esz;
      a.v = vc + g * hd * esz;
      a.kv_type = kv_type;
      a.ld = kvw; a.hd = hd; a.rep = rep; a.n_tok = nt;
      a.n_keys = n_past + t0 + 1;
      a.k0 = std::min(s * chunk, extent);
      a.k1 = std::min((s + 1) * chunk, extent);
      a.scale = scale;
      if (n_split == 1) {
        a.out = o.data() + t0 * qw + g * rep * hd;
        a.ldo = qw;
      } else {  // split s of this group: dense [nt * rep, hd], as attention_merge reads it
        a.out = part.data() + (gt * n_split * rows + s * nt * rep) * hd;
        a.ldo = rep * hd;
      }
      a.m = m_all + gt * n_split * rows + s * nt * rep;
      a.l = l_all + gt * n_split * rows + s * nt * rep;
      a.scratch = scratch.data();
      kt_.attention(a);
    }
  }, 1);
  if (n_split > 1)
    pool_->parallel_for(n_groups, [&](int64_t i0, int64_t i1) {
      for (int64_t gt = i0; gt < i1; ++gt) {
        const int64_t g = gt / n_tiles, t0 = gt % n_tiles * tile, nt = std::min(tile, T - t0);
        kt_.attention_merge(part.data() + gt * n_split * rows * hd, m_all + gt * n_split * rows,
                            l_all + gt * n_split * rows, n_split, nt, rep, hd, o.data() + t0 * qw + g * rep * hd, qw);
      }
    }, 1);

  linear(L.wo, 0, o.data(), qw, T, out, E);
}

// ---- MoE: sigmoid router, top-k routed relu^2 experts + unweighted shared expert ------
void Engine::moe(const Layer& L, const float* h, int64_t T, float* out) {
  const int64_t E = hp_.n_embd, ne = hp_.n_expert, k = hp_.n_expert_used, F = hp_.n_ff_exp;
  std::vector<float> logits(T * ne);
  Weight gate;
  gate.data = (const uint8_t*)L.gate_inp;
  gate.type = GGML_F32;
  gate.K = E; gate.rows = ne; gate.row_bytes = 4 * E;
  linear(gate, 0, h, E, T, logits.data(), ne);

  std::vector<int32_t> idx(T * k);
  std::vector<float> wt(T * k);
  pool_->parallel_for(T, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      route_token(router_, logits.data() + t * ne, L.exp_probs_b, idx.data() + t * k, wt.data() + t * k);
  }, 16);

  // Group the (token, slot) pairs s = t*k + j by expert: each expert is one small matmul over
  // its gathered tokens, and all experts (plus the shared one) run in one parallel region
  // per projection.
  std::vector<int64_t> count(ne, 0), first(ne + 1, 0);
  for (int64_t s = 0; s < T * k; ++s) ++count[idx[s]];
  for (int64_t e = 0; e < ne; ++e) first[e + 1] = first[e] + count[e];
  const int64_t n_rows = T * k;
  std::vector<int64_t> row_of(n_rows), slot_of(n_rows);  // slot <-> gathered row
  {
    std::vector<int64_t> fill(first.begin(), first.end() - 1);
    for (int64_t s = 0; s < n_rows; ++s) {
      row_of[s] = fill[idx[s]]++;
      slot_of[row_of[s]] = s;
    }
  }
  const int64_t Fsh = L.has_shexp ? L.up_shexp.rows : 0;
  std::vector<float> act(n_rows * F + T * Fsh), ye(n_rows * E + T * E);
  float* act_sh = act.data() + n_rows * F;
  float* ye_sh = ye.data() + n_rows * E;

  // The experts' inputs are the slots' rows of h. Where the experts dot int8 activations, h is
  // quantized once and its blocks gathered (each token's row would otherwise be quantized again
  // for each of its k experts); float experts gather fp32 rows.
  std::vector<BlockQ8Act> qh, qx, qsh;
  std::vector<float> xe;
  const Activations ah = activations(L.up_exps, h, E, T, qh);
  Activations up_in = ah;
  up_in.T = n_rows;
  if (ah.q) {
    qx.resize(n_rows * ah.ldq);
    up_in.q = qx.data();
    up_in.x = nullptr;  // the int8 kernels read only the blocks
  } else {
    xe.resize(n_rows * E);
    up_in.x = xe.data();
  }
  pool_->parallel_for(n_rows, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t t = slot_of[r] / k;
      if (ah.q) std::memcpy(qx.data() + r * ah.ldq, ah.q + t * ah.ldq, ah.ldq * sizeof(BlockQ8Act));
      else std::memcpy(xe.data() + r * E, h + t * E, E * sizeof(float));
    }
  }, 16);

  std::vector<int64_t> active;
  for (int64_t e = 0; e < ne; ++e)
    if (count[e]) active.push_back(e);
  std::vector<MatJob> jobs;
  for (const int64_t e : active)
    jobs.push_back({L.up_exps.mat(e), rows_of(up_in, first[e], count[e]), act.data() + first[e] * F, F});
  if (L.has_shexp) {
    const bool same = L.up_shexp.quantized_act() == L.up_exps.quantized_act();  // same encoding of h
    jobs.push_back({L.up_shexp.mat(), same ? ah : activations(L.up_shexp, h, E, T, qsh), act_sh, Fsh});
  }
  run(jobs);
  pool_->parallel_for((int64_t)act.size(), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) act[i] = relu2(act[i]);
  }, 1 << 14);
  jobs.clear();
  std::vector<BlockQ8Act> qa, qash;  // the experts' activations, quantized in one pass
  const Activations down_in = activations(L.down_exps, act.data(), F, n_rows, qa);
  for (const int64_t e : active)
    jobs.push_back({L.down_exps.mat(e), rows_of(down_in, first[e], count[e]), ye.data() + first[e] * E, E});
  if (L.has_shexp)
    jobs.push_back({L.down_shexp.mat(), activations(L.down_shexp, act_sh, Fsh, T, qash), ye_sh, E});
  run(jobs);

  // out[t] = shared[t] + sum_j w_j expert_j(t), slots in order: independent of threads and chunking
  pool_->parallel_for(T, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      float* o = out + t * E;
      if (L.has_shexp) std::memcpy(o, ye_sh + t * E, E * sizeof(float));
      else std::fill(o, o + E, 0.0f);
      for (int64_t j = 0; j < k; ++j) {
        const float w = wt[t * k + j];
        const float* src = ye.data() + row_of[t * k + j] * E;
        for (int64_t c = 0; c < E; ++c) o[c] += w * src[c];
      }
    }
  }, 4);
}

// ---- dense relu^2 MLP (also the shared expert) -----------------------------------------
void Engine::mlp(const Weight& up, const Weight& down, const float* h, int64_t T, float* out) {
  const int64_t F = up.rows;
  std::vector<float> act(T * F);
  linear(up, 0, h, hp_.n_embd, T, act.data(), F);
  for (auto& a : act) a = relu2(a);
  linear(down, 0, act.data(), F, T, out, hp_.n_embd);
}

}  // namespace nemocpu
