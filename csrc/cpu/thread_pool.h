// A pool of persistent worker threads. parallel_for splits [0, n) into chunks that the
// calling thread and the workers claim dynamically, and returns when every chunk is done.
// The caller never waits for a worker that claimed nothing: on a busy machine a sleeping
// worker costs nothing (it wakes to an exhausted job), so oversubscription degrades
// gracefully towards single-threaded speed instead of stalling.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace nemocpu {

class ThreadPool {
 public:
  using RangeFn = std::function<void(int64_t begin, int64_t end)>;

  explicit ThreadPool(int n_threads);  // n_threads includes the caller; <= 0 -> hardware threads
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int n_threads() const { return (int)workers_.size() + 1; }
  // grain: the smallest chunk worth handing to a thread. An exception thrown by fn (in any
  // thread) is rethrown here once every chunk has finished.
  void parallel_for(int64_t n, const RangeFn& fn, int64_t grain = 1);

  static int hardware_threads();

 private:
  struct Job {
    const RangeFn* fn = nullptr;  // dereferenced only by whoever claims a chunk
    int64_t n = 0, chunk = 1;
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex error_mu;
    std::exception_ptr error;       // first exception thrown by any chunk, rethrown to the caller
  };

  void worker_loop();
  void run_chunks(Job& job);

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable wake_, finished_;
  std::atomic<uint64_t> generation_{0};
  bool stop_ = false;
  std::shared_ptr<Job> job_;  // the current job (guarded by mu_)
};

}  // namespace nemocpu
