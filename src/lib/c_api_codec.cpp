// The C API over caller memory: compression params and reports, cache views, and the decoder handle.
#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "c_api_internal.hpp"
#include "kvtc/kvtc.h"
#include "util/status_macros.hpp"

namespace kvtc::capi {
namespace {

// Extensible structs: struct_size below this is refused, and so is anything implausibly large (a
// caller that forgot to set it would otherwise make us read far past its struct).
constexpr size_t kMaxStructSize = 4096;

size_t struct_size_of(const void* p) {
  size_t n;
  std::memcpy(&n, p, sizeof n);
  return n;
}

// Checks a caller struct's struct_size: at least min_size, at most kMaxStructSize, and any bytes past
// `ours` (fields of a newer header) zero.
Status check_struct_size(const void* p, size_t ours, size_t min_size, const char* name) {
  const size_t n = struct_size_of(p);
  if (n < min_size || n > kMaxStructSize)
    return invalid_argument(std::string(name) + ".struct_size=" + std::to_string(n) + " (expected " +
                            std::to_string(ours) + ", set it to sizeof(" + name + "))");
  const auto* bytes = static_cast<const unsigned char*>(p);
  for (size_t i = ours; i < n; ++i)
    if (bytes[i] != 0)
      return invalid_argument(std::string(name) + ".struct_size=" + std::to_string(n) +
                              ": fields unknown to this library (past byte " + std::to_string(ours) +
                              ") must be zero");
  return Status::ok();
}

// Copies one field from a caller struct when it lies wholly within the caller's size.
template <typename T>
void take_field(const void* src, size_t n, size_t offset, T* dst) {
  if (offset + sizeof(T) <= n) std::memcpy(dst, static_cast<const char*>(src) + offset, sizeof(T));
}
template <typename T>
void put_field(void* dst, size_t n, size_t offset, const T& value) {
  if (offset + sizeof(T) <= n) std::memcpy(static_cast<char*>(dst) + offset, &value, sizeof(T));
}

// n_tokens: the view's, for token_importance.
Status read_params(const kvtc_compress_params* p, int64_t n_tokens, EncodeOptions* o) {
  kvtc_compress_params c;
  kvtc_compress_params_init(&c);
  if (p != nullptr) {
    KVTC_RETURN_IF_ERROR(check_struct_size(p, sizeof c, sizeof(size_t), "kvtc_compress_params"));
    const size_t n = struct_size_of(p);
#define KVTC_TAKE(field) take_field(p, n, offsetof(kvtc_compress_params, field), &c.field)
    KVTC_TAKE(target_ratio);
    KVTC_TAKE(deflate_level);
    KVTC_TAKE(n_threads);
    KVTC_TAKE(exact_head_tokens);
    KVTC_TAKE(exact_tail_tokens);
    KVTC_TAKE(chunk_tokens);
    KVTC_TAKE(chunk_max_bytes);
    KVTC_TAKE(measure_error);
    // Not reserved0: it lies inside an older caller's struct_size as uninitialised tail padding.
    KVTC_TAKE(codec);
    KVTC_TAKE(rans_lanes);
    KVTC_TAKE(token_importance);
    KVTC_TAKE(high_rate_fraction);
    KVTC_TAKE(high_rate_levels);
#undef KVTC_TAKE
  }
  if (c.exact_head_tokens < -1 || c.exact_tail_tokens < -1)
    return invalid_argument("exact_head_tokens and exact_tail_tokens must be >= 0, or -1 for the calibration's");
  o->target_ratio = c.target_ratio;
  o->deflate_level = c.deflate_level;
  o->n_threads = c.n_threads;
  o->exact_head_tokens = c.exact_head_tokens;
  o->exact_tail_tokens = c.exact_tail_tokens;
  o->chunk_tokens = c.chunk_tokens;
  o->chunk_max_bytes = c.chunk_max_bytes;
  o->measure_error = c.measure_error != 0;
  o->codec = c.codec;            // both checked by the encoder
  o->rans_lanes = c.rans_lanes;
  if (c.token_importance != nullptr && n_tokens > 0) o->token_importance.assign(c.token_importance, c.token_importance + n_tokens);
  o->high_rate_fraction = c.high_rate_fraction;  // checked by the encoder when importance is given
  o->high_rate_levels = c.high_rate_levels;
  return Status::ok();
}

void write_report(const EncodeReport& r, kvtc_compress_report* out) {
  const size_t n = struct_size_of(out);
  if (n > sizeof(kvtc_compress_report))
    std::memset(reinterpret_cast<char*>(out) + sizeof(kvtc_compress_report), 0, n - sizeof(kvtc_compress_report));
#define KVTC_PUT(field, value) put_field(out, n, offsetof(kvtc_compress_report, field), value)
  KVTC_PUT(n_tokens, int64_t(r.n_tokens));
  KVTC_PUT(n_compressed_tokens, int64_t(r.n_compressed_tokens));
  KVTC_PUT(raw_bytes, int64_t(r.raw_bytes));
  KVTC_PUT(file_bytes, int64_t(r.file_bytes));
  KVTC_PUT(ratio_compressed_tokens, double(r.ratio_compressed_tokens));
  KVTC_PUT(ratio_file, double(r.ratio_file));
  KVTC_PUT(k_relative_mse, double(r.k_relative_mse));
  KVTC_PUT(v_relative_mse, double(r.v_relative_mse));
#undef KVTC_PUT
}

// A caller's kvtc_dtype as the integer it holds: C callers may pass any int, and loading an enum
// object whose value is outside the enumerators is undefined in C++, so it is read as bytes.
int32_t raw_dtype(const kvtc_dtype& d) {
  static_assert(sizeof(kvtc_dtype) == sizeof(int32_t));
  int32_t v;
  std::memcpy(&v, &d, sizeof v);
  return v;
}

bool valid_dtype(int32_t v) { return v == KVTC_BF16 || v == KVTC_F16 || v == KVTC_F32; }

std::string dtype_arg_name(int32_t v) { return valid_dtype(v) ? dtype_name(DType(v)) : std::to_string(v); }

// A kvtc::CacheView over the caller's view, with the calibration's shape (RoPE included).
Status build_view(const Calibration& cal, const kvtc_cache_view* cv, CacheView* out) {
  KVTC_RETURN_IF_ERROR(check_struct_size(cv, sizeof(kvtc_cache_view), sizeof(kvtc_cache_view), "kvtc_cache_view"));
  kvtc_cache_view v;
  std::memcpy(&v, cv, sizeof v);
  const ModelShape& s = cal.shape();
  if (v.n_layers != s.n_layers || v.n_kv_heads != s.n_kv_heads || v.head_dim != s.head_dim)
    return mismatch("view is " + std::to_string(v.n_layers) + " layers x " + std::to_string(v.n_kv_heads) +
                    " kv heads x " + std::to_string(v.head_dim) + " but the calibration is for " + s.to_string());
  const int32_t element_dtype = raw_dtype(v.element_dtype), dtype = raw_dtype(v.dtype);
  if (!valid_dtype(element_dtype) || !valid_dtype(dtype))
    return invalid_argument("view dtypes must be KVTC_BF16, KVTC_F16 or KVTC_F32 (element_dtype " +
                            dtype_arg_name(element_dtype) + ", dtype " + dtype_arg_name(dtype) + ")");
  if (v.keys == nullptr || v.values == nullptr) return invalid_argument("view keys or values is NULL");
  out->shape = s;
  out->element_dtype = DType(element_dtype);
  out->dtype = DType(dtype);
  out->n_tokens = v.n_tokens;
  out->position_offset = v.position_offset;
  // The metadata a cache file of this shape has, so that a restored cache saves as a loadable file.
  KVCache meta;
  meta.shape = s;
  meta.n_tokens = v.n_tokens;
  meta.position_offset = v.position_offset;
  meta.sync_metadata();
  out->metadata = std::move(meta.metadata);
  out->k.resize(size_t(s.n_layers));
  out->v.resize(size_t(s.n_layers));
  for (int l = 0; l < s.n_layers; ++l) {
    out->k[size_t(l)] = {v.keys[l], v.head_stride, v.token_stride};
    out->v[size_t(l)] = {v.values[l], v.head_stride, v.token_stride};
  }
  return Status::ok();
}

// Everything kvtc_compress_view and kvtc_compress_view_into share; arguments already checked for NULL.
Result<std::vector<uint8_t>> compress(const kvtc_calibration* cal, const kvtc_cache_view* view,
                                      const kvtc_compress_params* params, kvtc_compress_report* report_out) {
  EncodeOptions o;
  if (view->n_tokens < 0) return invalid_argument("kvtc_cache_view.n_tokens must be >= 0");
  KVTC_RETURN_IF_ERROR(read_params(params, view->n_tokens, &o));
  if (report_out != nullptr)
    KVTC_RETURN_IF_ERROR(
        check_struct_size(report_out, sizeof(kvtc_compress_report), sizeof(size_t), "kvtc_compress_report"));
  CacheView v;
  KVTC_RETURN_IF_ERROR(build_view(cal->cal, view, &v));
  KVTC_ASSIGN_OR_RETURN(EncodedCache enc, encode(cal->cal, v, o));
  if (report_out != nullptr) write_report(enc.report, report_out);
  return std::move(enc.bytes);
}

}  // namespace
}  // namespace kvtc::capi

