// nemocpu._core.ops: every kernel callable from Python on NumPy arrays, on a chosen CPU
// variant (variant=None: the active one), so tests compare each variant with float64.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "cpu/dispatch.h"
#include "model/router.h"
#include "model/repack.h"
#include "model/weights.h"

namespace py = pybind11;
using namespace nemocpu;

namespace {

using F32Array = py::array_t<float, py::array::c_style | py::array::forcecast>;
using U8Array = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

const KernelTable& table(const py::object& variant) {
  return variant.is_none() ? active_kernels() : kernel_table(variant.cast<std::string>());
}

void need(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument(msg);
}

int64_t row_bytes(int type, int64_t K) {
  switch (type) {
    case GGML_F32: return 4 * K;
    case GGML_F16: case GGML_BF16: return 2 * K;
    case GGML_I8: return K;
    case GGML_Q8_0: need(K % QK == 0, "K must be a multiple of 32"); return K / QK * 34;
    case GGML_Q4_0: need(K % QK == 0, "K must be a multiple of 32"); return K / QK * 18;
    default: throw std::invalid_argument("unsupported ggml type " + std::to_string(type));
  }
}

WeightMatrix weight_matrix(const U8Array& w, int type, int64_t K, int64_t rows, const py::object& scale,
                           F32Array& scale_keep) {
  WeightMatrix m;
  m.data = w.data();
  m.type = type;
  m.K = K;
  m.rows = rows;
  m.row_bytes = row_bytes(type, K);
  need(w.size() == m.row_bytes * rows, "weight byte size does not match type and shape");
  if (type == GGML_I8) {
    need(!scale.is_none(), "FP8 weights need a scale");
    scale_keep = F32Array::ensure(scale);
    need(scale_keep.size() == 1 || scale_keep.size() == rows, "FP8 scale must have 1 or rows elements");
    m.scale = scale_keep.data();
    m.scale_stride = scale_keep.size() == 1 ? 0 : 1;
  }
  return m;
}

// layout "x8": the engine's load-time repack of m into `packed`, which m then views.
void apply_layout(WeightMatrix& m, const std::string& layout, std::vector<uint8_t>& packed) {
  if (layout == "rows") return;
  need(layout == "x8", "layout must be 'rows' or 'x8'");
  need(x8_supported(m.type), "the x8 layout is for Q8_0 and Q4_0");
  packed.resize(x8_matrix_bytes(m.type, m.rows, m.K));
  repack_x8_groups(m.type, m.data, m.rows, m.K, 0, (m.rows + X8_ROWS - 1) / X8_ROWS, packed.data());
  m.data = packed.data();
  m.layout = LAYOUT_X8;
}

py::array_t<float> matmul(const U8Array& w, int type, int64_t K, int64_t rows, const F32Array& x,
                          const py::object& scale, const py::object& variant, bool reference,
                          const std::string& layout, int64_t r0, int64_t r1) {
  const KernelTable& kt = table(variant);
  need(x.ndim() == 2 && x.shape(1) == K, "x must be [T, K]");
  F32Array sk;
  WeightMatrix m = weight_matrix(w, type, K, rows, scale, sk);
  std::vector<uint8_t> packed;
  apply_layout(m, layout, packed);
  if (r1 < 0) r1 = rows;
  need(0 <= r0 && r0 <= r1 && r1 <= rows, "need 0 <= r0 <= r1 <= rows");
  need(m.layout != LAYOUT_X8 || (r0 % X8_ROWS == 0 && (r1 % X8_ROWS == 0 || r1 == rows)),
       "x8 row ranges start at a multiple of 8 and end at one or at rows");
  const int64_t T = x.shape(0);
  Activations a;
  a.x = x.data();
  a.ldx = K;
  a.T = T;
  std::vector<BlockQ8Act> q;
  if (type == GGML_Q8_0 || type == GGML_Q4_0) {
    q.resize(T * (K / QK));
    for (int64_t t = 0; t < T; ++t) kt.quantize_q8(x.data() + t * K, K, q.data() + t * (K / QK));
    a.q = q.data();
    a.ldq = K / QK;
  }
  py::array_t<float> y({T, rows});
  std::fill(y.mutable_data(), y.mutable_data() + T * rows, std::nanf(""));  // rows outside [r0, r1) stay NaN
  (reference ? kt.matmul_ref : kt.matmul)(m, r0, r1, a, y.mutable_data(), rows);
  return y;
}

py::tuple quantize_q8_0(const F32Array& x, const py::object& variant) {
  const int64_t n = x.size();
  need(n % QK == 0, "length must be a multiple of 32");
  std::vector<BlockQ8Act> q(n / QK);
  table(variant).quantize_q8(x.data(), n, q.data());
  py::array_t<float> d(n / QK);
  py::array_t<int8_t> qs({n / QK, (int64_t)QK});
  for (int64_t b = 0; b < n / QK; ++b) {
    d.mutable_data()[b] = q[b].d;
    std::memcpy(qs.mutable_data() + b * QK, q[b].qs, QK);
  }
  return py::make_tuple(d, qs);
}

py::array_t<float> dequantize(const U8Array& w, int type, int64_t K, int64_t rows, const py::object& scale,
                              const py::object& variant) {
  F32Array sk;
  const WeightMatrix m = weight_matrix(w, type, K, rows, scale, sk);
  py::array_t<float> out({rows, K});
  for (int64_t r = 0; r < rows; ++r) table(variant).dequant_row(m, r, out.mutable_data() + r * K);
  return out;
}

py::array_t<float> rmsnorm(const F32Array& x, const F32Array& w, float eps, const py::object& variant) {
  need(x.ndim() == 2 && w.size() == x.shape(1), "x must be [T, n], w [n]");
  py::array_t<float> out({x.shape(0), x.shape(1)});
  for (int64_t t = 0; t < x.shape(0); ++t)
    table(variant).rmsnorm(x.data() + t * x.shape(1), w.data(), x.shape(1), eps, out.mutable_data() + t * x.shape(1));
  return out;
}

py::array_t<float> gated_rmsnorm(const F32Array& y, const F32Array& z, const F32Array& w, int64_t group, float eps,
                                 const py::object& variant) {
  need(y.ndim() == 2 && z.ndim() == 2 && y.shape(0) == z.shape(0) && y.shape(1) == z.shape(1) &&
           w.size() == y.shape(1) && group > 0 && y.shape(1) % group == 0,
       "y, z must be [T, n], w [n], n % group == 0");
  const int64_t n = y.shape(1);
  py::array_t<float> out({y.shape(0), n});
  for (int64_t t = 0; t < y.shape(0); ++t)
    table(variant).gated_rmsnorm(y.data() + t * n, z.data() + t * n, w.data(), n, group, eps,
                                 out.mutable_data() + t * n);
  return out;
}

// Returns (out [T, C], new_state [K-1, C]).
py::tuple conv1d_silu(const F32Array& state, const F32Array& x, const F32Array& w, const F32Array& bias,
                      const py::object& variant) {
  need(w.ndim() == 2, "w must be [C, K]");
  const int64_t C = w.shape(0), K = w.shape(1);
  need(K >= 1 && K <= 16, "K must be in 1..16");
  need(x.ndim() == 2 && x.shape(1) == C && bias.size() == C, "x must be [T, C], bias [C]");
  need(state.size() == (K - 1) * C, "state must be [K-1, C]");
  const int64_t T = x.shape(0);
  py::array_t<float> st({K - 1, C});
  std::memcpy(st.mutable_data(), state.data(), sizeof(float) * (K - 1) * C);
  py::array_t<float> out({T, C});
  table(variant).conv1d_silu(st.mutable_data(), x.data(), C, T, w.data(), bias.data(), C, K, 0, C,
                             out.mutable_data(), C);
  return py::make_tuple(out, st);
}

// Returns (y [T, nh*hd], new_state [nh, hd, N]).
py::tuple ssm_scan(const F32Array& state, const F32Array& x, const F32Array& B, const F32Array& C,
                   const F32Array& dt, const F32Array& A, const F32Array& D, int64_t n_group,
                   const py::object& variant) {
  need(state.ndim() == 3, "state must be [nh, hd, N]");
  const int64_t nh = state.shape(0), hd = state.shape(1), N = state.shape(2);
  need(n_group > 0 && nh % n_group == 0, "nh must be divisible by n_group");
  need(x.ndim() == 2 && x.shape(1) == nh * hd, "x must be [T, nh*hd]");
  const int64_t T = x.shape(0);
  need(B.ndim() == 2 && C.ndim() == 2 && B.shape(0) == T && C.shape(0) == T && B.shape(1) == n_group * N &&
           C.shape(1) == n_group * N, "B and C must be [T, G*N]");
  need(dt.ndim() == 2 && dt.shape(0) == T && dt.shape(1) == nh && A.size() == nh && D.size() == nh,
       "dt must be [T, nh], A and D [nh]");
  py::array_t<float> st({nh, hd, N});
  std::memcpy(st.mutable_data(), state.data(), sizeof(float) * nh * hd * N);
  // The kernel reads B and C through one row stride: pack them side by side.
  std::vector<float> bc(T * 2 * n_group * N);
  for (int64_t t = 0; t < T; ++t) {
    std::memcpy(bc.data() + t * 2 * n_group * N, B.data() + t * n_group * N, sizeof(float) * n_group * N);
    std::memcpy(bc.data() + t * 2 * n_group * N + n_group * N, C.data() + t * n_group * N,
                sizeof(float) * n_group * N);
  }
  py::array_t<float> y({T, nh * hd});
  ScanArgs a;
  a.state = st.mutable_data();
  a.x = x.data(); a.ldx = nh * hd;
  a.B = bc.data(); a.C = bc.data() + n_group * N; a.ldbc = 2 * n_group * N;
  a.dt = dt.data(); a.lddt = nh;
  a.A = A.data(); a.D = D.data();
  a.y = y.mutable_data(); a.ldy = nh * hd;
  a.T = T; a.nh = nh; a.hd = hd; a.N = N; a.G = n_group;
  table(variant).ssm_scan(a, 0, nh);
  return py::make_tuple(y, st);
}

// q [T, nq*hd] against a cache k, v [n_past + T, nkv*hd] (float32 or float16); query t sees
// positions 0..n_past+t. Returns o [T, nq*hd]. Runs the kernel as the engine does: per kv head,
// tiles of `tile` tokens (None: all T), each tile's keys cut into n_split ranges merged exactly.
py::array_t<float> attention(const F32Array& q, const py::array& k, const py::array& v, int64_t n_head,
                             int64_t n_head_kv, int64_t n_past, int64_t n_split, const py::object& tile_arg,
                             const py::object& variant, bool reference) {
  need(q.ndim() == 2 && n_head > 0 && n_head_kv > 0 && n_head % n_head_kv == 0, "bad q or head counts");
  const int64_t T = q.shape(0), hd = q.shape(1) / n_head, rep = n_head / n_head_kv;
  need(hd * n_head == q.shape(1) && hd > 0, "q width must be n_head * hd");
  const bool f16 = k.dtype().kind() == 'f' && k.dtype().itemsize() == 2;
  need(k.dtype().is(v.dtype()) && (f16 || (k.dtype().kind() == 'f' && k.dtype().itemsize() == 4)),
       "k and v must both be float32 or float16");
  need(k.ndim() == 2 && v.ndim() == 2 && k.shape(1) == n_head_kv * hd && v.shape(1) == n_head_kv * hd &&
           k.shape(0) >= n_past + T && v.shape(0) >= n_past + T && n_past >= 0,
       "k and v must be [>= n_past + T, n_head_kv * hd]");
  need(n_split >= 1, "n_split must be >= 1");
  const int64_t tile = tile_arg.is_none() ? std::max<int64_t>(T, 1) : tile_arg.cast<int64_t>();
  need(tile >= 1, "tile must be >= 1");
  py::array kc = py::array::ensure(k, py::array::c_style), vc = py::array::ensure(v, py::array::c_style);
  const int64_t esz = f16 ? 2 : 4, qw = q.shape(1);
  const KernelTable& kt = table(variant);
  py::array_t<float> o({T, qw});
  std::vector<float> part(n_split * tile * rep * hd), m(n_split * tile * rep), l(n_split * tile * rep),
      scratch((tile * rep + hd) * kAttnKeyBlock);
  for (int64_t g = 0; g < n_head_kv; ++g)
    for (int64_t t0 = 0; t0 < T; t0 += tile) {
      const int64_t nt = std::min(tile, T - t0), rows = nt * rep, extent = n_past + t0 + nt;
      for (int64_t s = 0; s < n_split; ++s) {
        AttnArgs a;
        a.q = q.data() + t0 * qw + g * rep * hd; a.ldq = qw;
        a.k = (const uint8_t*)kc.data() + g * hd * esz;
        a.v = (const uint8_t*)vc.data() + g * hd * esz;
        a.kv_type = f16 ? GGML_F16 : GGML_F32;
        a.ld = n_head_kv * hd; a.hd = hd; a.rep = rep; a.n_tok = nt;
        a.n_keys = n_past + t0 + 1;
        a.k0 = s * extent / n_split; a.k1 = (s + 1) * extent / n_split;
        a.scale = 1.0f / std::sqrt((float)hd);
        if (n_split == 1) {
          a.out = o.mutable_data() + t0 * qw + g * rep * hd; a.ldo = qw;
        } else {
          a.out = part.data() + s * rows * hd; a.ldo = rep * hd;
        }
        a.m = m.data() + s * rows; a.l = l.data() + s * rows;
        a.scratch = scratch.data();
        (reference ? kt.attention_ref : kt.attention)(a);
      }
      if (n_split > 1)
        kt.attention_merge(part.data(), m.data(), l.data(), n_split, nt, rep, hd,
                           o.mutable_data() + t0 * qw + g * rep * hd, qw);
    }
  return o;
}

py::array_t<uint16_t> to_f16(const F32Array& x, const py::object& variant) {
  py::array_t<uint16_t> out(x.size());
  table(variant).to_f16(x.data(), x.size(), out.mutable_data());
  return out;
}

// Returns (idx [T, k] int32, weight [T, k] float32).
py::tuple route(const F32Array& logits, const py::object& bias, int k, int n_group, int n_group_used, bool norm,
                float scale) {
  need(logits.ndim() == 2, "logits must be [T, n_expert]");
  const int64_t T = logits.shape(0), E = logits.shape(1);
  need(k > 0 && k <= E && n_group >= 1 && E % n_group == 0 && n_group_used >= 1 && n_group_used <= n_group &&
           (int64_t)n_group_used * (E / n_group) >= k,
       "bad k or groups");
  F32Array b;
  if (!bias.is_none()) {
    b = F32Array::ensure(bias);
    need(b.size() == E, "bias must be [n_expert]");
  }
  RouterConfig c;
  c.n_expert = (int)E; c.n_used = k; c.n_group = n_group; c.n_group_used = n_group_used; c.norm = norm;
  c.scale = scale;
  py::array_t<int32_t> idx({T, (int64_t)k});
  py::array_t<float> w({T, (int64_t)k});
  for (int64_t t = 0; t < T; ++t)
    route_token(c, logits.data() + t * E, bias.is_none() ? nullptr : b.data(), idx.mutable_data() + t * k,
                w.mutable_data() + t * k);
  return py::make_tuple(idx, w);
}

}  // namespace

