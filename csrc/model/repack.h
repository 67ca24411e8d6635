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

// One allocation for every repacked matrix of a model. On Linux it is an anonymous mapping
// advised for transparent huge pages: 2 MiB pages make the load's page faults 512x fewer and
// spare the decode kernels the TLB misses of streaming GBs through 4 KiB pages.
class WeightArena {
 public:
  WeightArena() = default;
  explicit WeightArena(int64_t bytes);
  ~WeightArena();
  WeightArena(WeightArena&& o) noexcept;
  WeightArena& operator=(WeightArena&& o) noexcept;
  WeightArena(const WeightArena&) = delete;
  WeightArena& operator=(const WeightArena&) = delete;
  uint8_t* data() const { return data_; }
  int64_t size() const { return size_; }

 private:
  uint8_t* data_ = nullptr;
  int64_t size_ = 0;     // bytes handed out
  int64_t mapped_ = 0;   // bytes mapped (0: heap allocation)
};

// Asks the OS to map the pages of [p, p + n) of a file mapping in one call (Linux
// MADV_POPULATE_READ) instead of one page fault per 4 KiB; a no-op where unsupported.
void prefault_read(const uint8_t* p, int64_t n);
// Drops this process's mapping of the whole pages inside [p, p + n) of a read-only file
// mapping (they stay in the page cache and fault back in if read again).
void release_file_pages(const uint8_t* p, int64_t n);

}  // namespace nemocpu
