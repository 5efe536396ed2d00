// Small helpers shared by the CUDA backend's host code: CUDA errors as kvtc Status values, and an
// owning device buffer. Only src/cuda includes CUDA headers.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "kvtc/status.hpp"

namespace kvtc::cuda {

inline Status cuda_status(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return Status::ok();
  return Status(StatusCode::kCuda, std::string(what) + ": " + cudaGetErrorString(e));
}

#define KVTC_CUDA_RETURN(expr)                                              \
  do {                                                                      \
    cudaError_t kvtc_cuda_err_ = (expr);                                    \
    if (kvtc_cuda_err_ != cudaSuccess) return ::kvtc::cuda::cuda_status(kvtc_cuda_err_, #expr); \
  } while (0)

// An owning device allocation (cudaMalloc / cudaFree). Grows only; contents are not kept on growth.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer() { release(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  Status reserve(size_t bytes) {
    if (bytes <= bytes_) return Status::ok();
    release();
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, bytes == 0 ? 1 : bytes);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      return Status(StatusCode::kOutOfMemory, "cudaMalloc of " + std::to_string(bytes) + " bytes: " + cudaGetErrorString(e));
    }
    ptr_ = p;
    bytes_ = bytes;
    return Status::ok();
  }
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }
  void* get() const { return ptr_; }
  size_t size_bytes() const { return bytes_; }
  void release() {
    if (ptr_) cudaFree(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Whether a CUDA device is usable here; `why` says why not.
bool device_available(std::string* why);

}  // namespace kvtc::cuda
