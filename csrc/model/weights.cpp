#include "model/weights.h"

#include <stdexcept>

namespace nemocpu {

const char* ggml_type_name(int type) {
  switch (type) {
    case GGML_F32: return "F32";
    case GGML_F16: return "F16";
    case GGML_BF16: return "BF16";
    case GGML_Q8_0: return "Q8_0";
    case GGML_Q4_0: return "Q4_0";
    case GGML_I8: return "I8 (FP8 E4M3)";
    default: return "unsupported";
  }
}

WeightMatrix Weight::mat(int64_t m) const {
  WeightMatrix w;
  w.data = data + m * rows * row_bytes;
  w.type = type;
  w.K = K;
  w.rows = rows;
  w.row_bytes = row_bytes;
  if (type == GGML_I8) {
    if (n_scale == 1) { w.scale = scale; w.scale_stride = 0; }
    else if (n_scale == n_mat) { w.scale = scale + m; w.scale_stride = 0; }
    else { w.scale = scale + m * rows; w.scale_stride = 1; }
  }
  return w;
}

bool Weight::quantized_act() const { return type == GGML_Q8_0 || type == GGML_Q4_0; }

void HParams::validate() const {
  auto bad = [](const std::string& m) { throw std::invalid_argument("bad hparams: " + m); };
  if (n_vocab <= 0 || n_embd <= 0) bad("n_vocab and n_embd must be positive");
  // Every size must stay far from int64 overflow in byte computations (hostile metadata).
  constexpr int64_t kMaxDim = int64_t(1) << 24;
  for (int64_t v : {n_vocab, n_embd, n_head, n_head_kv, head_dim, ssm_n_head, ssm_head_dim, ssm_d_state,
                    ssm_n_group, ssm_conv_kernel, n_ff, n_expert, n_expert_used, n_ff_exp, n_ff_shexp,
                    expert_group_count, expert_group_used_count})
    if (v < 0 || v > kMaxDim) bad("a size is negative or above 2^24: " + std::to_string(v));
  if (layer_kinds.size() > 4096) bad("more than 4096 layers");
  if (layer_kinds.empty()) bad("no layers");
  for (char k : layer_kinds) {
    if (k == 'M') {
      if (ssm_n_head <= 0 || ssm_head_dim <= 0 || ssm_d_state <= 0 || ssm_n_group <= 0)
        bad("Mamba layers need positive ssm sizes");
      if (ssm_n_head % ssm_n_group) bad("ssm_n_head not divisible by ssm_n_group");
      if (ssm_conv_kernel < 1 || ssm_conv_kernel > 16) bad("ssm_conv_kernel must be in 1..16");
    } else if (k == '*') {
      if (n_head <= 0 || n_head_kv <= 0 || head_dim <= 0) bad("attention layers need positive head sizes");
      if (n_head % n_head_kv) bad("n_head not divisible by n_head_kv");
    } else if (k == 'E') {
      if (n_expert <= 0 || n_expert_used <= 0 || n_expert_used > n_expert || n_ff_exp <= 0)
        bad("bad MoE sizes");
      if (expert_group_count < 1 || n_expert % expert_group_count ||
          expert_group_used_count < 1 || expert_group_used_count > expert_group_count)
        bad("bad expert groups");
      if (expert_group_count > 1 &&
          expert_group_used_count * (n_expert / expert_group_count) < n_expert_used)
        bad("the kept expert groups hold fewer experts than n_expert_used");
    } else if (k == '-') {
      if (n_ff <= 0) bad("dense MLP layers need n_ff > 0");
    } else {
      bad(std::string("unknown layer kind '") + k + "'");
    }
  }
  if (!(rms_eps > 0.0)) bad("rms_eps must be positive");
}

namespace {

std::string shape_str(const std::vector<int64_t>& ne) {
  std::string s = "(";
  for (size_t i = 0; i < ne.size(); ++i) s += (i ? ", " : "") + std::to_string(ne[i]);
  return s + (ne.size() == 1 ? ",)" : ")");
}

[[noreturn]] void fail(const std::string& name, const std::string& msg) {
  throw std::invalid_argument("tensor '" + name + "': " + msg);
}

int64_t row_bytes_of(int type, int64_t K) {
  switch (type) {
    case GGML_F32: return 4 * K;
    case GGML_F16: case GGML_BF16: return 2 * K;
    case GGML_I8: return K;
    case GGML_Q8_0: return K / QK * (int64_t)sizeof(BlockQ8_0);
    case GGML_Q4_0: return K / QK * (int64_t)sizeof(BlockQ4_0);
    default: return -1;
  }
}

class Binder {
 public:
  Binder(const TensorMap& t) : t_(t) {}

