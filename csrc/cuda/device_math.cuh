// Elementwise device math shared by the kernels of mixers.cu and the epilogues of matmul.cu
// (one definition: the fused and the unfused paths round alike).
#pragma once
#include <cuda_runtime.h>

namespace nemocpu {
namespace cuda {

__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }
__device__ __forceinline__ float softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

}  // namespace cuda
}  // namespace nemocpu
