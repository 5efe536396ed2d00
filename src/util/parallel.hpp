// parallel_for: run fn(i) for i in [0, n) on up to n_threads threads (0: all cores), items handed out
// dynamically. Returns the first non-OK status (remaining items are skipped once one fails).
#pragma once

#include <cstdint>
#include <functional>

#include "kvtc/status.hpp"

namespace kvtc {

int resolve_threads(int n_threads);  // 0 -> hardware concurrency (at least 1)
Status parallel_for(int64_t n, int n_threads, const std::function<Status(int64_t i)>& fn);

}  // namespace kvtc
