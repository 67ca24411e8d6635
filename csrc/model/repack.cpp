#include "model/repack.h"

#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

#include "nemocpu/ggml_types.h"

#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#include <unistd.h>
#define NEMOCPU_HAVE_MMAN 1
#endif

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

namespace {
constexpr int64_t kHuge = int64_t(2) << 20;
}

WeightArena::WeightArena(int64_t bytes) {
  if (bytes <= 0) return;
#if defined(__linux__)
  // over-map by one huge page and trim, so the arena starts on a 2 MiB boundary
  const int64_t len = (bytes + kHuge - 1) / kHuge * kHuge;
  void* p = mmap(nullptr, len + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  uint8_t* base = static_cast<uint8_t*>(p);
  uint8_t* aligned = reinterpret_cast<uint8_t*>(((uintptr_t)base + kHuge - 1) / kHuge * kHuge);
  if (aligned > base) munmap(base, aligned - base);
  const int64_t tail = (base + len + kHuge) - (aligned + len);
  if (tail > 0) munmap(aligned + len, tail);
  madvise(aligned, len, MADV_HUGEPAGE);  // advisory: 4 KiB pages if THP is off
  data_ = aligned;
  mapped_ = len;
#else
  data_ = static_cast<uint8_t*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64));
  if (!data_) throw std::bad_alloc();
#endif
  size_ = bytes;
}

WeightArena::~WeightArena() {
  if (!data_) return;
#if defined(__linux__)
  munmap(data_, mapped_);
#else
  std::free(data_);
#endif
}

WeightArena::WeightArena(WeightArena&& o) noexcept
    : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)), mapped_(std::exchange(o.mapped_, 0)) {}

WeightArena& WeightArena::operator=(WeightArena&& o) noexcept {
  if (this != &o) {
    WeightArena old(std::move(*this));
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
    mapped_ = std::exchange(o.mapped_, 0);
  }
  return *this;
}

namespace {
// the whole pages inside [p, p + n)
bool inner_pages(const uint8_t* p, int64_t n, uintptr_t& a, uintptr_t& b) {
#if defined(NEMOCPU_HAVE_MMAN)
  const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
  a = ((uintptr_t)p + page - 1) / page * page;
  b = ((uintptr_t)p + (uintptr_t)n) / page * page;
  return b > a;
#else
  (void)p; (void)n; (void)a; (void)b;
  return false;
#endif
}
}  // namespace

void prefault_read(const uint8_t* p, int64_t n) {
#if defined(__linux__) && defined(MADV_POPULATE_READ)
  uintptr_t a, b;
  if (inner_pages(p, n, a, b)) madvise((void*)a, b - a, MADV_POPULATE_READ);  // errors: plain faults
#else
  (void)p; (void)n;
#endif
}

void release_file_pages(const uint8_t* p, int64_t n) {
#if defined(NEMOCPU_HAVE_MMAN)
  uintptr_t a, b;
  if (inner_pages(p, n, a, b)) madvise((void*)a, b - a, MADV_DONTNEED);
#else
  (void)p; (void)n;
#endif
}

}  // namespace nemocpu