void register_ops(py::module_& m) {
  const auto V = py::arg("variant") = py::none();
  m.def("matmul", &matmul, py::arg("w"), py::arg("type"), py::arg("K"), py::arg("rows"), py::arg("x"),
        py::arg("scale") = py::none(), V, py::arg("reference") = false, py::arg("layout") = "rows",
        py::arg("r0") = 0, py::arg("r1") = -1,
        "y[T, rows] = x[T, K] @ W.T with W the raw bytes of a [rows, K] matrix of ggml `type`; "
        "layout 'x8' repacks W first (Q8_0/Q4_0); only rows [r0, r1) are computed (others NaN)");
  m.def("quantize_q8_0", &quantize_q8_0, py::arg("x"), V, "activation quantization -> (d [nb], qs [nb, 32])");
  m.def("dequantize", &dequantize, py::arg("w"), py::arg("type"), py::arg("K"), py::arg("rows"),
        py::arg("scale") = py::none(), V);
  m.def("rmsnorm", &rmsnorm, py::arg("x"), py::arg("w"), py::arg("eps"), V);
  m.def("gated_rmsnorm", &gated_rmsnorm, py::arg("y"), py::arg("z"), py::arg("w"), py::arg("group"),
        py::arg("eps"), V);
  m.def("conv1d_silu", &conv1d_silu, py::arg("state"), py::arg("x"), py::arg("w"), py::arg("bias"), V);
  m.def("ssm_scan", &ssm_scan, py::arg("state"), py::arg("x"), py::arg("B"), py::arg("C"), py::arg("dt"),
        py::arg("A"), py::arg("D"), py::arg("n_group"), V);
  m.def("attention", &attention, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("n_head"),
        py::arg("n_head_kv"), py::arg("n_past"), py::arg("n_split") = 1, py::arg("tile") = py::none(), V,
        py::arg("reference") = false);
  m.def("to_f16", &to_f16, py::arg("x"), V);
  m.def("route", &route, py::arg("logits"), py::arg("bias"), py::arg("k"), py::arg("n_group") = 1,
        py::arg("n_group_used") = 1, py::arg("norm") = true, py::arg("scale") = 1.0f);
}
