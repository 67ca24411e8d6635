// Launch helpers shared by the kernel files: the device's multiprocessor count and
// programmatic dependent launch (PDL, Hopper and newer).
//
// PDL lets a kernel start while the kernel before it on the stream is still running. A kernel
// launched with launch_pdl must call pdl_wait() before it reads or writes anything an earlier
// kernel touches (it may prefetch constant data, such as weights, before); pdl_trigger() at
// the top of a kernel lets the next PDL kernel start early. On GPUs before sm_90 both are
// no-ops and launch_pdl is a plain launch; NEMOCPU_CUDA_PDL=0 in the environment also makes it
// a plain launch (for A/B measurements).
#pragma once
#include <cuda_runtime.h>

#include <cstdlib>
#include <string>
#include <utility>

#include "cuda/check.h"

namespace nemocpu {
namespace cuda {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

// The A/B switches (docs/cuda.md): NEMOCPU_CUDA_<name>=0 turns a path off; a few take a number.
// Call sites read them once, into a static.
inline bool env_off(const char* name) {
  const char* v = std::getenv(name);
  return v && std::string(v) == "0";
}
inline int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v ? std::atoi(v) : fallback;
}

inline int current_device_attr(cudaDeviceAttr attr) {
  int dev = 0, v = 0;
  NEMOCPU_CUDA_CHECK(cudaGetDevice(&dev));
  NEMOCPU_CUDA_CHECK(cudaDeviceGetAttribute(&v, attr, dev));
  return v;
}

inline int sm_count() {
  static const int n = current_device_attr(cudaDevAttrMultiProcessorCount);
  return n;
}

template <class... KArgs, class... Args>
void launch_pdl_smem(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t s, Args&&... args) {
  static const bool pdl = current_device_attr(cudaDevAttrComputeCapabilityMajor) >= 9 && !env_off("NEMOCPU_CUDA_PDL");
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cfg.attrs = pdl ? attr : nullptr;
  cfg.numAttrs = pdl ? 1 : 0;
  NEMOCPU_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

template <class... KArgs, class... Args>
void launch_pdl(void (*kernel)(KArgs...), dim3 grid, dim3 block, cudaStream_t s, Args&&... args) {
  launch_pdl_smem(kernel, grid, block, 0, s, std::forward<Args>(args)...);
}

}  // namespace cuda
}  // namespace nemocpu
