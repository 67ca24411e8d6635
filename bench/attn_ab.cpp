// A/B timing of the attention block of one decoded token (see bench/attn_ab.sh): the old
// kernel (one query head per call, one task per head, as Engine::attention ran it) and the new
// one (one kv head x all its query heads per call, keys split as Engine::attention splits them
// for T = 1, then attention_merge), both linked into one binary and run alternately so a shared,
// noisy machine slows both alike. Nemotron 3 Nano's attention: 32 query heads, 2 kv heads,
// head_dim 128, f16 cache. A 256 MB buffer is read between runs so the cache comes from DRAM,
// as in a real decode step (the weights stream through the caches between attention layers).
//   attn_ab N_KEYS THREADS [REPS]    -> best and median ms per call of each side (ONLY=new|old: one)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "cpu/thread_pool.h"
#include "nemocpu/kernels.h"

namespace nemocpu {
struct OldAttnArgs {  // the old kernels.h AttnArgs
  const float* q;
  const void* k; const void* v;
  int kv_type;
  int64_t ld, n_keys, hd;
  float scale;
  float* scores;
  float* out;
};
namespace oldv {
void attention(const OldAttnArgs&);
}
namespace newv {
void attention(const AttnArgs&);
void to_f16(const float*, int64_t, uint16_t*);
void attention_merge(const float*, const float*, const float*, int64_t, int64_t, int64_t, int64_t, float*, int64_t);
}  // namespace newv
}  // namespace nemocpu
using namespace nemocpu;

int main(int argc, char** argv) {
  if (argc < 3) return fprintf(stderr, "usage: %s N_KEYS THREADS [REPS]\n", argv[0]), 2;
  const int64_t n = atoll(argv[1]), nq = 32, nkv = 2, hd = 128, rep = nq / nkv, kvw = nkv * hd;
  const int threads = atoi(argv[2]), reps = argc > 3 ? atoi(argv[3]) : 20;
  ThreadPool pool(threads);
  std::mt19937 g(1);
  std::normal_distribution<float> nd;
  std::vector<uint16_t> k(n * kvw), v(n * kvw);
  std::vector<float> tmp(kvw);
  for (int64_t j = 0; j < n; ++j) {
    for (auto& x : tmp) x = nd(g);
    newv::to_f16(tmp.data(), kvw, k.data() + j * kvw);
    for (auto& x : tmp) x = nd(g);
    newv::to_f16(tmp.data(), kvw, v.data() + j * kvw);
  }
  std::vector<float> q(nq * hd), o_old(nq * hd), o_new(nq * hd);
  for (auto& x : q) x = nd(g);
  const float scale = 1.0f / std::sqrt((float)hd);

  auto run_old = [&] {
    pool.parallel_for(nq, [&](int64_t i0, int64_t i1) {
      std::vector<float> scores(n);
      for (int64_t j = i0; j < i1; ++j) {
        OldAttnArgs a;
        a.q = q.data() + j * hd;
        a.k = k.data() + j / rep * hd; a.v = v.data() + j / rep * hd;
        a.kv_type = GGML_F16; a.ld = kvw; a.n_keys = n; a.hd = hd; a.scale = scale;
        a.scores = scores.data(); a.out = o_old.data() + j * hd;
        oldv::attention(a);
      }
    }, 1);
  };
  // Engine::attention's plan for T = 1 (kTasks 64, kMinSplitKeys 256)
  const int64_t n_split = std::max<int64_t>(1, std::min<int64_t>(64 / nkv, n / 256));
  const int64_t chunk = ((n + n_split - 1) / n_split + kAttnKeyBlock - 1) / kAttnKeyBlock * kAttnKeyBlock;
  std::vector<float> part(nkv * n_split * rep * hd), ml(2 * nkv * n_split * rep);
  auto run_new = [&] {
    pool.parallel_for(nkv * n_split, [&](int64_t i0, int64_t i1) {
      std::vector<float> scratch((rep + hd) * kAttnKeyBlock);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t s = i % n_split, gi = i / n_split;
        AttnArgs a;
        a.q = q.data() + gi * rep * hd; a.ldq = nq * hd;
        a.k = k.data() + gi * hd; a.v = v.data() + gi * hd;
        a.kv_type = GGML_F16; a.ld = kvw; a.hd = hd; a.rep = rep; a.n_tok = 1; a.n_keys = n;
        a.k0 = std::min(s * chunk, n); a.k1 = std::min((s + 1) * chunk, n);
        a.scale = scale;
        if (n_split == 1) { a.out = o_new.data() + gi * rep * hd; a.ldo = nq * hd; }
        else { a.out = part.data() + (gi * n_split + s) * rep * hd; a.ldo = rep * hd; }
        a.m = ml.data() + (gi * n_split + s) * rep;
        a.l = ml.data() + nkv * n_split * rep + (gi * n_split + s) * rep;
        a.scratch = scratch.data();
        newv::attention(a);
      }
    }, 1);
    if (n_split > 1)
      pool.parallel_for(nkv, [&](int64_t g0, int64_t g1) {
        for (int64_t gi = g0; gi < g1; ++gi)
          newv::attention_merge(part.data() + gi * n_split * rep * hd, ml.data() + gi * n_split * rep,
                                ml.data() + nkv * n_split * rep + gi * n_split * rep, n_split, 1, rep, hd,
                                o_new.data() + gi * rep * hd, nq * hd);
      }, 1);
  };

  std::vector<float> flush(64 << 20, 1.0f);
  volatile float sink = 0;
  std::vector<double> t[2];
  const char* only = getenv("ONLY");  // "old" | "new": one side (for a profiler)
  for (int r = 0; r < reps; ++r)
    for (int side = 0; side < 2; ++side) {
      if (only && (side ? 'n' : 'o') != only[0]) {
        t[side].push_back(0);
        continue;
      }
      float acc = 0;
      for (size_t i = 0; i < flush.size(); i += 16) acc += flush[i];
      sink = sink + acc;
      const auto t0 = std::chrono::steady_clock::now();
      side ? run_new() : run_old();
      t[side].push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() * 1e3);
    }
  double err = 0;
  for (int64_t i = 0; i < nq * hd; ++i) err = std::max(err, (double)std::fabs(o_old[i] - o_new[i]));
  for (auto& x : t) std::sort(x.begin(), x.end());
  printf("keys %lld threads %d splits %lld: old best %.3f median %.3f ms | new best %.3f median %.3f ms | "
         "speedup (median) %.2fx | max |old-new| %.2g\n",
         (long long)n, threads, (long long)n_split, t[0][0], t[0][reps / 2], t[1][0], t[1][reps / 2],
         t[0][reps / 2] / t[1][reps / 2], err);
}
