// Host-side runner of the GPU weight decoder (csrc/cuda/decode.cuh): reads 32-bit words of one
// type from stdin and writes the decoded floats (WordElems<TYPE>::n per word) to stdout, for
// tests/test_cuda_build.py to compare with numpy / ml_dtypes. Needs nvcc, no GPU.
//   decode_check TYPE < words.u32 > values.f32
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "cuda/decode.cuh"

using namespace nemocpu;
using namespace nemocpu::cuda;

template <int TYPE>
int run() {
  uint32_t wd;
  float v[8];
  while (std::fread(&wd, sizeof wd, 1, stdin) == 1) {
    decode_word<TYPE>(wd, v);
    std::fwrite(v, sizeof(float), WordElems<TYPE>::n, stdout);
  }
  return 0;
}

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  switch (std::atoi(argv[1])) {
    case GGML_F32: return run<GGML_F32>();
    case GGML_F16: return run<GGML_F16>();
    case GGML_BF16: return run<GGML_BF16>();
    case GGML_I8: return run<GGML_I8>();
    case GGML_Q8_0: return run<GGML_Q8_0>();
    case GGML_Q4_0: return run<GGML_Q4_0>();
    default: return 2;
  }
}
