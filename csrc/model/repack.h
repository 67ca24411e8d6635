// Load-time repack of Q8_0 / Q4_0 matrices into the 8-row interleaved layout (LAYOUT_X8,
// described in nemocpu/ggml_types.h) that the matmul kernels stream fastest. Pure byte
// shuffling: the values, scales and their rounding are the file's, bit for bit.
#pragma once
#include <cstdint>

namespace nemocpu {

// Whether `type` has an X8 layout (Q8_0, Q4_0).
bool x8_supported(int type);
// Bytes of the X8 copy of one [rows, K] matrix: rows rounded up to a multiple of 8.
int64_t x8_matrix_bytes(int type, int64_t rows, int64_t K);
// Writes groups [g0, g1) of the X8 copy of the row-major matrix `src` ([rows] rows of
// row_bytes) into dst (the whole matrix's X8 buffer). Rows past `rows` are written as zeros.
void repack_x8_groups(int type, const uint8_t* src, int64_t rows, int64_t K, int64_t g0, int64_t g1,
                      uint8_t* dst);

}  // namespace nemocpu
