// A/B timing of two builds of csrc/kernels/matmul.cpp (see bench/matmul_ab.sh): both are
// linked into one binary (namespaces nemocpu::oldv / nemocpu::newv) and run alternately,
// so a shared, noisy machine slows both sides alike. Single thread; prints the best and the
// median of REPS (default 20) runs per side, as GB/s of weights and, for T > 1, GFLOP/s.
//   matmul_ab TYPE T ROWS [NEWTYPE]   TYPE: 2 = Q4_0, 8 = Q8_0, 24 = FP8 (E4M3 codes); K = 2688
// NEWTYPE: the new side multiplies a matrix of that type instead (same shape, its own bytes),
// e.g. "matmul_ab 8 1 100000 24" = old Q8_0 against new FP8 in one run.
// ROWS >= 100000 (256+ MB) streams the weights from DRAM; a few hundred rows stay in cache.
// Set HUGE=1 to back the weights with transparent huge pages (a GGUF file mapping is 4 KiB pages).
// Set CPUTIME=1 to time with the thread's CPU clock instead of the wall clock: on a shared
// machine it leaves out the time this thread was descheduled (not cache or memory contention).
#include <sys/mman.h>
#include <time.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

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

// A [rows, K] matrix of `type` with random finite contents (block scales 1.0), in its own mapping.
static WeightMatrix make_matrix(int type, int64_t rows, const float* scale, std::mt19937& g) {
  const int64_t bs = type == GGML_Q4_0 ? 18 : type == GGML_Q8_0 ? 34 : 32;
  const size_t nbytes = rows * (K / 32 * bs);
  uint8_t* w = (uint8_t*)mmap(nullptr, nbytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  madvise(w, nbytes, getenv("HUGE") ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
  for (size_t i = 0; i < nbytes; ++i) w[i] = g() & (type == GGML_I8 ? 0x77 : 0xff);  // FP8: finite codes
  if (type != GGML_I8)
    for (int64_t b = 0; b < rows * K / 32; ++b) w[b * bs] = 0, w[b * bs + 1] = 0x3c;  // block scale 1.0
  WeightMatrix m;
  m.data = w; m.type = type; m.K = K; m.rows = rows; m.row_bytes = K / 32 * bs; m.scale = scale; m.scale_stride = 1;
  return m;
}

int main(int argc, char** argv) {
  if (argc != 4 && argc != 5) return fprintf(stderr, "usage: %s TYPE T ROWS [NEWTYPE]\n", argv[0]), 2;
  const int type[2] = {atoi(argv[1]), atoi(argv[argc == 5 ? 4 : 1])}, T = atoi(argv[2]);
  const int64_t rows = atoll(argv[3]);
  std::mt19937 g(1);
  std::vector<float> x(T * K), y(T * rows), sc(rows, 1.0f);
  const WeightMatrix m[2] = {make_matrix(type[0], rows, sc.data(), g),
                             type[1] == type[0] ? WeightMatrix{} : make_matrix(type[1], rows, sc.data(), g)};
  const WeightMatrix* side[2] = {&m[0], type[1] == type[0] ? &m[0] : &m[1]};
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
    printf("  %s type %d %.3f | %.3f ms (%.2f | %.2f GB/s", v ? "new" : "old", type[v], best[v] * 1e3,
           med[v] * 1e3, nbytes / best[v] / 1e9, nbytes / med[v] / 1e9);
    if (T > 1) printf(", %.1f | %.1f GFLOP/s", flops / best[v] / 1e9, flops / med[v] / 1e9);
    printf(")");
  }
  printf("  new/old speed %.2fx | %.2fx\n", best[0] / best[1], med[0] / med[1]);
}
