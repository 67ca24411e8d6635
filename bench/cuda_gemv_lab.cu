// Decode matrix-vector lab: times nemocpu's two FP8 matrix-vector kernels (csrc/cuda/matmul.cu,
// included as is: gemv_kernel and tc::fp8_gemv_kernel with one and two blocks per
// multiprocessor) and the bulk-copy ceiling on the FP8 shapes of one Nemotron 3 Nano decode
// step, cold L2 (every launch reads weights no earlier launch touched), PDL launches replayed
// from a CUDA graph as in the engine. Each kernel is checked against a float64 host product
// first (err: max |y - ref| / max |ref|). Figures: bench/RESULTS.md "CUDA".
//   nvcc -std=c++17 -O3 -arch=sm_90 --expt-relaxed-constexpr -Icsrc -Icsrc/include \
//        bench/cuda_gemv_lab.cu csrc/cuda/mixers.cu -o /tmp/gemv_lab && /tmp/gemv_lab
// (mixers.cu: linear() may call mamba_conv)
#include "cuda/matmul.cu"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>

namespace nemocpu {
namespace cuda {
namespace lab {

// ---- ceiling: the bulk-copy pipeline of tc::fp8_gemv_kernel with nothing computed ---------
// One producer lane streams runs of whole rows (32 KB stages, 6 in flight) into shared memory;
// 8 warps only wait for each stage and release it. What no product kernel can beat.
constexpr int kStage = 32768, kRing = 6, kWaiters = 8;
struct CopyParams {
  const uint8_t* src[kMaxVecJobs];
  int64_t bytes[kMaxVecJobs];
  const int32_t* mat_idx[kMaxVecJobs];
  int mat[kMaxVecJobs];
  int64_t mat_bytes[kMaxVecJobs];
  int first[kMaxVecJobs + 1];  // first stage of each job
  int n_jobs;
};

__global__ void __launch_bounds__((kWaiters + 1) * 32, 1) copy_ceiling_kernel(const __grid_constant__ CopyParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900  // as tc::fp8_gemv_kernel
  pdl_trigger();
  extern __shared__ __align__(128) uint8_t sm[];
  uint64_t* full = reinterpret_cast<uint64_t*>(sm + kRing * kStage);
  uint64_t* empty = full + kRing;
  const int total = p.first[p.n_jobs];
  const int g0 = (int)((int64_t)total * blockIdx.x / gridDim.x), g1 = (int)((int64_t)total * (blockIdx.x + 1) / gridDim.x);
  if (threadIdx.x == 0) {
    for (int s = 0; s < kRing; ++s) {
      tc::mbar_init(full + s, 1);
      tc::mbar_init(empty + s, kWaiters);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (warp == kWaiters) {
    if (lane == 0) {
      for (int g = g0; g < g1; ++g) {
        const int i = g - g0, s = i % kRing;
        if (i >= kRing) tc::mbar_wait(empty + s, ((i / kRing) & 1) ^ 1);
        int j = 0;
        while (j + 1 < p.n_jobs && g >= p.first[j + 1]) ++j;
        if (p.mat_idx[j]) pdl_wait();
        const int64_t m = p.mat_idx[j] ? p.mat_idx[j][p.mat[j]] : p.mat[j];
        const int64_t off = (int64_t)(g - p.first[j]) * kStage;
        const uint32_t n = (uint32_t)min((int64_t)kStage, p.bytes[j] - off);
        tc::mbar_expect_tx(full + s, n);
        tc::bulk_copy(sm + s * kStage, p.src[j] + m * p.mat_bytes[j] + off, n, full + s);
      }
    }
    return;
  }
  for (int g = g0; g < g1; ++g) {
    const int i = g - g0, s = i % kRing;
    tc::mbar_wait(full + s, (i / kRing) & 1);
    __syncwarp();
    if (lane == 0) tc::mbar_arrive(empty + s);
  }
#endif
}

void launch_copy_ceiling(const VecJob* jobs, int n, cudaStream_t s) {
  CopyParams p{};
  p.n_jobs = n;
  int total = 0;
  for (int j = 0; j < n; ++j) {
    const GpuWeight& w = *jobs[j].w;
    p.src[j] = w.q;
    p.bytes[j] = w.rows * w.row_bytes;
    p.mat_bytes[j] = w.rows * w.row_bytes;
    p.mat_idx[j] = jobs[j].mat_idx;
    p.mat[j] = jobs[j].mat;
    p.first[j] = total;
    total += (int)((p.bytes[j] + kStage - 1) / kStage);
  }
  p.first[n] = total;
  const size_t smem = (size_t)kRing * kStage + 2 * kRing * sizeof(uint64_t);
  static bool raised = false;
  if (!raised) {
    NEMOCPU_CUDA_CHECK(cudaFuncSetAttribute(copy_ceiling_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    raised = true;
  }
  launch_pdl_smem(copy_ceiling_kernel, dim3((unsigned)std::min(total, sm_count())), dim3((kWaiters + 1) * 32), smem, s, p);
}

// ---- shapes and harness ---------------------------------------------------------------------
__global__ void fill_fp8(uint8_t* q, int64_t n, uint32_t seed) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    uint32_t h = (uint32_t)i * 2654435761u ^ seed;
    h ^= h >> 15; h *= 2246822519u; h ^= h >> 13; h *= 3266489917u; h ^= h >> 16;
    uint8_t b = (uint8_t)h;
    if ((b & 0x7f) == 0x7f) b ^= 1;      // no NaN codes
    if ((b & 0x78) > 0x58) b &= 0xDF;    // keep magnitudes moderate
    q[i] = b;
  }
}

GpuWeight make_fp8(int64_t rows, int64_t K, int64_t n_mat, uint32_t seed) {
  GpuWeight w;
  w.type = GGML_I8;
  w.K = K;
  w.Kp = (K + kPadK - 1) / kPadK * kPadK;
  w.rows = rows;
  w.n_mat = n_mat;
  w.row_bytes = w.Kp;
  NEMOCPU_CUDA_CHECK(cudaMalloc(&w.q, n_mat * rows * w.row_bytes));
  fill_fp8<<<1024, 256>>>(w.q, n_mat * rows * w.row_bytes, seed);
  std::vector<float> s(n_mat * rows);
  for (size_t i = 0; i < s.size(); ++i) s[i] = 1.0f / 64 * (1.0f + (float)(i % 7) / 7);
  NEMOCPU_CUDA_CHECK(cudaMalloc(&w.s, s.size() * sizeof(float)));
  NEMOCPU_CUDA_CHECK(cudaMemcpy(w.s, s.data(), s.size() * sizeof(float), cudaMemcpyHostToDevice));
  return w;
}

float* dev_floats(int64_t n, uint32_t seed) {
  std::vector<float> h(n);
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (auto& v : h) v = u(g);
  float* d;
  NEMOCPU_CUDA_CHECK(cudaMalloc(&d, n * sizeof(float)));
  NEMOCPU_CUDA_CHECK(cudaMemcpy(d, h.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  return d;
}

// One launch's products (a VecBatch) and the bytes it reads.
struct Launch { std::vector<VecJob> jobs; bool relu2; double bytes; };

// max |y - ref| / max |ref| over all rows of every job of the launch
double check(const Launch& L) {
  NEMOCPU_CUDA_CHECK(cudaDeviceSynchronize());
  double err = 0, mag = 0;
  for (const VecJob& j : L.jobs) {
    const GpuWeight& w = *j.w;
    int m = j.mat;
    if (j.mat_idx) NEMOCPU_CUDA_CHECK(cudaMemcpy(&m, j.mat_idx + j.mat, sizeof(int), cudaMemcpyDeviceToHost));
    std::vector<uint8_t> q(w.rows * w.row_bytes);
    std::vector<float> s(w.rows), x(w.K), y(w.rows);
    NEMOCPU_CUDA_CHECK(cudaMemcpy(q.data(), w.q + m * w.rows * w.row_bytes, q.size(), cudaMemcpyDeviceToHost));
    NEMOCPU_CUDA_CHECK(cudaMemcpy(s.data(), w.s + m * w.rows, s.size() * 4, cudaMemcpyDeviceToHost));
    NEMOCPU_CUDA_CHECK(cudaMemcpy(x.data(), j.x, x.size() * 4, cudaMemcpyDeviceToHost));
    NEMOCPU_CUDA_CHECK(cudaMemcpy(y.data(), j.y, y.size() * 4, cudaMemcpyDeviceToHost));
    for (int64_t r = 0; r < w.rows; ++r) {
      double acc = 0;
      for (int64_t k = 0; k < w.K; k += 4) {
        uint32_t wd;
        std::memcpy(&wd, &q[r * w.row_bytes + k], 4);
        float v[4];
        decode_word<GGML_I8>(wd, v);
        for (int i = 0; i < 4 && k + i < w.K; ++i) acc += (double)v[i] * x[k + i];
      }
      acc *= s[r];
      if (L.relu2) acc = acc > 0 ? acc * acc : 0;
      err = std::max(err, std::fabs(y[r] - acc));
      mag = std::max(mag, std::fabs(acc));
    }
  }
  return err / mag;
}

using Runner = std::function<void(const Launch&, cudaStream_t)>;

// us per launch: a graph of all launches (each on fresh weights), replayed; median of 7
double time_launches(const std::vector<Launch>& ls, const Runner& run, cudaStream_t s) {
  cudaGraph_t g;
  cudaGraphExec_t ge;
  NEMOCPU_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  for (const Launch& l : ls) run(l, s);
  NEMOCPU_CUDA_CHECK(cudaStreamEndCapture(s, &g));
  NEMOCPU_CUDA_CHECK(cudaGraphInstantiate(&ge, g, 0));
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  std::vector<float> t;
  for (int rep = 0; rep < 8; ++rep) {
    cudaEventRecord(a, s);
    NEMOCPU_CUDA_CHECK(cudaGraphLaunch(ge, s));
    cudaEventRecord(b, s);
    NEMOCPU_CUDA_CHECK(cudaEventSynchronize(b));
    float ms;
    cudaEventElapsedTime(&ms, a, b);
    if (rep) t.push_back(ms);
  }
  std::sort(t.begin(), t.end());
  cudaGraphExecDestroy(ge);
  cudaGraphDestroy(g);
  return t[t.size() / 2] * 1000.0 / ls.size();
}

}  // namespace lab
}  // namespace cuda
}  // namespace nemocpu

int main(int argc, char** argv) {
  const int only = argc > 1 ? std::atoi(argv[1]) : -1;  // one shape (for ncu)
  using namespace nemocpu::cuda;
  using namespace nemocpu::cuda::lab;
  setvbuf(stdout, nullptr, _IONBF, 0);
  cudaStream_t s;
  NEMOCPU_CUDA_CHECK(cudaStreamCreate(&s));
  const int64_t E = 2688, F = 1856, Fsh = 3712, NIN = 10304, DI = 4096;
  const int n_launch = 40;
  // weights: all 128 experts (as the model), 8 copies of each dense matrix
  GpuWeight up = make_fp8(F, E, 128, 1), down = make_fp8(E, F, 128, 2);
  std::vector<GpuWeight> up_sh, down_sh, in_proj, out_proj;
  for (int c = 0; c < 8; ++c) {
    up_sh.push_back(make_fp8(Fsh, E, 1, 10 + c));
    down_sh.push_back(make_fp8(E, Fsh, 1, 20 + c));
    in_proj.push_back(make_fp8(NIN, E, 1, 30 + c));
    out_proj.push_back(make_fp8(E, DI, 1, 40 + c));
  }
  float* x = dev_floats(E, 5);
  float* act = dev_floats(7 * Fsh, 6);  // MoE down inputs (one slice per job)
  float* xdi = dev_floats(DI, 7);
  float* y;
  NEMOCPU_CUDA_CHECK(cudaMalloc(&y, 16 * NIN * sizeof(float)));
  std::mt19937 rng(42);
  int32_t* idx;
  NEMOCPU_CUDA_CHECK(cudaMalloc(&idx, n_launch * 6 * sizeof(int32_t)));
  {
    std::vector<int32_t> h;
    for (int l = 0; l < n_launch; ++l) {
      std::vector<int32_t> e(128);
      for (int i = 0; i < 128; ++i) e[i] = i;
      std::shuffle(e.begin(), e.end(), rng);
      h.insert(h.end(), e.begin(), e.begin() + 6);
    }
    NEMOCPU_CUDA_CHECK(cudaMemcpy(idx, h.data(), h.size() * 4, cudaMemcpyHostToDevice));
  }
  struct Shape { const char* name; std::vector<Launch> ls; };
  std::vector<Shape> shapes(7);
  shapes[0].name = "moe_up   (shared 3712 + 6 x 1856 rows, K 2688)";
  shapes[1].name = "moe_down (shared 2688x3712 + 6 x 2688x1856)";
  shapes[2].name = "in_proj  (10304 x 2688)";
  shapes[3].name = "out_proj (2688 x 4096)";
  shapes[4].name = "lm_head  (131072 x 2688)";
  shapes[5].name = "moe_down, routed only (6 x 2688x1856)";
  shapes[6].name = "moe_down, shared only (2688x3712)";
  GpuWeight lm = make_fp8(131072, E, 1, 50);
  float* ylm;
  NEMOCPU_CUDA_CHECK(cudaMalloc(&ylm, 131072 * sizeof(float)));
  for (int l = 0; l < n_launch; ++l) {
    Launch u{{}, true, 0}, d{{}, false, 0}, ip{{}, false, 0}, op{{}, false, 0};
    u.jobs.push_back(VecJob{&up_sh[l % 8], nullptr, 0, x, E, y, Fsh});
    d.jobs.push_back(VecJob{&down_sh[l % 8], nullptr, 0, act, Fsh, y, E});
    for (int j = 0; j < 6; ++j) {
      u.jobs.push_back(VecJob{&up, idx + 6 * l, j, x, E, y + Fsh + j * F, F});
      d.jobs.push_back(VecJob{&down, idx + 6 * l, j, act + Fsh + j * F, F, y + (1 + j) * E, E});
    }
    u.bytes = d.bytes = (double)(Fsh + 6 * F) * E;
    ip.jobs.push_back(VecJob{&in_proj[l % 8], nullptr, 0, x, E, y, NIN});
    ip.bytes = (double)NIN * E;
    op.jobs.push_back(VecJob{&out_proj[l % 8], nullptr, 0, xdi, DI, y, E});
    op.bytes = (double)E * DI;
    shapes[0].ls.push_back(u);
    shapes[1].ls.push_back(d);
    shapes[2].ls.push_back(ip);
    shapes[3].ls.push_back(op);
    shapes[5].ls.push_back(Launch{std::vector<VecJob>(d.jobs.begin() + 1, d.jobs.end()), false, 6.0 * E * F});
    shapes[6].ls.push_back(Launch{std::vector<VecJob>(d.jobs.begin(), d.jobs.begin() + 1), false, (double)E * Fsh});
    if (l < 8) shapes[4].ls.push_back(Launch{{VecJob{&lm, nullptr, 0, x, E, ylm, 131072}}, false, 131072.0 * E});
  }
  struct Variant { const char* name; Runner run; bool checked; };
  auto fp32_gemv = [](const Launch& l, cudaStream_t st) { gemv_fp32(l.jobs.data(), (int)l.jobs.size(), l.relu2, 1, st); };
  std::vector<Variant> vs = {
      {"gemv_kernel (fp32 decode)", fp32_gemv, true},
      {"tc::fp8_gemv_kernel, 1 block/SM", [](const Launch& l, cudaStream_t st) { tc::launch(l.jobs.data(), (int)l.jobs.size(), l.relu2, st, 1, 1); }, true},
      {"tc::fp8_gemv_kernel, 1 block/SM, 2 teams", [](const Launch& l, cudaStream_t st) { tc::launch(l.jobs.data(), (int)l.jobs.size(), l.relu2, st, 1, 2); }, true},
      {"tc::fp8_gemv_kernel, 2 blocks/SM", [](const Launch& l, cudaStream_t st) { tc::launch(l.jobs.data(), (int)l.jobs.size(), l.relu2, st, 2, 1); }, true},
      {"bulk copy only (ceiling)", [](const Launch& l, cudaStream_t st) { launch_copy_ceiling(l.jobs.data(), (int)l.jobs.size(), st); }, false},
  };
  for (int si = 0; si < (int)shapes.size(); ++si) {
    Shape& sh = shapes[si];
    if (only >= 0 && si != only) continue;
    std::printf("%s\n", sh.name);
    for (Variant& v : vs) {
      double err = -1;
      if (v.checked) {
        NEMOCPU_CUDA_CHECK(cudaMemset(y, 0xff, 16 * NIN * sizeof(float)));
        v.run(sh.ls[3], s);
        err = check(sh.ls[3]);
      }
      const double us = time_launches(sh.ls, v.run, s);
      std::printf("  %-36s %7.2f us  %6.0f GB/s  err %.1e\n", v.name, us, sh.ls[0].bytes / us * 1e-3, err);
    }
  }
  return 0;
}
