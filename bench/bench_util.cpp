#include "bench_util.hpp"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>

#include "core/rope.hpp"
#include "core/token_vectors.hpp"

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

double water_fill(const std::vector<double>& var, double bits) {
  double lo = 1e-30, hi = *std::max_element(var.begin(), var.end());
  for (int it = 0; it < 200; ++it) {
    const double theta = std::sqrt(lo * hi);
    double r = 0;
    for (double v : var) r += v > theta ? 0.5 * std::log2(v / theta) : 0.0;
    (r > bits ? lo : hi) = theta;
  }
  double d = 0;
  for (double v : var) d += std::min(v, hi);
  return d;
}

Energy test_energy(const CalibrationData& cal, int stream, const std::vector<const KVCache*>& caches) {
  const PcaBasis& pca = stream == 0 ? cal.key.pca : cal.value.pca;
  const int64_t p = pca.n_features, r = pca.rank;
  Energy e;
  e.coef_var.assign(size_t(r), 0.0);
  double centred_total = 0;
  int64_t n_total = 0;
  for (const KVCache* c : caches) {
    const int64_t t0 = cal.n_sink_tokens, t1 = c->n_tokens - cal.n_window_tokens, n = t1 - t0;
    RopeTable rope(c->shape.rope, c->shape.head_dim, c->position_offset, c->n_tokens);
    std::vector<float> x(size_t(n * p)), coef(size_t(n * r));
    gather_token_vectors(*c, Stream(stream), t0, n, stream == 0 ? &rope : nullptr, x.data());
    for (int64_t t = 0; t < n; ++t)
      for (int64_t f = 0; f < p; ++f) {
        e.total += double(x[t * p + f]) * x[t * p + f];
        x[t * p + f] -= pca.mean[f];
        centred_total += double(x[t * p + f]) * x[t * p + f];
      }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(n), int(r), int(p), 1.0f, x.data(), int(p),
                pca.components.data(), int(p), 0.0f, coef.data(), int(r));
    for (int64_t t = 0; t < n; ++t)
      for (int64_t j = 0; j < r; ++j) e.coef_var[j] += double(coef[t * r + j]) * coef[t * r + j];
    n_total += n;
  }
  double in_basis = 0;
  for (double& v : e.coef_var) in_basis += (v /= double(n_total));
  e.total /= double(n_total);
  e.residual = std::max(0.0, centred_total / double(n_total) - in_basis);
  return e;
}

void pool_relative_mse(const Calibration& cal, const KVCache& c, const EncodeReport& r, double num[2], double den[2]) {
  for (int s = 0; s < 2; ++s) {
    double e = 0;
    for (int l = 0; l < c.shape.n_layers; ++l)
      for (int h = 0; h < c.shape.n_kv_heads; ++h)
        for (int64_t t = cal.n_sink_tokens(); t < cal.n_sink_tokens() + r.n_compressed_tokens; ++t) {
          const float* x = s == 0 ? c.k_row(l, h, t) : c.v_row(l, h, t);
          for (int d = 0; d < c.shape.head_dim; ++d) e += double(x[d]) * x[d];
        }
    num[s] += (s == 0 ? r.k_relative_mse : r.v_relative_mse) * e;
    den[s] += e;
  }
}

}  // namespace kvtc::bench
