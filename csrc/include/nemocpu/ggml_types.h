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
// sum = sum of qs: the Q4_0 kernels dot the unsigned nibbles and subtract 8 * sum once.
struct BlockQ8Act {
  float d;
  int32_t sum;
  int8_t qs[QK];
};
static_assert(sizeof(BlockQ8Act) == 40, "activation block must be 40 bytes");

// Weight layouts. ROWS is the file's (row r at data + r * row_bytes). X8 is nemocpu's
// load-time repack of Q8_0 / Q4_0 matrices (csrc/model/repack.cpp), the CPU analogue of
// llama.cpp's Q4_0_8x8 buffers: rows are taken in groups of 8 (the last group padded with
// zero rows) and each group is one sequential stream of superblocks, one per 32-column block b:
//   uint16_t d[8];                 fp16 scales of rows 8g..8g+7 for block b
//   then chunks of 32 bytes; chunk c holds bytes 4c..4c+3 of each row's qs, row i at 4*i:
//     Q8_0: 8 chunks (qs bytes 0..31)       -> 16 + 256 = 272 bytes = 8 * sizeof(BlockQ8_0)
//     Q4_0: 4 chunks (qs bytes 0..15)       -> 16 + 128 = 144 bytes = 8 * sizeof(BlockQ4_0)
// so one 256-bit load carries the same 4 columns of 8 rows, a 32-bit lane per row: the dot
// products come out one lane per row, and 8 scales convert with one instruction.
enum WeightLayout : int { LAYOUT_ROWS = 0, LAYOUT_X8 = 1 };
constexpr int X8_ROWS = 8;

}  // namespace nemocpu