using kvtc::capi::guarded;
using kvtc::capi::null_argument;
using kvtc::capi::report;

extern "C" {

void kvtc_compress_params_init(kvtc_compress_params* params) {
  if (!params) return;
  const kvtc::EncodeOptions d;
  std::memset(params, 0, sizeof *params);
  params->struct_size = sizeof *params;
  params->target_ratio = d.target_ratio;
  params->deflate_level = d.deflate_level;
  params->n_threads = d.n_threads;
  params->exact_head_tokens = d.exact_head_tokens;
  params->exact_tail_tokens = d.exact_tail_tokens;
  params->chunk_tokens = d.chunk_tokens;
  params->chunk_max_bytes = d.chunk_max_bytes;
  params->measure_error = 0;
  params->codec = d.codec;
  params->rans_lanes = d.rans_lanes;
  params->token_importance = nullptr;
  params->high_rate_fraction = d.high_rate_fraction;
  params->high_rate_levels = d.high_rate_levels;
  params->reserved1 = 0;
}

kvtc_status kvtc_compress_view(const kvtc_calibration* cal, const kvtc_cache_view* view,
                               const kvtc_compress_params* params, uint8_t** out, size_t* out_size,
                               kvtc_compress_report* report_out) {
  if (!cal || !view || !out || !out_size) return null_argument("cal, view, out or out_size");
  return guarded([&] {
    auto r = kvtc::capi::compress(cal, view, params, report_out);
    if (!r.is_ok()) return report(r.status());
    const std::vector<uint8_t>& bytes = r.value();
    auto* buf = static_cast<uint8_t*>(std::malloc(std::max<size_t>(1, bytes.size())));
    if (!buf) return report(kvtc::Status(kvtc::StatusCode::kOutOfMemory, "out of memory"));
    std::memcpy(buf, bytes.data(), bytes.size());
    *out = buf;
    *out_size = bytes.size();
    return kvtc::capi::ok();
  });
}

kvtc_status kvtc_compress_view_into(const kvtc_calibration* cal, const kvtc_cache_view* view,
                                    const kvtc_compress_params* params, uint8_t* buffer, size_t capacity,
                                    size_t* out_size, kvtc_compress_report* report_out) {
  if (!cal || !view || !out_size) return null_argument("cal, view or out_size");
  if (!buffer && capacity > 0) return null_argument("buffer (with capacity > 0)");
  return guarded([&] {
    auto r = kvtc::capi::compress(cal, view, params, report_out);
    if (!r.is_ok()) return report(r.status());
    const std::vector<uint8_t>& bytes = r.value();
    *out_size = bytes.size();
    if (bytes.size() > capacity)
      return report(kvtc::Status(kvtc::StatusCode::kOutOfSpace, "the container needs " + std::to_string(bytes.size()) +
                                                                    " bytes, the buffer holds " +
                                                                    std::to_string(capacity)));
    std::memcpy(buffer, bytes.data(), bytes.size());
    return kvtc::capi::ok();
  });
}

size_t kvtc_compress_bound(const kvtc_calibration* cal, int64_t n_tokens) {
  if (!cal || n_tokens < 0) {
    report(kvtc::invalid_argument("kvtc_compress_bound needs a calibration and n_tokens >= 0"));
    return 0;
  }
  try {
    // kvtc::compress_bound reads the shape and token count alone; its terms grow like
    // n_tokens * features * 16 bytes: refuse counts where that could overflow.
    const double features = double(cal->cal.shape().n_features());
    if (double(n_tokens) * (features + 1) * 64 > 0x1p62) {
      report(kvtc::invalid_argument("kvtc_compress_bound: n_tokens=" + std::to_string(n_tokens) + " too large"));
      return 0;
    }
    kvtc::KVCache shape_only;
    shape_only.shape = cal->cal.shape();
    shape_only.n_tokens = n_tokens;
    const int64_t bound = kvtc::compress_bound(cal->cal, shape_only, kvtc::EncodeOptions{});
    if (bound <= 0 || uint64_t(bound) > uint64_t(SIZE_MAX)) {
      report(kvtc::internal_error("kvtc_compress_bound: bound out of range"));
      return 0;
    }
    kvtc::capi::ok();
    return size_t(bound);
  } catch (...) {
    report(kvtc::internal_error("kvtc_compress_bound failed"));
    return 0;
  }
}

kvtc_status kvtc_decoder_open(const kvtc_calibration* cal, const uint8_t* data, size_t size, int32_t n_threads,
                              kvtc_decoder** out) {
  if (!cal || !data || !out) return null_argument("cal, data or out");
  return guarded([&] {
    kvtc::DecodeOptions o;
    o.n_threads = n_threads;
    auto r = kvtc::Decoder::open(cal->cal, data, size, o);
    if (!r.is_ok()) return report(r.status());
    *out = new kvtc_decoder{std::move(r).value()};
    return kvtc::capi::ok();
  });
}

void kvtc_decoder_shape(const kvtc_decoder* dec, int32_t* n_layers, int32_t* n_kv_heads, int32_t* head_dim,
                        int64_t* n_tokens, int64_t* position_offset, kvtc_dtype* dtype) {
  if (!dec) return;
  const kvtc::KVCache& sk = dec->dec.skeleton();
  if (n_layers) *n_layers = sk.shape.n_layers;
  if (n_kv_heads) *n_kv_heads = sk.shape.n_kv_heads;
  if (head_dim) *head_dim = sk.shape.head_dim;
  if (n_tokens) *n_tokens = dec->dec.n_tokens();
  if (position_offset) *position_offset = dec->dec.position_offset();
  if (dtype) *dtype = static_cast<kvtc_dtype>(sk.dtype);
}

kvtc_status kvtc_decoder_restore_layer(const kvtc_decoder* dec, int32_t layer, kvtc_dtype element_dtype, void* keys,
                                       void* values, int64_t head_stride, int64_t token_stride) {
  if (!dec) return null_argument("dec");
  return guarded([&] {
    const int32_t n_layers = dec->dec.skeleton().shape.n_layers;
    if (layer < 0 || layer >= n_layers)
      return report(kvtc::invalid_argument("layer " + std::to_string(layer) + " out of range [0, " +
                                           std::to_string(n_layers) + ")"));
    const int32_t dtype = kvtc::capi::raw_dtype(element_dtype);
    if (!kvtc::capi::valid_dtype(dtype))
      return report(kvtc::invalid_argument("element_dtype " + kvtc::capi::dtype_arg_name(dtype) +
                                           " is not KVTC_BF16, KVTC_F16 or KVTC_F32"));
    if (dec->dec.n_tokens() > 0 && (!keys || !values)) return null_argument("keys or values");
    return report(dec->dec.restore_layer_into(layer, {keys, head_stride, token_stride},
                                              {values, head_stride, token_stride}, kvtc::DType(dtype)));
  });
}

void kvtc_decoder_free(kvtc_decoder* dec) { delete dec; }

}  // extern "C"
