// Python bindings of the CUDA engine (nemocpu._core.CudaEngine / CudaState), registered by
// bindings/module.cpp when the core is built with NEMOCPU_CUDA=ON. Same interface as
// Engine / State, so nemocpu.model swaps one class for the other. Tensor data may be host
// buffers (the mapped GGUF file) or device arrays (__cuda_array_interface__, e.g. torch).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cuda_runtime.h>

#include <memory>
#include <mutex>
#include <stdexcept>
#include <utility>
#include <vector>

#include "bindings/py_convert.h"
#include "cuda/engine.h"
#include "cuda/launch.cuh"

namespace py = pybind11;
using namespace nemocpu;
using nemocpu::cuda::CudaEngine;
using nemocpu::cuda::CudaState;

namespace {

// Page-locked host buffers of one logits row, for single-token evals: the engine copies the
// logits straight into them (CudaEngine::decode_step). A buffer returns to the pool when the
// numpy array that owns it is freed; the pool outlives the engine while arrays remain.
class PinnedRows {
 public:
  explicit PinnedRows(size_t floats) : floats_(floats) {}
  ~PinnedRows() {
    for (float* p : free_) cudaFreeHost(p);
  }
  float* take() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (!free_.empty()) {
        float* p = free_.back();
        free_.pop_back();
        return p;
      }
    }
    void* p = nullptr;
    if (cudaHostAlloc(&p, floats_ * sizeof(float), cudaHostAllocPortable) != cudaSuccess) {
      cudaGetLastError();
      return nullptr;  // the caller falls back to a plain array
    }
    return static_cast<float*>(p);
  }
  void give(float* p) {
    std::lock_guard<std::mutex> lk(mu_);
    if (free_.size() < kKeep)
      free_.push_back(p);
    else
      cudaFreeHost(p);
  }

 private:
  static constexpr size_t kKeep = 8;
  size_t floats_;
  std::mutex mu_;
  std::vector<float*> free_;
};

struct PyCudaEngine {
  py::list keep_alive;  // owners of the source bytes until the upload is done (and after: cheap)
  std::unique_ptr<CudaEngine> eng;
  std::shared_ptr<PinnedRows> rows;
  int n_threads = 1;
};

// A [1, n_vocab] float32 array in a pooled page-locked buffer (a plain one if none can be had).
py::array_t<float> logits_row(PyCudaEngine& self, int64_t n_vocab) {
  float* p = self.rows->take();
  if (!p) return py::array_t<float>({(int64_t)1, n_vocab});
  auto* owner = new std::pair<std::shared_ptr<PinnedRows>, float*>(self.rows, p);
  py::capsule free_when_done(owner, [](void* o) {
    auto* own = static_cast<std::pair<std::shared_ptr<PinnedRows>, float*>*>(o);
    own->first->give(own->second);
    delete own;
  });
  return py::array_t<float>({(int64_t)1, n_vocab}, p, free_when_done);
}

TensorView view_of(const std::string& name, const py::object& data) {
  TensorView v;
  if (py::hasattr(data, "__cuda_array_interface__")) {
    py::dict cai = data.attr("__cuda_array_interface__");
    auto shape = cai["shape"].cast<std::vector<int64_t>>();
    const std::string ts = cai["typestr"].cast<std::string>();
    const bool contiguous = !cai.contains("strides") || cai["strides"].is_none();
    if (shape.size() != 1 || (ts != "|u1" && ts != "|i1") || !contiguous)
      throw std::invalid_argument("tensor '" + name + "': device data must be a contiguous 1-D uint8 array");
    v.data = reinterpret_cast<const uint8_t*>(cai["data"].cast<py::tuple>()[0].cast<uintptr_t>());
    v.nbytes = shape[0];
    return v;
  }
  return host_bytes(name, data);
}

