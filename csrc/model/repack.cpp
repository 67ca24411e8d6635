#include "model/repack.h"

#include <cstring>

#include "nemocpu/ggml_types.h"

namespace nemocpu {

namespace {
int64_t block_bytes(int type) { return type == GGML_Q8_0 ? sizeof(BlockQ8_0) : sizeof(BlockQ4_0); }
int64_t qs_bytes(int type) { return type == GGML_Q8_0 ? QK : QK / 2; }
}  // namespace

bool x8_supported(int type) { return type == GGML_Q8_0 || type == GGML_Q4_0; }

int64_t x8_matrix_bytes(int type, int64_t rows, int64_t K) {
  const int64_t groups = (rows + X8_ROWS - 1) / X8_ROWS;
  return groups * X8_ROWS * (K / QK) * block_bytes(type);
}

void repack_x8_groups(int type, const uint8_t* src, int64_t rows, int64_t K, int64_t g0, int64_t g1,
                      uint8_t* dst) {
  const int64_t nb = K / QK, bb = block_bytes(type), qb = qs_bytes(type);
  const int64_t row_bytes = nb * bb, sb = X8_ROWS * bb;  // superblock = 8 blocks' bytes
  for (int64_t g = g0; g < g1; ++g) {
    uint8_t* out = dst + g * X8_ROWS * row_bytes;
    for (int64_t b = 0; b < nb; ++b) {
      uint8_t* s = out + b * sb;
      std::memset(s, 0, sb);
      for (int i = 0; i < X8_ROWS; ++i) {
        const int64_t r = g * X8_ROWS + i;
        if (r >= rows) continue;  // padding row: scale 0, codes 0
        const uint8_t* blk = src + r * row_bytes + b * bb;
        std::memcpy(s + 2 * i, blk, 2);  // fp16 d
        const uint8_t* qs = blk + 2;
        for (int64_t c = 0; c < qb / 4; ++c) std::memcpy(s + 16 + c * 32 + 4 * i, qs + 4 * c, 4);
      }
    }
  }
}

}  // namespace nemocpu
