// A pool of persistent worker threads. parallel_for splits [0, n) into chunks that the
// calling thread and the workers take dynamically; it returns when all chunks are done.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
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
  // grain: the smallest chunk worth handing to a thread.
  void parallel_for(int64_t n, const RangeFn& fn, int64_t grain = 1);

  static int hardware_threads();

 private:
  void worker_loop();
  void run_chunks();

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable wake_, done_;
  uint64_t generation_ = 0;
  bool stop_ = false;
  int busy_ = 0;  // workers still inside the current job

  const RangeFn* fn_ = nullptr;
  int64_t n_ = 0, chunk_ = 1;
  std::atomic<int64_t> next_{0};
};

}  // namespace nemocpu
