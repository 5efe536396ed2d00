#include "fuzz_common.hpp"

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>

#include "core/calibration_data.hpp"
#include "core/ecsq.hpp"

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
    // Codec 3 needs an ECSQ model per stream (docs/FORMAT.md section 9). Until calibrate() learns them,
    // learn them here from pseudo-random Laplacian coefficients with each component's calibrated
    // variance and rare outliers 20-80 times larger (so that tables reach bucket symbols), drawn from
    // the generator's raw bits so that the model, and the fingerprint the seeds record, are the same
    // on every platform. The calibration fingerprint covers only shape and bases: codec 2 seeds still match.
    auto data = std::make_shared<CalibrationData>(r->data());
    std::mt19937_64 rng(0x6563737175ull);
    auto uniform = [&] { return double(rng() >> 11) * 0x1p-53; };  // [0, 1)
    for (StreamCalibration* sc : {&data->key, &data->value}) {
      const int64_t n = 2000, rank = sc->pca.rank;
      std::vector<float> coef(size_t(n * rank));
      for (int64_t j = 0; j < rank; ++j) {
        const double scale = std::sqrt(std::max(sc->pca.variance[size_t(j)], 1e-12) / 2.0);  // variance 2 scale^2
        for (int64_t i = 0; i < n; ++i) {
          const double u = uniform() - 0.5;
          double x = -scale * (u < 0 ? -1.0 : 1.0) * std::log(1.0 - 2.0 * std::fabs(u));
          if (uniform() < 1.0 / 300) x *= 20.0 + 60.0 * uniform();
          coef[size_t(i * rank + j)] = float(x);
        }
      }
      EcsqLearnOptions eo;
      eo.n_threads = 1;
      auto m = learn_ecsq_model(coef.data(), n, rank, c.shape.n_features(), eo);
      if (!m.is_ok()) std::abort();
      sc->ecsq = std::move(m).value();
    }
    return Calibration(data);
  }();
  return cal;
}

}  // namespace kvtc::fuzz
