#include "bench_util.hpp"

#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>

namespace kvtc::bench {

std::string shared_kvcache(const std::string& name) {
  const char* env = std::getenv("KVTC_SHARED_DIR");
  return std::string(env ? env : KVTC_SHARED_DIR) + "/kvcache/" + name;
}

std::vector<std::string> calibration_files() {
  return {shared_kvcache("calib-prose-1.safetensors"), shared_kvcache("calib-prose-2.safetensors"),
          shared_kvcache("calib-code-1.safetensors"), shared_kvcache("calib-code-2.safetensors")};
}

std::vector<std::string> test_files() {
  return {shared_kvcache("test-prose.safetensors"), shared_kvcache("test-code.safetensors")};
}

namespace {
[[noreturn]] void die(const Status& s) {
  std::fprintf(stderr, "bench: %s\n", s.to_string().c_str());
  std::exit(1);
}
}  // namespace

const Calibration& real_calibration() {
  static const Calibration cal = [] {
    CalibrateOptions o;
    o.ratios = {8, 16, 20, 32, 64};
    auto r = calibrate(calibration_files(), o);
    if (!r.is_ok()) die(r.status());
    return r.value();
  }();
  return cal;
}

const KVCache& real_cache(const std::string& path) {
  static std::map<std::string, KVCache> cache;
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(path);
  if (it != cache.end()) return it->second;
  auto r = read_cache(path);
  if (!r.is_ok()) die(r.status());
  return cache.emplace(path, std::move(r).value()).first->second;
}

}  // namespace kvtc::bench
