// Python arguments -> C++ (tensor tables, token ids), shared by the CPU bindings (module.cpp)
// and the CUDA ones (cuda/bindings.cpp) so both accept and refuse exactly the same input.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "model/weights.h"
#include "nemocpu/ggml_types.h"

namespace nemocpu {

// The bytes of a host buffer (a contiguous 1-D uint8 array, normally a view of the mapped file).
inline TensorView host_bytes(const std::string& name, const pybind11::object& data) {
  pybind11::buffer buf = pybind11::reinterpret_borrow<pybind11::object>(data);
  pybind11::buffer_info info = buf.request();
  if (info.ndim != 1 || info.itemsize != 1 || (info.shape[0] > 1 && info.strides[0] != 1))
    throw std::invalid_argument("tensor '" + name + "': data must be a contiguous 1-D uint8 array");
  TensorView v;
  v.data = (const uint8_t*)info.ptr;
  v.nbytes = info.shape[0];
  return v;
}

// bytes_of(name, data) -> TensorView with data/nbytes set; the data objects are appended to
// keep_alive so the bytes outlive the engine that points into them.
template <class BytesOf>
TensorMap tensors_from_dict(const pybind11::dict& d, pybind11::list& keep_alive, BytesOf bytes_of) {
  TensorMap out;
  for (auto item : d) {
    const std::string name = pybind11::str(item.first);
    pybind11::tuple tup;
    try {
      tup = item.second.cast<pybind11::tuple>();
    } catch (const pybind11::cast_error&) {
      throw std::invalid_argument("tensor '" + name + "': expected a (data, ggml_type, ne) tuple");
    }
    if (tup.size() != 3) throw std::invalid_argument("tensor '" + name + "': expected (data, ggml_type, ne)");
    TensorView v = bytes_of(name, pybind11::reinterpret_borrow<pybind11::object>(tup[0]));
    v.type = tup[1].cast<int>();
    v.ne = tup[2].cast<std::vector<int64_t>>();
    out[name] = v;
    keep_alive.append(tup[0]);
  }
  return out;
}

// "f16" | "f32" -> the KV cache's ggml type.
inline int kv_type_of(const std::string& s) {
  if (s == "f16") return GGML_F16;
  if (s == "f32") return GGML_F32;
  throw std::invalid_argument("kv_type must be 'f16' or 'f32', got '" + s + "'");
}

// A 1-D integer array-like -> int32 ids in [0, n_vocab) (checked before the int32 cast, which
// would otherwise wrap large ids into range).
inline std::vector<int32_t> token_ids(const pybind11::object& tokens, int64_t n_vocab) {
  pybind11::array arr = pybind11::array::ensure(tokens);
  if (!arr) throw std::invalid_argument("tokens must be a 1-D integer array");
  const char kind = arr.dtype().kind();
  if ((kind != 'i' && kind != 'u') || arr.ndim() != 1) throw std::invalid_argument("tokens must be a 1-D integer array");
  auto ids64 = pybind11::array_t<int64_t, pybind11::array::c_style | pybind11::array::forcecast>::ensure(arr);
  const int64_t T = ids64.shape(0);
  std::vector<int32_t> ids(T);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t id = ids64.at(t);
    if (id < 0 || id >= n_vocab)
      throw std::invalid_argument("token id " + std::to_string(id) + " at position " + std::to_string(t) +
                                  " is out of range [0, " + std::to_string(n_vocab) + ")");
    ids[t] = (int32_t)id;
  }
  return ids;
}

}  // namespace nemocpu
