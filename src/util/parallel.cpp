#include "util/parallel.hpp"

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace kvtc {

int resolve_threads(int n_threads) {
  if (n_threads > 0) return n_threads;
  return std::max(1u, std::thread::hardware_concurrency());
}

Status parallel_for(int64_t n, int n_threads, const std::function<Status(int64_t i)>& fn) {
  if (n <= 0) return Status::ok();
  const int workers = int(std::min<int64_t>(resolve_threads(n_threads), n));
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex mu;
  Status first_error;
  auto work = [&] {
    for (;;) {
      if (failed.load(std::memory_order_relaxed)) return;
      const int64_t i = next.fetch_add(1);
      if (i >= n) return;
      Status s;
      try {
        s = fn(i);
      } catch (const std::bad_alloc&) {
        s = Status(StatusCode::kOutOfMemory, "out of memory");
      } catch (const std::exception& e) {
        s = internal_error(e.what());
      }
      if (!s.is_ok()) {
        std::lock_guard<std::mutex> lock(mu);
        if (!failed.exchange(true)) first_error = s;
        return;
      }
    }
  };
  if (workers == 1) {
    work();
  } else {
    std::vector<std::thread> threads;
    threads.reserve(workers - 1);
    for (int t = 0; t + 1 < workers; ++t) threads.emplace_back(work);
    work();
    for (auto& th : threads) th.join();
  }
  return first_error;
}

}  // namespace kvtc
