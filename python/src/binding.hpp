// What the binding's source files share: kvtc Status values on their way to Python exceptions (the
// translator in kvtc_module.cpp maps each code to the class kvtc/_errors.py defines).
#pragma once

#include <nanobind/nanobind.h>

#include <map>
#include <string>
#include <utility>

#include "kvtc/cache.hpp"
#include "kvtc/kvtc.hpp"
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

// The metadata a cache file written by kvtc carries for a cache of this shape (KVCache::sync_metadata):
// what a container keeps when the caller gives none, on the host and the GPU path alike.
inline std::map<std::string, std::string> cache_file_metadata(const kvtc::ModelShape& shape, kvtc::DType dtype,
                                                              int64_t n_tokens, int64_t position_offset,
                                                              const std::string& model_name) {
  kvtc::KVCache meta;
  meta.shape = shape;
  meta.dtype = dtype;
  meta.n_tokens = n_tokens;
  meta.position_offset = position_offset;
  meta.model_name = model_name;
  meta.sync_metadata();
  return std::move(meta.metadata);
}

// The encode options every Python compress sets from its arguments, on the host and the GPU path alike
// (each adds its own: threads, codec, token classes on the host).
inline kvtc::EncodeOptions encode_options(double ratio, int exact_head_tokens, int exact_tail_tokens,
                                          int deflate_level, bool measure_error) {
  kvtc::EncodeOptions o;
  o.target_ratio = ratio;
  o.exact_head_tokens = exact_head_tokens;
  o.exact_tail_tokens = exact_tail_tokens;
  o.deflate_level = deflate_level;
  o.measure_error = measure_error;
  return o;
}

// kvtc._kvtc.Store: the block store (store_module.cpp).
void bind_store(nanobind::module_& m);
// kvtc._kvtc._CudaRestorer, when built with the CUDA backend (cuda_module.cpp).
void bind_cuda(nanobind::module_& m);

}  // namespace kvtc_py
