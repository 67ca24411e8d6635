// A/B timing of two builds of csrc/kernels/matmul.cpp (see bench/matmul_ab.sh): both are
// linked into one binary (namespaces nemocpu::oldv / nemocpu::newv) and run alternately,
// so a shared, noisy machine slows both sides alike. Single thread; prints the best and the
// median of REPS (default 20) runs per side, as GB/s of weights and, for T > 1, GFLOP/s.
//   matmul_ab TYPE T ROWS    TYPE: 2 = Q4_0, 8 = Q8_0, 24 = FP8 (E4M3 codes); K = 2688
// ROWS >= 100000 (256+ MB) streams the weights from DRAM; a few hundred rows stay in cache.
// Set HUGE=1 to back the weights with transparent huge pages (a GGUF file mapping is 4 KiB pages).
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
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

int main(int argc, char** argv) {
  if (argc != 4) return fprintf(stderr, "usage: %s TYPE T ROWS\n", argv[0]), 2;
  const int type = atoi(argv[1]), T = atoi(argv[2]);
  const int64_t K = 2688, rows = atoll(argv[3]);
  const int64_t bs = type == 2 ? 18 : type == 8 ? 34 : 32, rb = K / 32 * bs;
  const size_t nbytes = rows * rb;
  uint8_t* w = (uint8_t*)mmap(nullptr, nbytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  madvise(w, nbytes, getenv("HUGE") ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
  std::mt19937 g(1);
  for (size_t i = 0; i < nbytes; ++i) w[i] = g() & (type == 24 ? 0x77 : 0xff);  // FP8: finite codes
  if (type != 24)
    for (int64_t b = 0; b < rows * K / 32; ++b) w[b * bs] = 0, w[b * bs + 1] = 0x3c;  // block scale 1.0
  std::vector<float> x(T * K), y(T * rows), sc(rows, 1.0f);
  for (auto& v : x) v = (g() % 1000) / 500.0f - 1;
  std::vector<BlockQ8Act> q(T * K / 32);
  for (int t = 0; t < T; ++t) oldv::quantize_q8(x.data() + t * K, K, q.data() + t * K / 32);
  WeightMatrix m;
  m.data = w; m.type = type; m.K = K; m.rows = rows; m.row_bytes = rb; m.scale = sc.data(); m.scale_stride = 1;
  Activations a;
  a.x = x.data(); a.ldx = K; a.q = q.data(); a.ldq = K / 32; a.T = T;
  const int reps = getenv("REPS") ? atoi(getenv("REPS")) : 20;
  std::vector<double> secs[2];
  for (int rep = 0; rep < reps; ++rep)
    for (int v = 0; v < 2; ++v) {
      const auto t0 = std::chrono::steady_clock::now();
      (v ? newv::matmul : oldv::matmul)(m, 0, rows, a, y.data(), rows);
      secs[v].push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
  const double flops = 2.0 * T * rows * K;
  double best[2], med[2];
  for (int v = 0; v < 2; ++v) {
    std::sort(secs[v].begin(), secs[v].end());
    best[v] = secs[v][0];
    med[v] = secs[v][secs[v].size() / 2];
  }
  printf("type %d T=%d rows=%lld (best | median of %d):", type, T, (long long)rows, reps);
  for (int v = 0; v < 2; ++v) {
    printf("  %s %.3f | %.3f ms (%.2f | %.2f GB/s", v ? "new" : "old", best[v] * 1e3, med[v] * 1e3,
           nbytes / best[v] / 1e9, nbytes / med[v] / 1e9);
    if (T > 1) printf(", %.1f | %.1f GFLOP/s", flops / best[v] / 1e9, flops / med[v] / 1e9);
    printf(")");
  }
  printf("  new/old speed %.2fx | %.2fx\n", best[0] / best[1], med[0] / med[1]);
}
