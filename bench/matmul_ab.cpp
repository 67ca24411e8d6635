// A/B timing of two builds of csrc/kernels/matmul.cpp (see bench/matmul_ab.sh): both are
// linked into one binary (namespaces nemocpu::oldv / nemocpu::newv) and run alternately,
// so a shared, noisy machine slows both sides alike. Single thread; prints the best and the
// median of REPS (default 20) runs per side, as GB/s of weights and, for T > 1, GFLOP/s.
//   matmul_ab TYPE T ROWS [NEWTYPE]   TYPE: 2 = Q4_0, 8 = Q8_0, 24 = FP8 (E4M3 codes); K = 2688
// A suffix x8 (2x8, 8x8) repacks the matrix into the 8-row interleaved layout as the engine
// does at load time. NEWTYPE: the new side multiplies a matrix of that type instead (same
// shape, its own bytes), e.g. "matmul_ab 8x8 1 100000 24" = old Q8_0 x8 against new FP8.
// ROWS >= 100000 (256+ MB) streams the weights from DRAM; a few hundred rows stay in cache.
// Set HUGE=1 to back the weights with transparent huge pages (a GGUF file mapping is 4 KiB pages).
// Set CPUTIME=1 to time with the thread's CPU clock instead of the wall clock: on a shared
// machine it leaves out the time this thread was descheduled (not cache or memory contention).
#include <sys/mman.h>
#include <time.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "model/repack.h"
#include "nemocpu/kernels.h"

namespace nemocpu {
namespace oldv {
void matmul(const WeightMatrix&, int64_t, int64_t, const Activations&, float*, int64_t);
void quantize_q8(const float*, int64_t, BlockQ8Act*);
}  // namespace oldv
namespace newv {
void matmul(const WeightMatrix&, int64_t, int64_t, const Activations&, float*, int64_t);
}
}  // namespace nemocpu
using namespace nemocpu;

constexpr int64_t K = 2688;

// A [rows, K] matrix of `type` with random finite contents (block scales 1.0), in its own
// mapping; with x8, its copy in the 8-row interleaved layout.
static WeightMatrix make_matrix(int type, bool x8, int64_t rows, const float* scale, std::mt19937& g) {
  const int64_t bs = type == GGML_Q4_0 ? 18 : type == GGML_Q8_0 ? 34 : 32;
  const size_t nbytes = rows * (K / 32 * bs);
  uint8_t* w = (uint8_t*)mmap(nullptr, nbytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  madvise(w, nbytes, getenv("HUGE") ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
  for (size_t i = 0; i < nbytes; ++i) w[i] = g() & (type == GGML_I8 ? 0x77 : 0xff);  // FP8: finite codes
  if (type != GGML_I8)
    for (int64_t b = 0; b < rows * K / 32; ++b) w[b * bs] = 0, w[b * bs + 1] = 0x3c;  // block scale 1.0
  WeightMatrix m;
  m.data = w; m.type = type; m.K = K; m.rows = rows; m.row_bytes = K / 32 * bs; m.scale = scale; m.scale_stride = 1;
  if (x8) {  // like the engine: an arena advised for huge pages (model/repack.h)
    WeightArena* arena = new WeightArena(x8_matrix_bytes(type, rows, K));  // lives until exit
    repack_x8_groups(type, w, rows, K, 0, (rows + X8_ROWS - 1) / X8_ROWS, arena->data());
    munmap(w, nbytes);
    m.data = arena->data();
    m.layout = LAYOUT_X8;
  }
  return m;
}

int main(int argc, char** argv) {
  if (argc != 4 && argc != 5) return fprintf(stderr, "usage: %s TYPE T ROWS [NEWTYPE]\n", argv[0]), 2;
  const char* tname[2] = {argv[1], argv[argc == 5 ? 4 : 1]};
  const int type[2] = {atoi(tname[0]), atoi(tname[1])}, T = atoi(argv[2]);
  const bool x8[2] = {strstr(tname[0], "x8") != nullptr, strstr(tname[1], "x8") != nullptr};
  const bool same = strcmp(tname[0], tname[1]) == 0;
  const int64_t rows = atoll(argv[3]);
  std::mt19937 g(1);
  std::vector<float> x(T * K), y(T * rows), sc(rows, 1.0f);
  const WeightMatrix m[2] = {make_matrix(type[0], x8[0], rows, sc.data(), g),
                             same ? WeightMatrix{} : make_matrix(type[1], x8[1], rows, sc.data(), g)};
  const WeightMatrix* side[2] = {&m[0], same ? &m[0] : &m[1]};
  for (auto& v : x) v = (g() % 1000) / 500.0f - 1;
  std::vector<BlockQ8Act> q(T * K / 32);
  for (int t = 0; t < T; ++t) oldv::quantize_q8(x.data() + t * K, K, q.data() + t * K / 32);
  Activations a;
  a.x = x.data(); a.ldx = K; a.q = q.data(); a.ldq = K / 32; a.T = T;
  const int reps = getenv("REPS") ? atoi(getenv("REPS")) : 20;
  const clockid_t clock = getenv("CPUTIME") ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC;
  auto now = [clock] {
    timespec ts;
    clock_gettime(clock, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
  };
  std::vector<double> secs[2];
  for (int rep = 0; rep < reps; ++rep)
    for (int v = 0; v < 2; ++v) {
      const double t0 = now();
      (v ? newv::matmul : oldv::matmul)(*side[v], 0, rows, a, y.data(), rows);
      secs[v].push_back(now() - t0);
    }
  const double flops = 2.0 * T * rows * K;
  double best[2], med[2];
  for (int v = 0; v < 2; ++v) {
    std::sort(secs[v].begin(), secs[v].end());
    best[v] = secs[v][0];
    med[v] = secs[v][secs[v].size() / 2];
  }
  printf("T=%d rows=%lld (best | median of %d%s):", T, (long long)rows, reps, getenv("CPUTIME") ? ", CPU time" : "");
  for (int v = 0; v < 2; ++v) {
    const double nbytes = (double)rows * side[v]->row_bytes;
    printf("  %s type %s %.3f | %.3f ms (%.2f | %.2f GB/s", v ? "new" : "old", tname[v], best[v] * 1e3,
           med[v] * 1e3, nbytes / best[v] / 1e9, nbytes / med[v] / 1e9);
    if (T > 1) printf(", %.1f | %.1f GFLOP/s", flops / best[v] / 1e9, flops / med[v] / 1e9);
    printf(")");
  }
  printf("  new/old speed %.2fx | %.2fx\n", best[0] / best[1], med[0] / med[1]);
}
