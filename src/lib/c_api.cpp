// The C API: handles wrap the C++ objects; every entry point catches everything.
// Files, caches and whole-container calls here; views, params and the decoder in c_api_codec.cpp.
#include "kvtc/kvtc.h"

#include <cstdlib>
#include <cstring>
#include <string>

#include "c_api_internal.hpp"
#include "format/container.hpp"

namespace kvtc::capi {

namespace {
thread_local std::string g_last_error;
}  // namespace

kvtc_status report(const Status& s) {
  g_last_error = s.is_ok() ? "" : s.to_string();
  return static_cast<kvtc_status>(s.code());
}

}  // namespace kvtc::capi

using kvtc::capi::guarded;
using kvtc::capi::null_argument;
using kvtc::capi::report;

extern "C" {

const char* kvtc_last_error(void) { return kvtc::capi::g_last_error.c_str(); }
const char* kvtc_status_name(kvtc_status status) { return kvtc::status_code_name(kvtc::StatusCode(status)); }

kvtc_status kvtc_calibration_load(const char* path, kvtc_calibration** out) {
  if (!path || !out) return null_argument("path or out");
  return guarded([&] {
    auto r = kvtc::Calibration::load(path);
    if (!r.is_ok()) return report(r.status());
    *out = new kvtc_calibration{std::move(r).value()};
    return report(kvtc::Status::ok());
  });
}

kvtc_status kvtc_calibration_create(const char* const* paths, size_t n_paths, const double* ratios, size_t n_ratios,
                                    kvtc_calibration** out) {
  if (!paths || !out) return null_argument("paths or out");
  return guarded([&] {
    kvtc::CalibrateOptions o;
    if (ratios && n_ratios) o.ratios.assign(ratios, ratios + n_ratios);
    std::vector<std::string> files(paths, paths + n_paths);
    auto r = kvtc::calibrate(files, o);
    if (!r.is_ok()) return report(r.status());
    *out = new kvtc_calibration{std::move(r).value()};
    return report(kvtc::Status::ok());
  });
}

kvtc_status kvtc_calibration_save(const kvtc_calibration* cal, const char* path) {
  if (!cal || !path) return null_argument("cal or path");
  return guarded([&] { return report(cal->cal.save(path)); });
}

void kvtc_calibration_free(kvtc_calibration* cal) { delete cal; }

void kvtc_calibration_shape(const kvtc_calibration* cal, int32_t* n_layers, int32_t* n_kv_heads, int32_t* head_dim,
                            int32_t* n_sink_tokens, int32_t* n_window_tokens) {
  if (!cal) return;
  const kvtc::ModelShape& s = cal->cal.shape();
  if (n_layers) *n_layers = s.n_layers;
  if (n_kv_heads) *n_kv_heads = s.n_kv_heads;
  if (head_dim) *head_dim = s.head_dim;
  if (n_sink_tokens) *n_sink_tokens = cal->cal.n_sink_tokens();
  if (n_window_tokens) *n_window_tokens = cal->cal.n_window_tokens();
}

kvtc_status kvtc_cache_load(const char* path, kvtc_cache** out) {
  if (!path || !out) return null_argument("path or out");
  return guarded([&] {
    auto r = kvtc::read_cache(path);
    if (!r.is_ok()) return report(r.status());
    *out = new kvtc_cache{std::move(r).value()};
    return report(kvtc::Status::ok());
  });
}

kvtc_status kvtc_cache_save(const kvtc_cache* cache, const char* path) {
  if (!cache || !path) return null_argument("cache or path");
  return guarded([&] { return report(kvtc::write_cache(cache->cache, path)); });
}

void kvtc_cache_free(kvtc_cache* cache) { delete cache; }

void kvtc_cache_shape(const kvtc_cache* cache, int32_t* n_layers, int32_t* n_kv_heads, int32_t* head_dim,
                      int64_t* n_tokens) {
  if (!cache) return;
  if (n_layers) *n_layers = cache->cache.shape.n_layers;
  if (n_kv_heads) *n_kv_heads = cache->cache.shape.n_kv_heads;
  if (head_dim) *head_dim = cache->cache.shape.head_dim;
  if (n_tokens) *n_tokens = cache->cache.n_tokens;
}

const float* kvtc_cache_keys(const kvtc_cache* cache, int32_t layer) {
  if (!cache || layer < 0 || layer >= int32_t(cache->cache.k.size())) return nullptr;
  return cache->cache.k[size_t(layer)].data();
}

const float* kvtc_cache_values(const kvtc_cache* cache, int32_t layer) {
  if (!cache || layer < 0 || layer >= int32_t(cache->cache.v.size())) return nullptr;
  return cache->cache.v[size_t(layer)].data();
}

kvtc_status kvtc_compress(const kvtc_calibration* cal, const kvtc_cache* cache, double target_ratio, int32_t n_threads,
                          uint8_t** out, size_t* out_size) {
  if (!cal || !cache || !out || !out_size) return null_argument("cal, cache, out or out_size");
  return guarded([&] {
    kvtc::EncodeOptions o;
    o.target_ratio = target_ratio;
    o.n_threads = n_threads;
    o.measure_error = false;
    auto r = kvtc::encode(cal->cal, cache->cache, o);
    if (!r.is_ok()) return report(r.status());
    auto* buf = static_cast<uint8_t*>(std::malloc(r->bytes.size()));
    if (!buf) return report(kvtc::Status(kvtc::StatusCode::kOutOfMemory, "out of memory"));
    std::memcpy(buf, r->bytes.data(), r->bytes.size());
    *out = buf;
    *out_size = r->bytes.size();
    return report(kvtc::Status::ok());
  });
}

kvtc_status kvtc_decompress(const kvtc_calibration* cal, const uint8_t* data, size_t size, int32_t n_threads,
                            kvtc_cache** out) {
  if (!cal || !data || !out) return null_argument("cal, data or out");
  return guarded([&] {
    kvtc::DecodeOptions o;
    o.n_threads = n_threads;
    auto r = kvtc::decode(cal->cal, data, size, o);
    if (!r.is_ok()) return report(r.status());
    *out = new kvtc_cache{std::move(r).value()};
    return report(kvtc::Status::ok());
  });
}

kvtc_status kvtc_decompress_layer(const kvtc_calibration* cal, const uint8_t* data, size_t size, int32_t layer,
                                  float* keys, float* values, size_t capacity_floats) {
  if (!cal || !data || !keys || !values) return null_argument("cal, data, keys or values");
  return guarded([&] {
    auto dec = kvtc::Decoder::open(cal->cal, data, size);
    if (!dec.is_ok()) return report(dec.status());
    std::vector<float> k, v;
    kvtc::Status s = dec->restore_layer(layer, &k, &v);
    if (!s.is_ok()) return report(s);
    if (k.size() > capacity_floats)
      return report(kvtc::Status(kvtc::StatusCode::kOutOfSpace, "layer needs " + std::to_string(k.size()) + " floats"));
    std::memcpy(keys, k.data(), k.size() * sizeof(float));
    std::memcpy(values, v.data(), v.size() * sizeof(float));
    return report(kvtc::Status::ok());
  });
}

kvtc_status kvtc_container_shape(const uint8_t* data, size_t size, int32_t* n_layers, int32_t* n_kv_heads,
                                 int32_t* head_dim, int64_t* n_tokens) {
  if (!data) return null_argument("data");
  return guarded([&] {
    auto pc = kvtc::parse_container(data, size);
    if (!pc.is_ok()) return report(pc.status());
    const auto& h = pc->header;
    if (n_layers) *n_layers = h.shape.n_layers;
    if (n_kv_heads) *n_kv_heads = h.shape.n_kv_heads;
    if (head_dim) *head_dim = h.shape.head_dim;
    if (n_tokens) *n_tokens = int64_t(h.n_tokens);
    return report(kvtc::Status::ok());
  });
}

void kvtc_buffer_free(uint8_t* buffer) { std::free(buffer); }

}  // extern "C"
