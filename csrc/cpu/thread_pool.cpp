#include "cpu/thread_pool.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define NEMOCPU_PAUSE() _mm_pause()
#else
#define NEMOCPU_PAUSE() std::this_thread::yield()
#endif

namespace nemocpu {

namespace {
// Busy-wait this many polls before sleeping: decode runs dozens of short parallel regions
// per token, and a condition-variable wake-up costs tens of microseconds.
constexpr int kSpinPolls = 20000;
}  // namespace

int ThreadPool::hardware_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n ? (int)n : 1;
}

ThreadPool::ThreadPool(int n_threads) {
  if (n_threads <= 0) n_threads = hardware_threads();
  for (int i = 1; i < n_threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
    generation_.fetch_add(1);
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::run_chunks(Job& job) {
  for (;;) {
    const int64_t b = job.next.fetch_add(job.chunk);
    if (b >= job.n) return;
    const int64_t e = b + job.chunk < job.n ? b + job.chunk : job.n;
    try {
      (*job.fn)(b, e);
    } catch (...) {  // never let it escape a worker thread (std::terminate)
      std::lock_guard<std::mutex> lk(job.error_mu);
      if (!job.error) job.error = std::current_exception();
    }
    if (job.done.fetch_add(e - b) + (e - b) == job.n) {
      std::lock_guard<std::mutex> lk(mu_);  // pairs with the caller's wait
      finished_.notify_all();
    }
  }
}

void ThreadPool::worker_loop() {
  uint64_t seen = 0;
  for (;;) {
    for (int i = 0; i < kSpinPolls && generation_.load(std::memory_order_acquire) == seen; ++i) NEMOCPU_PAUSE();
    std::shared_ptr<Job> job;
    {
      std::unique_lock<std::mutex> lk(mu_);
      wake_.wait(lk, [&] { return generation_.load() != seen; });
      if (stop_) return;
      seen = generation_.load();
      job = job_;
    }
    if (job) run_chunks(*job);
  }
}

void ThreadPool::parallel_for(int64_t n, const RangeFn& fn, int64_t grain) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  const int nt = n_threads();
  if (nt == 1 || n <= grain) {
    fn(0, n);
    return;
  }
  // ~4 chunks per thread balances uneven chunks without much scheduling overhead.
  int64_t chunk = (n + 4 * nt - 1) / (4 * nt);
  if (chunk < grain) chunk = grain;
  auto job = std::make_shared<Job>();
  job->fn = &fn;
  job->n = n;
  job->chunk = chunk;
  {
    std::lock_guard<std::mutex> lk(mu_);
    job_ = job;
    generation_.fetch_add(1, std::memory_order_release);
  }
  wake_.notify_all();
  run_chunks(*job);
  for (int i = 0; i < kSpinPolls && job->done.load(std::memory_order_acquire) != n; ++i) NEMOCPU_PAUSE();
  if (job->done.load() != n) {
    std::unique_lock<std::mutex> lk(mu_);
    finished_.wait(lk, [&] { return job->done.load() == n; });
  }
  if (job->error) std::rethrow_exception(job->error);
}

}  // namespace nemocpu