py::array_t<float> eval(PyCudaEngine& self, CudaState& st, const py::object& tokens, bool all_logits) {
  const int64_t n_vocab = self.eng->hparams().n_vocab;
  const std::vector<int32_t> ids = token_ids(tokens, n_vocab);
  const int64_t T = (int64_t)ids.size();
  static const bool pinned = !cuda::env_off("NEMOCPU_CUDA_PINNED_LOGITS");  // A/B switch
  py::array_t<float> logits = T == 1 && pinned ? logits_row(self, n_vocab)
                                               : py::array_t<float>({all_logits ? T : (int64_t)1, n_vocab});
  float* out = logits.mutable_data();
  {
    py::gil_scoped_release release;
    self.eng->eval(st, ids.data(), T, all_logits, out);
  }
  return logits;
}

}  // namespace

void register_cuda(py::module_& m, HParams (*hparams_from_dict)(const py::dict&)) {
  m.def("cuda_devices", &cuda::device_names, "CUDA devices usable by this build (empty: none)");
  m.def("cuda_build", &cuda::build_info, "CUDA runtime / driver versions and compiled GPU archs");

  py::class_<CudaState>(m, "CudaState")
      .def_property_readonly("n_past", &CudaState::n_past)
      .def_property_readonly("n_ctx", &CudaState::n_ctx)
      .def_property_readonly("nbytes", &CudaState::nbytes)
      .def("snapshot", &CudaState::snapshot, "Deep copy of the used state (on the GPU)")
      .def("restore", &CudaState::restore, py::arg("snapshot"))
      .def("reset", &CudaState::reset);

  py::class_<PyCudaEngine>(m, "CudaEngine")
      .def(py::init([hparams_from_dict](const py::dict& hparams, const py::dict& tensors, int n_threads,
                                         double dt_floor, int device) {
             auto self = std::make_unique<PyCudaEngine>();
             HParams hp = hparams_from_dict(hparams);
             TensorMap tm = tensors_from_dict(tensors, self->keep_alive, view_of);
             {
               py::gil_scoped_release release;
               self->eng = std::make_unique<CudaEngine>(hp, tm, dt_floor, device);
             }
             self->keep_alive = py::list();  // the GPU holds its own copy now
             self->rows = std::make_shared<PinnedRows>((size_t)hp.n_vocab);
             self->n_threads = n_threads > 0 ? n_threads : 1;
             return self;
           }),
           py::arg("hparams"), py::arg("tensors"), py::arg("n_threads") = 0, py::arg("dt_floor") = 0.0,
           py::arg("device") = 0)
      .def_property_readonly("n_vocab", [](PyCudaEngine& e) { return e.eng->hparams().n_vocab; })
      .def_property_readonly("variant", [](PyCudaEngine&) { return std::string("cuda"); })
      .def_property_readonly("device_name", [](PyCudaEngine& e) { return e.eng->device_name(); })
      .def_property_readonly("n_threads", [](PyCudaEngine& e) { return e.n_threads; })
      .def_property_readonly("prefill_step", [](PyCudaEngine&) { return CudaEngine::kPrefillStep; },
                             "tokens per internal prefill chunk")
      .def("memory_report", [](PyCudaEngine& e) { return e.eng->memory_report(); })
      .def_property_readonly("repacks", [](PyCudaEngine&) { return false; },
                             "No lazy repack: the weights are uploaded in the GPU layout at construction")
      .def("repack_all", [](PyCudaEngine&) {}, "Nothing to do (kept for the Engine interface)")
      .def("set_threads", [](PyCudaEngine& e, int n) { e.n_threads = n > 0 ? n : 1; }, py::arg("n"),
           "Host threads do not matter on the GPU path; kept for the Engine interface")
      .def("new_state", [](PyCudaEngine& e, int64_t n_ctx, const std::string& kv) {
             return e.eng->new_state(n_ctx, kv_type_of(kv));
           }, py::arg("n_ctx"), py::arg("kv_type") = "f16")
      .def("eval", &eval, py::arg("state"), py::arg("tokens"), py::arg("all_logits") = false);
}
