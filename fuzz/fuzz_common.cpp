#include "fuzz_common.hpp"

#include <cmath>
#include <random>

namespace kvtc::fuzz {

KVCache fuzz_cache(int64_t n_tokens, uint64_t seed) {
  KVCache c;
  c.shape.n_layers = 2;
  c.shape.n_kv_heads = 2;
  c.shape.head_dim = 16;
  c.shape.rope.theta = 10000;
  c.dtype = DType::kBF16;
  c.n_tokens = n_tokens;
  c.model_name = "fuzz";
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const size_t n = size_t(c.shape.n_kv_heads) * size_t(n_tokens) * size_t(c.shape.head_dim);
  for (int l = 0; l < c.shape.n_layers; ++l) {
    std::vector<float> k(n), v(n);
    for (size_t i = 0; i < n; ++i) {
      // Correlated features (a shared factor per element), on a 1/64 grid.
      const float f = normal(rng);
      k[i] = std::ldexp(std::round(std::ldexp(f * 2.0f + 0.1f * float(i % 16), 6)), -6);
      v[i] = std::ldexp(std::round(std::ldexp(f - 0.05f * float(i % 16), 6)), -6);
    }
    c.k.push_back(std::move(k));
    c.v.push_back(std::move(v));
  }
  c.sync_metadata();
  return c;
}

const Calibration& fuzz_calibration() {
  static const Calibration cal = [] {
    const KVCache c = fuzz_cache(400, 1);
    CalibrateOptions o;
    o.ratios = {8, 20};
    o.group_sizes = {1, 4, 16};
    o.n_threads = 1;
    auto b = CalibrationBuilder::create(c.shape, "fuzz", o);
    if (!b.is_ok() || !b->add(c).is_ok()) std::abort();
    auto r = b->finish();
    if (!r.is_ok()) std::abort();
    return r.value();
  }();
  return cal;
}

}  // namespace kvtc::fuzz
