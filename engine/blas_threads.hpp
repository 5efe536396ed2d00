// OpenBLAS's thread count for a scope: set on entry, restored on exit. For code that runs its own
// threads, each calling sgemm, so that OpenBLAS does not start threads of its own under every call.
#pragma once

#include <cblas.h>

namespace kvtc::engine {

class BlasThreads {
 public:
  // n > 0: OpenBLAS uses n threads until the scope ends; n == 0: leaves it alone.
  explicit BlasThreads(int n) : saved_(n > 0 ? openblas_get_num_threads() : 0) {
    if (n > 0) openblas_set_num_threads(n);
  }
  ~BlasThreads() {
    if (saved_ > 0) openblas_set_num_threads(saved_);
  }
  BlasThreads(const BlasThreads&) = delete;
  BlasThreads& operator=(const BlasThreads&) = delete;

 private:
  int saved_;
};

}  // namespace kvtc::engine
