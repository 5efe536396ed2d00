// cuBLAS and cuBLASLt status codes as kvtc Status values (host code of src/cuda only).
#pragma once

#include <cublas_v2.h>

#include <string>

#include "kvtc/status.hpp"

namespace kvtc::cuda {

inline Status cublas_status(cublasStatus_t s, const char* what) {
  if (s == CUBLAS_STATUS_SUCCESS) return Status::ok();
  return Status(StatusCode::kCuda, std::string(what) + ": cuBLAS status " + std::to_string(int(s)));
}

}  // namespace kvtc::cuda
