// On-disk encodings the engine reads in place: ggml type ids and quant block layouts
// (llama.cpp ggml-common.h; reference/gguf-layout.md §6.3). Plain data only: this header
// is included by every CPU variant, so it must not define functions (no ODR mixing).
#pragma once
#include <cstdint>

namespace nemocpu {

enum GgmlType : int {
  GGML_F32 = 0,
  GGML_F16 = 1,
  GGML_Q4_0 = 2,
  GGML_Q8_0 = 8,
  GGML_I8 = 24,     // nemocpu FP8: float8_e4m3fn bytes + sibling "<name>_scale" (arch.py)
  GGML_BF16 = 30,
};

constexpr int QK = 32;  // elements per Q8_0 / Q4_0 block

struct BlockQ8_0 {      // 34 bytes: x_j = qs_j * d
  uint16_t d;           // fp16
  int8_t qs[QK];
};
static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 block must be 34 bytes");

struct BlockQ4_0 {      // 18 bytes: x_j = (lownib(qs_j) - 8) * d, x_{j+16} = (highnib(qs_j) - 8) * d
  uint16_t d;           // fp16
  uint8_t qs[QK / 2];
};
static_assert(sizeof(BlockQ4_0) == 18, "Q4_0 block must be 18 bytes");

// Activations quantized for the integer dot products (llama.cpp's Q8_0 scheme:
// d = amax / 127, q = round-half-away(x / d)); d kept in fp32 (llama.cpp rounds it to fp16).
struct BlockQ8Act {
  float d;
  int8_t qs[QK];
};
static_assert(sizeof(BlockQ8Act) == 36, "activation block must be 36 bytes");

}  // namespace nemocpu
