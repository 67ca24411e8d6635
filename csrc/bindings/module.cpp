// Python bindings of the C++ core (nemocpu._core): Engine, State, CPU-variant queries.
// The kernel entry points for tests are in ops.cpp (nemocpu._core.ops).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>

#include "cpu/dispatch.h"
#include "bindings/py_convert.h"
#include "model/engine.h"

namespace py = pybind11;
using namespace nemocpu;

void register_ops(py::module_& m);  // ops.cpp
#if defined(NEMOCPU_WITH_CUDA)
void register_cuda(py::module_& m, HParams (*hparams_from_dict)(const py::dict&));  // cuda/bindings.cpp
#endif

namespace {

template <class T>
T get_key(const py::dict& d, const char* key) {
  if (!d.contains(key)) throw std::invalid_argument(std::string("hparams lacks '") + key + "'");
  try {
    return d[key].cast<T>();
  } catch (const py::cast_error&) {
    throw std::invalid_argument(std::string("hparams['") + key + "'] has the wrong type");
  }
}

template <class T>
T get_key(const py::dict& d, const char* key, T def) {
  return d.contains(key) && !d[key].is_none() ? get_key<T>(d, key) : def;
}

HParams hparams_from_dict(const py::dict& d) {
  HParams hp;
  hp.arch = get_key<std::string>(d, "arch");
  hp.n_vocab = get_key<int64_t>(d, "n_vocab");
  hp.n_embd = get_key<int64_t>(d, "n_embd");
  hp.layer_kinds = get_key<std::string>(d, "layer_kinds");
  hp.n_head = get_key<int64_t>(d, "n_head", 0);
  hp.n_head_kv = get_key<int64_t>(d, "n_head_kv", 0);
  hp.head_dim = get_key<int64_t>(d, "head_dim", 0);
  hp.ssm_n_head = get_key<int64_t>(d, "ssm_n_head", 0);
  hp.ssm_head_dim = get_key<int64_t>(d, "ssm_head_dim", 0);
  hp.ssm_d_state = get_key<int64_t>(d, "ssm_d_state", 0);
  hp.ssm_n_group = get_key<int64_t>(d, "ssm_n_group", 1);
  hp.ssm_conv_kernel = get_key<int64_t>(d, "ssm_conv_kernel", 4);
  hp.n_ff = get_key<int64_t>(d, "n_ff", 0);
  hp.n_expert = get_key<int64_t>(d, "n_expert", 0);
  hp.n_expert_used = get_key<int64_t>(d, "n_expert_used", 0);
  hp.n_ff_exp = get_key<int64_t>(d, "n_ff_exp", 0);
  hp.n_ff_shexp = get_key<int64_t>(d, "n_ff_shexp", 0);
  hp.expert_weights_norm = get_key<bool>(d, "expert_weights_norm", true);
  hp.expert_weights_scale = get_key<double>(d, "expert_weights_scale", 1.0);
  hp.expert_group_count = get_key<int64_t>(d, "expert_group_count", 1);
  hp.expert_group_used_count = get_key<int64_t>(d, "expert_group_used_count", 1);
  hp.rms_eps = get_key<double>(d, "rms_eps", 1e-5);
  hp.tie_word_embeddings = get_key<bool>(d, "tie_word_embeddings", false);
  return hp;
}

// Engine plus the Python objects that own the mapped weight bytes.
struct PyEngine {
  py::list keep_alive;
  std::unique_ptr<Engine> eng;
};

py::array_t<float> eval(PyEngine& self, State& st, const py::object& tokens, bool all_logits) {
  const int64_t n_vocab = self.eng->hparams().n_vocab;
  const std::vector<int32_t> ids = token_ids(tokens, n_vocab);
  const int64_t T = (int64_t)ids.size();
  const int64_t rows = all_logits ? T : 1;
  py::array_t<float> logits({rows, n_vocab});
  float* out = logits.mutable_data();
  {
    py::gil_scoped_release release;
    self.eng->eval(st, ids.data(), T, all_logits, out);
  }
  return logits;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "nemocpu C++ core: the Nemotron-H engine, its state and the CPU kernels";
  m.attr("__version__") = NEMOCPU_VERSION;

  m.def("variants", &usable_variants, "CPU kernel variants usable on this machine (generic first, best last)");
  m.def("compiled_variants", &compiled_variants);
  m.def("active_variant", [] { return std::string(active_kernels().variant); },
        "The variant in use (NEMOCPU_ISA if set, else the best usable)");
  m.def("cpu_features", &cpu_features);

  py::class_<State>(m, "State")
      .def_property_readonly("n_past", &State::n_past)
      .def_property_readonly("n_ctx", &State::n_ctx)
      .def_property_readonly("nbytes", &State::nbytes)
      .def("snapshot", &State::snapshot, "Deep copy of the used state")
      .def("restore", &State::restore, py::arg("snapshot"))
      .def("reset", &State::reset);

  py::class_<PyEngine>(m, "Engine")
      .def(py::init([](const py::dict& hparams, const py::dict& tensors, int n_threads, double dt_floor,
                       bool repack, bool release_mapped) {
             auto self = std::make_unique<PyEngine>();
             HParams hp = hparams_from_dict(hparams);
             TensorMap tm = tensors_from_dict(tensors, self->keep_alive, host_bytes);
             EngineOptions opt;
             opt.repack = repack;
             opt.release_mapped = release_mapped;
             self->eng = std::make_unique<Engine>(hp, tm, n_threads, dt_floor, opt);
             return self;
           }),
           py::arg("hparams"), py::arg("tensors"), py::arg("n_threads") = 0, py::arg("dt_floor") = 0.0,
           py::arg("repack") = true, py::arg("release_mapped") = false,
           "repack: Q8_0/Q4_0 matrices to the 8-row interleaved layout on first use (a counted copy); "
           "release_mapped: the tensors are views of a read-only file mapping whose pages may be dropped")
      .def_property_readonly("n_vocab", [](PyEngine& e) { return e.eng->hparams().n_vocab; })
      .def_property_readonly("variant", [](PyEngine& e) { return std::string(e.eng->kernels().variant); })
      .def_property_readonly("n_threads", [](PyEngine& e) { return e.eng->n_threads(); })
      .def_property_readonly("prefill_step", [](PyEngine&) { return Engine::kPrefillStep; },
                             "tokens per internal prefill chunk")
      .def("memory_report", [](PyEngine& e) { return e.eng->memory_report(); })
      .def_property_readonly("repacks", [](PyEngine& e) { return e.eng->repacks(); },
                             "Q8_0/Q4_0 matrices are repacked (asked for, the variant gains from it, the file has some)")
      .def("repack_all", [](PyEngine& e) {
             py::gil_scoped_release release;
             e.eng->repack_all();
           }, "repack every Q8_0/Q4_0 matrix now (otherwise each is repacked on first use)")
      .def("set_threads", [](PyEngine& e, int n) { e.eng->set_threads(n); }, py::arg("n"))
      .def("new_state", [](PyEngine& e, int64_t n_ctx, const std::string& kv) {
             return e.eng->new_state(n_ctx, kv_type_of(kv));
           }, py::arg("n_ctx"), py::arg("kv_type") = "f16")
      .def("eval", &eval, py::arg("state"), py::arg("tokens"), py::arg("all_logits") = false);

  py::module_ ops = m.def_submodule("ops", "kernel entry points (for tests)");
  register_ops(ops);
#if defined(NEMOCPU_WITH_CUDA)
  register_cuda(m, &hparams_from_dict);
#endif
}
