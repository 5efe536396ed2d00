// Lock-free counters and latency histograms behind TierMetrics (internal to kvtc_store).
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>

#include "kvtc/store.hpp"

namespace kvtc::store::detail {

inline constexpr size_t kLatencyBuckets = 19;  // finite bounds; one more bucket for +Inf

class AtomicHistogram {
 public:
  void observe_us(double us);
  LatencyHistogram snapshot() const;

 private:
  std::array<std::atomic<uint64_t>, kLatencyBuckets + 1> buckets_{};
  std::atomic<uint64_t> count_{0};
  std::atomic<uint64_t> sum_ns_{0};
};

struct TierCounters {
  std::atomic<uint64_t> hits{0}, misses{0}, puts{0}, put_errors{0}, evictions{0}, corruptions{0};
  std::atomic<uint64_t> errors{0}, reconnects{0}, bytes_put{0}, bytes_raw_put{0};

  // A put that stored its entry: puts, bytes_put and bytes_raw_put.
  void stored(uint64_t value_bytes, uint64_t raw_bytes) {
    puts.fetch_add(1, std::memory_order_relaxed);
    bytes_put.fetch_add(value_bytes, std::memory_order_relaxed);
    bytes_raw_put.fetch_add(raw_bytes, std::memory_order_relaxed);
  }
  AtomicHistogram get_latency, put_latency;

  // Fills the running totals; the caller sets tier name and gauges.
  TierMetrics snapshot() const;
};

// Observes the microseconds from construction to destruction into a histogram.
class ScopedLatency {
 public:
  explicit ScopedLatency(AtomicHistogram& h) : h_(h), start_(std::chrono::steady_clock::now()) {}
  ~ScopedLatency() {
    h_.observe_us(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start_).count());
  }
  ScopedLatency(const ScopedLatency&) = delete;
  ScopedLatency& operator=(const ScopedLatency&) = delete;

 private:
  AtomicHistogram& h_;
  std::chrono::steady_clock::time_point start_;
};

inline void bump(std::atomic<uint64_t>& c, uint64_t n = 1) { c.fetch_add(n, std::memory_order_relaxed); }

}  // namespace kvtc::store::detail