  const TensorView* find(const std::string& name) const {
    auto it = t_.find(name);
    return it == t_.end() ? nullptr : &it->second;
  }

  const TensorView& get(const std::string& name, const std::vector<int64_t>& ne) const {
    const TensorView* v = find(name);
    if (!v) fail(name, "missing");
    if (v->ne != ne) fail(name, "shape " + shape_str(v->ne) + ", expected " + shape_str(ne));
    if (!v->data && v->nbytes) fail(name, "no data");
    return *v;
  }

  // Norms, conv, router, biases, ssm_a/d: always F32 (as llama.cpp's converter writes them).
  const float* f32(const std::string& name, const std::vector<int64_t>& ne) const {
    const TensorView& v = get(name, ne);
    if (v.type != GGML_F32)
      fail(name, std::string("type ") + ggml_type_name(v.type) + " (" + std::to_string(v.type) + "), must be F32");
    int64_t n = 1;
    for (auto d : ne)
      if (__builtin_mul_overflow(n, d, &n)) fail(name, "size overflows");
    if (v.nbytes != 4 * n) fail(name, "holds " + std::to_string(v.nbytes) + " bytes, expected " + std::to_string(4 * n));
    if (((uintptr_t)v.data) % alignof(float)) fail(name, "data is not 4-byte aligned");
    return (const float*)v.data;
  }

  // Matrices: F32, F16, BF16, Q8_0, Q4_0 or FP8 (I8 codes + "<name>_scale").
  Weight matrix(const std::string& name, int64_t K, int64_t rows, int64_t n_mat = 0) const {
    std::vector<int64_t> ne = {K, rows};
    if (n_mat) ne.push_back(n_mat);
    const TensorView& v = get(name, ne);
    Weight w;
    w.data = v.data;
    w.type = v.type;
    w.K = K;
    w.rows = rows;
    w.n_mat = n_mat ? n_mat : 1;
    w.row_bytes = row_bytes_of(v.type, K);
    if (w.row_bytes < 0)
      fail(name, "type " + std::to_string(v.type) + " is not supported (F32, F16, BF16, Q8_0, Q4_0, FP8/I8)");
    if ((v.type == GGML_Q8_0 || v.type == GGML_Q4_0) && K % QK)
      fail(name, std::string(ggml_type_name(v.type)) + " needs ne0 divisible by 32, got " + std::to_string(K));
    int64_t expect = 0;
    if (__builtin_mul_overflow(w.row_bytes, rows, &expect) || __builtin_mul_overflow(expect, w.n_mat, &expect))
      fail(name, "size overflows");
    if (v.nbytes != expect)
      fail(name, "holds " + std::to_string(v.nbytes) + " bytes, expected " + std::to_string(expect));
    if ((v.type == GGML_F32 && ((uintptr_t)v.data) % 4) || ((v.type == GGML_F16 || v.type == GGML_BF16 ||
         v.type == GGML_Q8_0 || v.type == GGML_Q4_0) && ((uintptr_t)v.data) % 2))
      fail(name, "data is misaligned for its type");
    if (v.type == GGML_I8) {
      const std::string sname = name + "_scale";
      const TensorView* s = find(sname);
      if (!s) fail(name, "FP8 (I8) weight without its scale tensor '" + sname + "'");
      if (s->type != GGML_F32) fail(sname, "must be F32");
      if (s->ne.size() != 1) fail(sname, "must be 1-D, shape " + shape_str(s->ne));
      const int64_t n = s->ne[0];
      if (n != 1 && n != w.n_mat && n != w.n_mat * rows)
        fail(sname, "has " + std::to_string(n) + " elements; expected 1, " + std::to_string(w.n_mat) + " or " +
                        std::to_string(w.n_mat * rows));
      if (s->nbytes != 4 * n) fail(sname, "byte size does not match its shape");
      if (((uintptr_t)s->data) % 4) fail(sname, "data is not 4-byte aligned");
      w.scale = (const float*)s->data;
      w.n_scale = n;
    }
    return w;
  }

