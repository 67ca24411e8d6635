#include "cuda/engine.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "cuda/check.h"
#include "cuda/launch.cuh"
#include "model/graph.h"
#include "nemocpu/ggml_types.h"

namespace nemocpu {
namespace cuda {

namespace {
constexpr int kDecodeSplits = 32;     // split-K blocks per KV head in single-token attention, at most
                                      // (the kernel uses one per 64 keys: mixers.cu attn_decode_kernel)

template <class T>
T* dev_alloc(std::vector<void*>& owned, int64_t n) {
  void* p = nullptr;
  NEMOCPU_CUDA_CHECK(cudaMalloc(&p, std::max<int64_t>(n, 1) * sizeof(T)));
  owned.push_back(p);
  return static_cast<T*>(p);
}

bool is_device_pointer(const void* p) {
  cudaPointerAttributes at{};
  if (cudaPointerGetAttributes(&at, p) != cudaSuccess) {
    cudaGetLastError();  // clear: plain host memory on old drivers
    return false;
  }
  return at.type == cudaMemoryTypeDevice || at.type == cudaMemoryTypeManaged;
}
}  // namespace

// ---- state ---------------------------------------------------------------------------
CudaState::CudaState(const StateLayout& layout, int device) : layout_(layout), device_(device) {
  NEMOCPU_CUDA_CHECK(cudaSetDevice(device_));
  const int64_t kv = (int64_t)layout_.n_attn * layout_.n_ctx * layout_.kv_row_bytes();
  NEMOCPU_CUDA_CHECK(cudaMalloc(&conv_, std::max<int64_t>(1, layout_.n_mamba * layout_.conv_floats) * 4));
  NEMOCPU_CUDA_CHECK(cudaMalloc(&ssm_, std::max<int64_t>(1, layout_.n_mamba * layout_.ssm_floats) * 4));
  NEMOCPU_CUDA_CHECK(cudaMalloc(&k_, std::max<int64_t>(1, kv)));
  NEMOCPU_CUDA_CHECK(cudaMalloc(&v_, std::max<int64_t>(1, kv)));
  NEMOCPU_CUDA_CHECK(cudaMalloc(&d_n_past_, sizeof(int32_t)));
  reset();
}

CudaState::~CudaState() {
  cudaSetDevice(device_);
  drop_graph();
  for (void* p : {(void*)conv_, (void*)ssm_, (void*)k_, (void*)v_, (void*)d_n_past_}) cudaFree(p);
}

void CudaState::drop_graph() {
  if (graph_) cudaGraphExecDestroy(graph_);
  graph_ = nullptr;
  graph_owner_ = nullptr;
}

int64_t CudaState::nbytes() const {
  return 4 * layout_.n_mamba * (layout_.conv_floats + layout_.ssm_floats) +
         2 * (int64_t)layout_.n_attn * layout_.n_ctx * layout_.kv_row_bytes();
}

void CudaState::copy_from(const CudaState& o) {
  NEMOCPU_CUDA_CHECK(cudaSetDevice(device_));
  const int64_t nm = layout_.n_mamba;
  NEMOCPU_CUDA_CHECK(cudaMemcpy(conv_, o.conv_, nm * layout_.conv_floats * 4, cudaMemcpyDeviceToDevice));
  NEMOCPU_CUDA_CHECK(cudaMemcpy(ssm_, o.ssm_, nm * layout_.ssm_floats * 4, cudaMemcpyDeviceToDevice));
  const int64_t rb = layout_.kv_row_bytes(), per_layer = layout_.n_ctx * rb;
  if (o.n_past_ > 0)  // only the used positions of each attention layer
    for (int i = 0; i < layout_.n_attn; ++i) {
      NEMOCPU_CUDA_CHECK(cudaMemcpy(k_ + i * per_layer, o.k_ + i * per_layer, o.n_past_ * rb, cudaMemcpyDeviceToDevice));
      NEMOCPU_CUDA_CHECK(cudaMemcpy(v_ + i * per_layer, o.v_ + i * per_layer, o.n_past_ * rb, cudaMemcpyDeviceToDevice));
    }
  n_past_ = o.n_past_;
  const int32_t np = (int32_t)n_past_;
  NEMOCPU_CUDA_CHECK(cudaMemcpy(d_n_past_, &np, sizeof np, cudaMemcpyHostToDevice));
  // These copies run on the legacy stream, the engine on its own non-blocking stream: wait
  // for them, or the next eval could read the state before it is written.
  NEMOCPU_CUDA_CHECK(cudaDeviceSynchronize());
}

std::unique_ptr<CudaState> CudaState::snapshot() const {
  auto s = std::make_unique<CudaState>(layout_, device_);
  s->copy_from(*this);
  return s;
}

void CudaState::restore(const CudaState& snap) {
  if (!(snap.layout_ == layout_)) throw std::invalid_argument("snapshot was taken from a state of another shape");
  copy_from(snap);
}

void CudaState::reset() {
  NEMOCPU_CUDA_CHECK(cudaSetDevice(device_));
  NEMOCPU_CUDA_CHECK(cudaMemset(conv_, 0, std::max<int64_t>(1, layout_.n_mamba * layout_.conv_floats) * 4));
  NEMOCPU_CUDA_CHECK(cudaMemset(ssm_, 0, std::max<int64_t>(1, layout_.n_mamba * layout_.ssm_floats) * 4));
  NEMOCPU_CUDA_CHECK(cudaMemset(d_n_past_, 0, sizeof(int32_t)));
  NEMOCPU_CUDA_CHECK(cudaDeviceSynchronize());  // see copy_from: memsets are asynchronous
  n_past_ = 0;
}

// ---- engine: weights -----------------------------------------------------------------
CudaEngine::CudaEngine(const HParams& hp, const TensorMap& tensors, double dt_floor, int device)
    : hp_(hp), plan_(LayerPlan::of(hp)), dt_floor_((float)dt_floor), device_(device) {
  if (!(dt_floor >= 0.0) || !std::isfinite(dt_floor)) throw std::invalid_argument("dt_floor must be >= 0");
  const ModelWeights mw = bind_weights(hp, tensors);  // all checks of the CPU engine, first
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    cudaGetLastError();
    throw std::runtime_error("no CUDA device is usable (driver missing or no GPU)");
  }
  if (device < 0 || device >= n) throw std::invalid_argument("CUDA device " + std::to_string(device) + " does not exist");
  NEMOCPU_CUDA_CHECK(cudaSetDevice(device_));
  NEMOCPU_CUDA_CHECK(cudaDeviceSynchronize());  // device-array sources written on other streams
  cudaDeviceProp prop{};
  NEMOCPU_CUDA_CHECK(cudaGetDeviceProperties(&prop, device_));
  device_name_ = prop.name;
  NEMOCPU_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  upload_weights(mw);
  alloc_scratch(dec_, 1, 1);
  NEMOCPU_CUDA_CHECK(cudaDeviceSynchronize());
  NEMOCPU_CUDA_CHECK(cudaMallocHost(&h_tok_, sizeof(int32_t)));
  NEMOCPU_CUDA_CHECK(cudaMallocHost(&h_logits_, hp_.n_vocab * sizeof(float)));
}

CudaEngine::~CudaEngine() {
  cudaSetDevice(device_);
  cudaStreamSynchronize(stream_);
  free_scratch(dec_);
  free_scratch(pre_);
  for (void* p : owned_) cudaFree(p);
  cudaFreeHost(h_tok_);
  cudaFreeHost(h_logits_);
  if (h_idx_) cudaFreeHost(h_idx_);
  if (h_rows_) cudaFreeHost(h_rows_);
  cudaStreamDestroy(stream_);
}

float* CudaEngine::upload_f32(const float* src, int64_t n) {
  float* d = dev_alloc<float>(owned_, n);
  NEMOCPU_CUDA_CHECK(cudaMemcpy(d, src, n * sizeof(float), cudaMemcpyDefault));  // synced at the end of the constructor
  weight_bytes_ += n * 4;
  return d;
}

GpuWeight CudaEngine::upload_matrix(const Weight& w) {
  GpuWeight g;
  if (!w.data) return g;
  g.type = w.type;
  g.K = w.K;
  g.rows = w.rows;
  g.n_mat = w.n_mat;
  const int64_t nbytes = w.row_bytes * w.rows * w.n_mat;
  const uint8_t* src = w.data;
  void* staging = nullptr;
  if (!is_device_pointer(w.data)) {  // host bytes (the mapped GGUF file): stage them on the GPU
    NEMOCPU_CUDA_CHECK(cudaMalloc(&staging, std::max<int64_t>(nbytes, 1)));
    NEMOCPU_CUDA_CHECK(cudaMemcpy(staging, w.data, nbytes, cudaMemcpyHostToDevice));
    // a copy from pageable memory may return before its DMA lands; the repack below runs on
    // the engine's non-blocking stream, which does not wait for the legacy stream
    NEMOCPU_CUDA_CHECK(cudaDeviceSynchronize());
    src = static_cast<const uint8_t*>(staging);
  }
  repack_weight(src, w.row_bytes, w.scale, w.n_scale, g, stream_);
  NEMOCPU_CUDA_CHECK(cudaStreamSynchronize(stream_));
  if (staging) cudaFree(staging);
  for (void* p : {(void*)g.q, (void*)g.d, (void*)g.s})
    if (p) owned_.push_back(p);
  const int64_t n_rows = g.rows * g.n_mat;
  weight_bytes_ += n_rows * g.row_bytes + (g.d ? n_rows * (g.Kp / QK) * 2 : 0) + (g.s ? n_rows * 4 : 0);
  return g;
}

void CudaEngine::upload_weights(const ModelWeights& mw) {
  const int64_t E = hp_.n_embd, di = hp_.ssm_d_inner(), nh = hp_.ssm_n_head, cd = hp_.ssm_conv_dim();
  token_embd_ = upload_matrix(mw.token_embd);
  output_ = mw.output.data == mw.token_embd.data ? token_embd_ : upload_matrix(mw.output);
  output_norm_ = upload_f32(mw.output_norm, E);
  for (const Layer& L : mw.layers) {
    DevLayer D;
    D.kind = L.kind;
    D.attn_norm = upload_f32(L.attn_norm, E);
    if (L.kind == 'M') {
      D.ssm_in = upload_matrix(L.ssm_in);
      D.ssm_out = upload_matrix(L.ssm_out);
      D.conv_w = upload_f32(L.conv_w, cd * hp_.ssm_conv_kernel);
      D.conv_b = upload_f32(L.conv_b, cd);
      D.dt_bias = upload_f32(L.dt_bias, nh);
      D.ssm_a = upload_f32(L.ssm_a, nh);
      D.ssm_d = upload_f32(L.ssm_d, nh);
      D.ssm_norm = upload_f32(L.ssm_norm, di);
    } else if (L.kind == '*') {
      D.wq = upload_matrix(L.wq);
      D.wk = upload_matrix(L.wk);
      D.wv = upload_matrix(L.wv);
      D.wo = upload_matrix(L.wo);
    } else if (L.kind == 'E') {
      Weight gate;  // the router is an F32 [n_expert, E] matrix
      gate.data = (const uint8_t*)L.gate_inp;
      gate.type = GGML_F32;
      gate.K = E;
      gate.rows = hp_.n_expert;
      gate.row_bytes = 4 * E;
      D.gate = upload_matrix(gate);
      D.exp_probs_b = upload_f32(L.exp_probs_b, hp_.n_expert);
      D.up_exps = upload_matrix(L.up_exps);
      D.down_exps = upload_matrix(L.down_exps);
      D.has_shexp = L.has_shexp;
      if (L.has_shexp) {
        D.up_shexp = upload_matrix(L.up_shexp);
        D.down_shexp = upload_matrix(L.down_shexp);
        D.down_shexp_halves = split_k(D.down_shexp);
      }
    } else {
      D.ffn_up = upload_matrix(L.ffn_up);
      D.ffn_down = upload_matrix(L.ffn_down);
    }
    layers_.push_back(D);
  }
}

// The shared expert's down projection for decode with its K cut in two (two stacked matrices of
// half rows; the MoE combine adds their outputs): rows of 1856 bytes instead of 3712 let that
// launch, the routed experts' down products with it, run two blocks per multiprocessor (rows up
// to ~2.9 KB, tc::launch) instead of one. FP8 rows without padding, K a multiple of 64 (the
// halves stay whole padded rows); before sm_90 the fp32 kernel takes the two halves as two jobs,
// as exact. NEMOCPU_CUDA_SPLIT_SHEXP=0: never (A/B).
GpuWeight CudaEngine::split_k(const GpuWeight& w) {
  static const bool off = env_off("NEMOCPU_CUDA_SPLIT_SHEXP");
  GpuWeight h;
  if (off || w.type != GGML_I8 || !w.q || !w.s || w.n_mat != 1 || w.K % 64 || w.Kp != w.K || w.row_bytes != w.K)
    return h;
  h = w;
  h.K = h.Kp = w.K / 2;
  h.row_bytes = w.row_bytes / 2;
  h.n_mat = 2;
  NEMOCPU_CUDA_CHECK(cudaMalloc(&h.q, 2 * w.rows * h.row_bytes));
  owned_.push_back(h.q);
  NEMOCPU_CUDA_CHECK(cudaMalloc(&h.s, 2 * w.rows * sizeof(float)));
  owned_.push_back(h.s);
  for (int half = 0; half < 2; ++half) {
    NEMOCPU_CUDA_CHECK(cudaMemcpy2DAsync(h.q + half * w.rows * h.row_bytes, h.row_bytes, w.q + half * h.row_bytes,
                                         w.row_bytes, h.row_bytes, w.rows, cudaMemcpyDeviceToDevice, stream_));
    NEMOCPU_CUDA_CHECK(cudaMemcpyAsync(h.s + half * w.rows, w.s, w.rows * sizeof(float), cudaMemcpyDeviceToDevice,
                                       stream_));
  }
  NEMOCPU_CUDA_CHECK(cudaStreamSynchronize(stream_));
  weight_bytes_ += 2 * w.rows * (h.row_bytes + (int64_t)sizeof(float));
  return h;
}

void CudaEngine::alloc_scratch(Scratch& sc, int64_t cap, int64_t logit_rows) {
  free_scratch(sc);
  const int64_t E = hp_.n_embd, T = cap, k = std::max<int64_t>(1, hp_.n_expert_used);
  const int64_t qw = hp_.n_head * hp_.head_dim, kvw = hp_.n_head_kv * hp_.head_dim;
  const int64_t F = std::max(hp_.n_ff, hp_.n_ff_exp * k + hp_.n_ff_shexp);
  auto& o = sc.owned;
  sc.cap = cap;
  sc.logit_rows = logit_rows;
  sc.tok = dev_alloc<int32_t>(o, T);
  sc.x = dev_alloc<float>(o, T * E);
  sc.h = dev_alloc<float>(o, T * E);
  sc.y = dev_alloc<float>(o, T * E);
  sc.u = dev_alloc<float>(o, T * hp_.ssm_in_dim());
  sc.xbc = dev_alloc<float>(o, T * hp_.ssm_conv_dim());
  sc.ys = dev_alloc<float>(o, T * hp_.ssm_d_inner());
  sc.v = dev_alloc<float>(o, T * hp_.ssm_d_inner());
  sc.q = dev_alloc<float>(o, T * qw);
  sc.k = dev_alloc<float>(o, T * kvw);
  sc.kv_v = dev_alloc<float>(o, T * kvw);
  sc.o = dev_alloc<float>(o, T * qw);
  // T == 1 evals: split-K partials and the arrival counters, zeroed once (each launch leaves them at
  // zero); on the engine's stream, which the kernels that use them follow
  const size_t part = attention_part_floats(1, hp_.n_head, hp_.n_head_kv, hp_.head_dim, kDecodeSplits);
  sc.part = dev_alloc<float>(o, part);
  NEMOCPU_CUDA_CHECK(cudaMemsetAsync(sc.part, 0, part * sizeof(float), stream_));
  if (cap > 1 && hp_.ssm_n_head > 0)  // prefill: the chunked scan's scratch
    sc.ssd = dev_alloc<float>(o, (int64_t)ssd_scratch_floats(cap, hp_.ssm_n_head, hp_.ssm_head_dim, hp_.ssm_d_state));
  const int64_t n_count = std::max<int64_t>(1, hp_.ssm_n_group);
  sc.scan_count = dev_alloc<int32_t>(o, n_count);
  NEMOCPU_CUDA_CHECK(cudaMemsetAsync(sc.scan_count, 0, n_count * sizeof(int32_t), stream_));
  sc.glog = dev_alloc<float>(o, T * hp_.n_expert);
  sc.idx = dev_alloc<int32_t>(o, T * k);
  sc.wt = dev_alloc<float>(o, T * k);
  sc.row_of = dev_alloc<int32_t>(o, T * k);
  sc.src_row = dev_alloc<int32_t>(o, T * k);
  sc.grp = dev_alloc<int32_t>(o, 3 * std::max<int64_t>(1, hp_.n_expert));
  sc.xe = dev_alloc<float>(o, T * k * E);
  sc.act = dev_alloc<float>(o, T * F);
  sc.ye = dev_alloc<float>(o, T * (k + 2) * E);  // routed, shared expert, its second K half
  sc.logits = dev_alloc<float>(o, logit_rows * hp_.n_vocab);
}

void CudaEngine::free_scratch(Scratch& sc) {
  for (void* p : sc.owned) cudaFree(p);
  sc = Scratch{};
}

std::map<std::string, int64_t> CudaEngine::memory_report() const {
  size_t free_b = 0, total_b = 0;
  cudaMemGetInfo(&free_b, &total_b);
  return {{"weights_mapped_bytes", 0},
          {"weights_copied_bytes", 0},
          {"weights_repacked_bytes", weight_bytes_},  // the GPU copy (rows padded, quant scales split)
          {"device_total_bytes", (int64_t)total_b},
          {"device_free_bytes", (int64_t)free_b}};
}

std::unique_ptr<CudaState> CudaEngine::new_state(int64_t n_ctx, int kv_type) const {
  if (n_ctx <= 0) throw std::invalid_argument("n_ctx must be positive, got " + std::to_string(n_ctx));
  if (n_ctx > INT32_MAX / 2) throw std::invalid_argument("n_ctx too large");
  if (kv_type != GGML_F16 && kv_type != GGML_F32) throw std::invalid_argument("kv_type must be f16 or f32");
  return std::make_unique<CudaState>(StateLayout::of(hp_, n_ctx, kv_type), device_);
}

// ---- engine: forward -----------------------------------------------------------------
void CudaEngine::lin(const GpuWeight& w, const float* x, int64_t ldx, int64_t T, float* y, int64_t ldy, bool relu2,
                     int mat) {
  LinearArgs a;
  a.w = &w;
  a.mat = mat;
  a.x = x;
  a.ldx = ldx;
  a.y = y;
  a.ldy = ldy;
  a.T = T;
  a.relu2 = relu2;
  linear(a, stream_);
}

void CudaEngine::mamba(const DevLayer& L, int mi, CudaState& st, Scratch& sc, int64_t T, bool clamp_dt) {
  const int64_t nin = hp_.ssm_in_dim(), di = hp_.ssm_d_inner(), G = hp_.ssm_n_group;
  MambaArgs a;
  a.u = sc.u;
  a.ldu = nin;
  a.conv_state = st.conv_ + mi * st.layout_.conv_floats;
  a.conv_w = L.conv_w;
  a.conv_b = L.conv_b;
  a.xbc = sc.xbc;
  a.ssm_state = st.ssm_ + mi * st.layout_.ssm_floats;
  a.dt_bias = L.dt_bias;
  a.A = L.ssm_a;
  a.D = L.ssm_d;
  a.y = sc.ys;
  a.T = T;
  a.C = hp_.ssm_conv_dim();
  a.K = hp_.ssm_conv_kernel;
  a.nh = hp_.ssm_n_head;
  a.hd = hp_.ssm_head_dim;
  a.N = hp_.ssm_d_state;
  a.G = G;
  a.dt_floor = clamp_dt ? dt_floor_ : 0.0f;
  a.ssd = sc.ssd;
  LinearArgs in;  // in_proj, then the conv (fused into the product where it can be)
  in.w = &L.ssm_in;
  in.x = sc.h;
  in.ldx = hp_.n_embd;
  in.y = sc.u;
  in.ldy = nin;
  in.T = T;
  in.conv = &a;
  linear(in, stream_);
  static const bool fuse_norm = !env_off("NEMOCPU_CUDA_SCAN_NORM");
  if (T == 1 && fuse_norm) {  // the scan's last block of each group runs the gated norm
    a.norm_w = L.ssm_norm;
    a.norm_eps = (float)hp_.rms_eps;
    a.norm_out = sc.v;
    a.group_count = sc.scan_count;
  }
  mamba_scan(a, stream_);
  if (!a.norm_out) gated_rmsnorm(sc.ys, sc.u, nin, L.ssm_norm, T, di, di / G, (float)hp_.rms_eps, sc.v, stream_);
  lin(L.ssm_out, sc.v, di, T, sc.y, hp_.n_embd);
}

void CudaEngine::attention(const DevLayer& L, int ai, CudaState& st, Scratch& sc, int64_t T) {
  const int64_t E = hp_.n_embd, qw = hp_.n_head * hp_.head_dim, kvw = hp_.n_head_kv * hp_.head_dim;
  if (T == 1) {  // decode: q, k and v in one launch
    VecBatch b;
    b.jobs = {VecJob{&L.wq, nullptr, 0, sc.h, E, sc.q, qw}, VecJob{&L.wk, nullptr, 0, sc.h, E, sc.k, kvw},
              VecJob{&L.wv, nullptr, 0, sc.h, E, sc.kv_v, kvw}};
    gemv_batch(b, 1, stream_);
  } else {
    lin(L.wq, sc.h, E, T, sc.q, qw);
    lin(L.wk, sc.h, E, T, sc.k, kvw);
    lin(L.wv, sc.h, E, T, sc.kv_v, kvw);
  }
  const int64_t layer_bytes = st.layout_.n_ctx * st.layout_.kv_row_bytes();
  const bool f16 = st.layout_.kv_type == GGML_F16;
  uint8_t* kc = st.k_ + ai * layer_bytes;
  uint8_t* vc = st.v_ + ai * layer_bytes;
  if (T > 1) kv_write(sc.k, sc.kv_v, T, kvw, st.d_n_past_, kc, vc, f16, stream_);  // T == 1: attention writes them
  AttnArgs a;
  a.q = sc.q;
  a.kc = kc;
  a.vc = vc;
  a.f16 = f16;
  a.n_past = st.d_n_past_;
  a.out = sc.o;
  a.part = sc.part;
  a.T = T;
  a.nq = hp_.n_head;
  a.nkv = hp_.n_head_kv;
  a.hd = hp_.head_dim;
  a.splits = T == 1 ? kDecodeSplits : 1;
  if (T == 1) {
    a.k_new = sc.k;
    a.v_new = sc.kv_v;
    a.count = attention_counters(sc.part, 1, hp_.n_head, hp_.head_dim, kDecodeSplits);
  }
  cuda::attention(a, stream_);
  lin(L.wo, sc.o, qw, T, sc.y, E);
}

void CudaEngine::moe(const DevLayer& L, Scratch& sc, int64_t T) {
  const int64_t E = hp_.n_embd, ne = hp_.n_expert, F = hp_.n_ff_exp, Fsh = L.has_shexp ? L.up_shexp.rows : 0;
  const int k = (int)hp_.n_expert_used;
  lin(L.gate, sc.h, E, T, sc.glog, ne);
  RouterArgs r;
  r.logits = sc.glog;
  r.bias = L.exp_probs_b;
  r.idx = sc.idx;
  r.wt = sc.wt;
  r.T = T;
  r.n_expert = (int)ne;
  r.k = k;
  r.n_group = (int)hp_.expert_group_count;
  r.n_group_used = (int)hp_.expert_group_used_count;
  r.norm = hp_.expert_weights_norm;
  r.scale = (float)hp_.expert_weights_scale;
  route(r, stream_);
  float* act_sh = sc.act + T * k * F;
  float* ye_sh = sc.ye + T * k * E;
  if (T == 1) {
    // decode: expert ids stay on the device (graph-capturable). The routed experts and the
    // shared expert go up in one launch and down in another, then the weighted combine (a
    // down launch that also combined measured slower: bench/RESULTS.md). The shared expert's
    // product is the largest: it goes first, so its blocks are scheduled first.
    VecBatch up, down;
    up.relu2 = true;
    const bool halves = L.has_shexp && L.down_shexp_halves.q;
    float* ye_sh2 = halves ? ye_sh + E : nullptr;
    if (L.has_shexp) {
      up.jobs.push_back(VecJob{&L.up_shexp, nullptr, 0, sc.h, E, act_sh, Fsh});
      if (halves) {
        const int64_t half = L.down_shexp_halves.K;
        down.jobs.push_back(VecJob{&L.down_shexp_halves, nullptr, 0, act_sh, Fsh, ye_sh, E});
        down.jobs.push_back(VecJob{&L.down_shexp_halves, nullptr, 1, act_sh + half, Fsh, ye_sh2, E});
      } else {
        down.jobs.push_back(VecJob{&L.down_shexp, nullptr, 0, act_sh, Fsh, ye_sh, E});
      }
    }
    for (int j = 0; j < k; ++j) {
      up.jobs.push_back(VecJob{&L.up_exps, sc.idx, j, sc.h, E, sc.act + j * F, F});
      down.jobs.push_back(VecJob{&L.down_exps, sc.idx, j, sc.act + j * F, F, sc.ye + j * E, E});
    }
    gemv_batch(up, 1, stream_);
    gemv_batch(down, 1, stream_);
    moe_combine(sc.ye, L.has_shexp ? ye_sh : nullptr, ye_sh2, sc.wt, nullptr, 1, k, E, sc.y, stream_);
    return;
  }
  // prefill: group the (token, slot) pairs by expert on the host, one product per expert
  const int64_t n = T * k;
  NEMOCPU_CUDA_CHECK(cudaMemcpyAsync(h_idx_, sc.idx, n * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_));
  NEMOCPU_CUDA_CHECK(cudaStreamSynchronize(stream_));
  std::vector<int64_t> count(ne, 0), first(ne + 1, 0);
  for (int64_t s = 0; s < n; ++s) ++count[h_idx_[s]];
  for (int64_t e = 0; e < ne; ++e) first[e + 1] = first[e] + count[e];
  int32_t* row_of = h_rows_;      // slot s -> gathered row
  int32_t* src_row = h_rows_ + n; // gathered row -> token
  {
    std::vector<int64_t> fill(first.begin(), first.end() - 1);
    for (int64_t s = 0; s < n; ++s) {
      row_of[s] = (int32_t)fill[h_idx_[s]]++;
      src_row[row_of[s]] = (int32_t)(s / k);
    }
  }
  NEMOCPU_CUDA_CHECK(cudaMemcpyAsync(sc.row_of, row_of, n * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
  NEMOCPU_CUDA_CHECK(cudaMemcpyAsync(sc.src_row, src_row, n * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
  gather_rows(sc.h, E, sc.src_row, n, sc.xe, stream_);
  if (L.up_exps.type == GGML_F32) {  // exact fp32 matrix-vector path (tests), one launch per expert
    for (int64_t e = 0; e < ne; ++e)
      if (count[e]) lin(L.up_exps, sc.xe + first[e] * E, E, count[e], sc.act + first[e] * F, F, true, (int)e);
    for (int64_t e = 0; e < ne; ++e)
      if (count[e]) lin(L.down_exps, sc.act + first[e] * F, F, count[e], sc.ye + first[e] * E, E, false, (int)e);
  } else {  // all experts in one tensor-core launch per projection
    int32_t* grp = h_rows_ + 2 * n;
    int n_groups = 0;
    int64_t max_rows = 0;
    for (int64_t e = 0; e < ne; ++e)
      if (count[e]) {
        grp[3 * n_groups] = (int32_t)e;
        grp[3 * n_groups + 1] = (int32_t)first[e];
        grp[3 * n_groups + 2] = (int32_t)count[e];
        max_rows = std::max(max_rows, count[e]);
        ++n_groups;
      }
    NEMOCPU_CUDA_CHECK(cudaMemcpyAsync(sc.grp, grp, 3 * n_groups * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
    GroupedArgs g;
    g.w = &L.up_exps;
    g.grp = sc.grp;
    g.n_groups = n_groups;
    g.max_rows = max_rows;
    g.x = sc.xe; g.ldx = E;
    g.y = sc.act; g.ldy = F;
    g.relu2 = true;
    grouped_linear(g, stream_);
    g.w = &L.down_exps;
    g.x = sc.act; g.ldx = F;
    g.y = sc.ye; g.ldy = E;
    g.relu2 = false;
    grouped_linear(g, stream_);
  }
  if (L.has_shexp) {
    lin(L.up_shexp, sc.h, E, T, act_sh, Fsh, true);
    lin(L.down_shexp, act_sh, Fsh, T, ye_sh, E);
  }
  moe_combine(sc.ye, L.has_shexp ? ye_sh : nullptr, nullptr, sc.wt, sc.row_of, T, k, E, sc.y, stream_);
}

// One forward pass: the operations of the layer sequence (model/graph.h) on the GPU, enqueued
// on the engine's stream. The residual add of each block is fused into the next block's norm.
struct CudaEngine::Pass {
  CudaEngine& e;
  CudaState& st;
  Scratch& sc;
  bool clamp_dt;

  const DevLayer& layer(size_t i) const { return e.layers_[i]; }
  float eps() const { return (float)e.hp_.rms_eps; }
  void embed(int64_t T) { cuda::embed(e.token_embd_, sc.tok, T, sc.x, e.hp_.n_embd, e.stream_); }
  void add_norm(size_t i, int64_t T) {
    add_rmsnorm(sc.x, i ? sc.y : nullptr, layer(i).attn_norm, T, e.hp_.n_embd, eps(), sc.h, e.stream_);
  }
  void mamba(size_t i, int slot, int64_t T) { e.mamba(layer(i), slot, st, sc, T, clamp_dt); }
  void attention(size_t i, int slot, int64_t T) { e.attention(layer(i), slot, st, sc, T); }
  void moe(size_t i, int64_t T) { e.moe(layer(i), sc, T); }
  void mlp(size_t i, int64_t T) {
    const DevLayer& L = layer(i);
    e.lin(L.ffn_up, sc.h, e.hp_.n_embd, T, sc.act, L.ffn_up.rows, true);
    e.lin(L.ffn_down, sc.act, L.ffn_up.rows, T, sc.y, e.hp_.n_embd);
  }
  void advance(int64_t T) { add_scalar_i32(st.d_n_past_, (int32_t)T, e.stream_); }
  void head(int64_t first, int64_t n) {  // only the rows whose logits are returned
    const int64_t E = e.hp_.n_embd;
    add_rmsnorm(sc.x + first * E, sc.y + first * E, e.output_norm_, n, E, eps(), sc.h, e.stream_);
    e.lin(e.output_, sc.h, E, n, sc.logits, e.hp_.n_vocab);
  }
};

void CudaEngine::forward(CudaState& st, Scratch& sc, int64_t T, bool clamp_dt, bool all_logits) {
  Pass pass{*this, st, sc, clamp_dt};
  run_layers(hp_, plan_, pass, T, all_logits);
}

void CudaEngine::decode_step(CudaState& st, int32_t token, float* logits) {
  const size_t vbytes = hp_.n_vocab * sizeof(float);
  *h_tok_ = token;
  auto enqueue = [&] {
    NEMOCPU_CUDA_CHECK(cudaMemcpyAsync(dec_.tok, h_tok_, sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
    forward(st, dec_, 1, false, false);
  };
  if (st.graph_ && st.graph_owner_ == this) {
    NEMOCPU_CUDA_CHECK(cudaGraphLaunch(st.graph_, stream_));
  } else if (st.graph_owner_ == this) {
    // second step of this state here: capture the step once, then replay it
    cudaGraph_t g = nullptr;
    NEMOCPU_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    try {
      enqueue();
    } catch (...) {
      cudaStreamEndCapture(stream_, &g);
      if (g) cudaGraphDestroy(g);
      throw;
    }
    NEMOCPU_CUDA_CHECK(cudaStreamEndCapture(stream_, &g));
    NEMOCPU_CUDA_CHECK(cudaGraphInstantiate(&st.graph_, g, 0));
    cudaGraphDestroy(g);
    NEMOCPU_CUDA_CHECK(cudaGraphLaunch(st.graph_, stream_));
  } else {
    // first step: run eagerly (kernel attributes get set outside any capture)
    st.drop_graph();
    enqueue();
    st.graph_owner_ = this;
  }
  // The logits go straight into the caller's buffer when it is page-locked (the Python binding
  // hands out such buffers for single tokens): a staging copy of a 131072-entry row cost 25-40 us
  // per token on the host. Issued after the launch, so the host call overlaps the GPU's work.
  cudaPointerAttributes attr{};
  const bool pinned = cudaPointerGetAttributes(&attr, logits) == cudaSuccess && attr.type == cudaMemoryTypeHost;
  cudaGetLastError();  // (older runtimes report unregistered memory as an error)
  NEMOCPU_CUDA_CHECK(cudaMemcpyAsync(pinned ? logits : h_logits_, dec_.logits, vbytes, cudaMemcpyDeviceToHost, stream_));
  NEMOCPU_CUDA_CHECK(cudaStreamSynchronize(stream_));
  if (!pinned) std::memcpy(logits, h_logits_, vbytes);
}

void CudaEngine::eval(CudaState& st, const int32_t* tokens, int64_t T, bool all_logits, float* logits) {
  check_eval_request(hp_, st.layout(), st.n_past(), st.n_ctx(), tokens, T);
  std::lock_guard<std::mutex> lk(mu_);
  NEMOCPU_CUDA_CHECK(cudaSetDevice(device_));
  const bool clamp_dt = dt_clamp_applies(dt_floor_, st.n_past(), T);
  if (T == 1 && !clamp_dt) {
    decode_step(st, tokens[0], logits);
    st.n_past_ += 1;
    return;
  }
  const int64_t chunk = std::min<int64_t>(T, kPrefillStep);
  const int64_t logit_rows = all_logits ? chunk : 1;
  if (pre_.cap < chunk || pre_.logit_rows < logit_rows) alloc_scratch(pre_, std::max(chunk, pre_.cap),
                                                                      std::max(logit_rows, pre_.logit_rows));
  const int64_t kk = std::max<int64_t>(1, hp_.n_expert_used) * chunk;
  if (h_idx_cap_ < kk) {
    if (h_idx_) cudaFreeHost(h_idx_);
    if (h_rows_) cudaFreeHost(h_rows_);
    NEMOCPU_CUDA_CHECK(cudaMallocHost(&h_idx_, kk * sizeof(int32_t)));
    NEMOCPU_CUDA_CHECK(cudaMallocHost(&h_rows_, (2 * kk + 3 * std::max<int64_t>(1, hp_.n_expert)) * sizeof(int32_t)));
    h_idx_cap_ = kk;
  }
  for (int64_t t0 = 0; t0 < T; t0 += chunk) {
    const int64_t n = std::min(chunk, T - t0);
    const bool last = t0 + n == T;
    NEMOCPU_CUDA_CHECK(cudaMemcpyAsync(pre_.tok, tokens + t0, n * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
    forward(st, pre_, n, clamp_dt, all_logits);
    if (all_logits || last) {
      float* dst = all_logits ? logits + t0 * hp_.n_vocab : logits;
      const int64_t rows = all_logits ? n : 1;
      NEMOCPU_CUDA_CHECK(cudaMemcpyAsync(dst, pre_.logits, rows * hp_.n_vocab * sizeof(float), cudaMemcpyDeviceToHost,
                                         stream_));
    }
    NEMOCPU_CUDA_CHECK(cudaStreamSynchronize(stream_));
    st.n_past_ += n;
  }
}

// ---- queries -------------------------------------------------------------------------
std::vector<std::string> device_names() {
  std::vector<std::string> out;
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return out;
  }
  for (int i = 0; i < n; ++i) {
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, i) == cudaSuccess)
      out.push_back(std::string(p.name) + " (sm_" + std::to_string(p.major) + std::to_string(p.minor) + ", " +
                    std::to_string(p.totalGlobalMem >> 20) + " MiB)");
  }
  return out;
}

std::map<std::string, std::string> build_info() {
  int rt = 0, drv = 0;
  cudaRuntimeGetVersion(&rt);
  if (cudaDriverGetVersion(&drv) != cudaSuccess) cudaGetLastError();
  auto ver = [](int v) { return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10); };
  return {{"runtime", ver(rt)}, {"driver", drv ? ver(drv) : std::string("none")},
#ifdef NEMOCPU_CUDA_ARCHS
          {"archs", NEMOCPU_CUDA_ARCHS}
#else
          {"archs", "?"}
#endif
  };
}

}  // namespace cuda
}  // namespace nemocpu
