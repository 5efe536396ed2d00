// Small helpers shared by the CUDA backend's host code: CUDA errors as kvtc Status values, and an
// owning device buffer. Only src/cuda includes CUDA headers.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

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

// A caller-provided device region handed out front to back, 256-byte aligned (a bump allocator reset
// by its owner). With base == nullptr it only counts: the bytes a sequence of carves would need.
struct Arena {
  uint8_t* base = nullptr;
  size_t bytes = 0;
  size_t used = 0;
  bool counting() const { return base == nullptr; }
};

// A device allocation: owned (cudaMalloc / cudaFree; grows only, contents not kept on growth) or a
// slice of an Arena (never freed here).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer() { release(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)), external_(std::exchange(o.external_, false)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
      external_ = std::exchange(o.external_, false);
    }
    return *this;
  }
  Status reserve(size_t bytes) {
    if (bytes <= bytes_ && !external_) return Status::ok();
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
  // Takes the next `bytes` of the arena (a counting arena hands out placeholder addresses).
  Status carve(Arena& arena, size_t bytes) {
    release();
    const size_t size = (std::max<size_t>(bytes, 1) + 255) & ~size_t(255);
    if (!arena.counting() && arena.used + size > arena.bytes)
      return Status(StatusCode::kOutOfMemory, "workspace of " + std::to_string(arena.bytes) +
                                                  " bytes is too small (BatchDecoder::workspace_bytes gives what a batch needs)");
    ptr_ = arena.counting() ? reinterpret_cast<void*>(uintptr_t(256) + arena.used) : arena.base + arena.used;
    arena.used += size;
    bytes_ = bytes;
    external_ = true;
    return Status::ok();
  }
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }
  void* get() const { return ptr_; }
  size_t size_bytes() const { return bytes_; }
  void release() {
    if (ptr_ && !external_) cudaFree(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
    external_ = false;
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  bool external_ = false;
};

// Sizes `buf` for v (growing it) and copies v into it, asynchronously on `stream`.
template <typename T>
Status upload_vector(DeviceBuffer& buf, const std::vector<T>& v, cudaStream_t stream) {
  Status st = buf.reserve(v.size() * sizeof(T));
  if (!st.is_ok()) return st;
  if (!v.empty()) KVTC_CUDA_RETURN(cudaMemcpyAsync(buf.get(), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice, stream));
  return Status::ok();
}

// Whether a CUDA device is usable here; `why` says why not.
bool device_available(std::string* why);

}  // namespace kvtc::cuda