 private:
  const TensorMap& t_;
};

}  // namespace

ModelWeights bind_weights(const HParams& hp, const TensorMap& tensors) {
  hp.validate();
  Binder b(tensors);
  ModelWeights mw;
  const int64_t E = hp.n_embd, V = hp.n_vocab;
  mw.token_embd = b.matrix("token_embd.weight", E, V);
  mw.output_norm = b.f32("output_norm.weight", {E});
  // Like llama.cpp: a file without output.weight reuses the embedding (tied weights).
  mw.output = b.find("output.weight") ? b.matrix("output.weight", E, V) : mw.token_embd;

  const int64_t di = hp.ssm_d_inner(), G = hp.ssm_n_group, nh = hp.ssm_n_head;
  for (int64_t i = 0; i < hp.n_layer(); ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    Layer L;
    L.kind = hp.layer_kinds[i];
    L.attn_norm = b.f32(p + "attn_norm.weight", {E});
    if (L.kind == 'M') {
      L.ssm_in = b.matrix(p + "ssm_in.weight", E, hp.ssm_in_dim());
      L.conv_w = b.f32(p + "ssm_conv1d.weight", {hp.ssm_conv_kernel, hp.ssm_conv_dim()});
      L.conv_b = b.f32(p + "ssm_conv1d.bias", {hp.ssm_conv_dim()});
      L.dt_bias = b.f32(p + "ssm_dt.bias", {nh});
      L.ssm_a = b.f32(p + "ssm_a", {1, nh});
      L.ssm_d = b.f32(p + "ssm_d", {1, nh});
      L.ssm_norm = b.f32(p + "ssm_norm.weight", {di / G, G});
      L.ssm_out = b.matrix(p + "ssm_out.weight", di, E);
    } else if (L.kind == '*') {
      const int64_t q = hp.n_head * hp.head_dim, kv = hp.n_head_kv * hp.head_dim;
      L.wq = b.matrix(p + "attn_q.weight", E, q);
      L.wk = b.matrix(p + "attn_k.weight", E, kv);
      L.wv = b.matrix(p + "attn_v.weight", E, kv);
      L.wo = b.matrix(p + "attn_output.weight", q, E);
    } else if (L.kind == 'E') {
      L.gate_inp = b.f32(p + "ffn_gate_inp.weight", {E, hp.n_expert});
      L.exp_probs_b = b.f32(p + "exp_probs_b.bias", {hp.n_expert});
      L.up_exps = b.matrix(p + "ffn_up_exps.weight", E, hp.n_ff_exp, hp.n_expert);
      L.down_exps = b.matrix(p + "ffn_down_exps.weight", hp.n_ff_exp, E, hp.n_expert);
      L.has_shexp = hp.n_ff_shexp > 0;
      if (L.has_shexp) {
        L.up_shexp = b.matrix(p + "ffn_up_shexp.weight", E, hp.n_ff_shexp);
        L.down_shexp = b.matrix(p + "ffn_down_shexp.weight", hp.n_ff_shexp, E);
      }
    } else {
      L.ffn_up = b.matrix(p + "ffn_up.weight", E, hp.n_ff);
      L.ffn_down = b.matrix(p + "ffn_down.weight", hp.n_ff, E);
    }
    mw.layers.push_back(L);
  }
  return mw;
}

}  // namespace nemocpu
