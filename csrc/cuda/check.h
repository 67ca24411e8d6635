// CUDA error checks: every runtime call's status becomes a C++ exception naming the call
// (pybind11 turns it into a Python RuntimeError), never a silent failure.
#pragma once
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#define NEMOCPU_CUDA_CHECK(call)                                                              \
  do {                                                                                        \
    const cudaError_t nemocpu_err_ = (call);                                                  \
    if (nemocpu_err_ != cudaSuccess)                                                          \
      throw std::runtime_error(std::string("CUDA error: ") + cudaGetErrorString(nemocpu_err_) + \
                               " in " #call " (" __FILE__ ":" + std::to_string(__LINE__) + ")"); \
  } while (0)
