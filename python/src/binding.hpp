// What the binding's source files share: kvtc Status values on their way to Python exceptions (the
// translator in kvtc_module.cpp maps each code to the class kvtc/_errors.py defines).
#pragma once

#include <nanobind/nanobind.h>

#include <utility>

#include "kvtc/status.hpp"

namespace kvtc_py {

struct StatusError {
  kvtc::Status status;
};

inline void raise_if_error(const kvtc::Status& s) {
  if (!s.is_ok()) throw StatusError{s};
}
template <typename T>
T take(kvtc::Result<T>&& r) {
  if (!r.is_ok()) throw StatusError{r.status()};
  return std::move(r).value();
}

// kvtc._kvtc.Store: the block store (store_module.cpp).
void bind_store(nanobind::module_& m);
// kvtc._kvtc._CudaRestorer, when built with the CUDA backend (cuda_module.cpp).
void bind_cuda(nanobind::module_& m);

}  // namespace kvtc_py
