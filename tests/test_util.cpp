#include "test_util.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <random>

#include "core/rope.hpp"
#include "util/half.hpp"
#include <unistd.h>

namespace kvtc::testing {

std::string shared_dir() { return KVTC_SHARED_DIR; }
std::string repo_data(const std::string& name) { return std::string(KVTC_SOURCE_DIR) + "/data/" + name; }
std::string shared_kvcache(const std::string& name) { return shared_dir() + "/kvcache/" + name; }

std::string temp_dir() {
  static std::atomic<int> counter{0};
  namespace fs = std::filesystem;
  fs::path dir = fs::temp_directory_path() /
                 ("kvtc-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

KVCache synthetic_cache(const ModelShape& shape, int64_t n_tokens, uint64_t seed, DType dtype,
                        int64_t position_offset) {
  // The structure (mean and principal directions) is the same for every seed, like one model's caches;
  // the seed only draws the tokens.
  std::mt19937_64 model_rng(0x6b767463 + uint64_t(shape.n_features()));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  KVCache c;
  c.shape = shape;
  c.dtype = dtype;
  c.n_tokens = n_tokens;
  c.position_offset = position_offset;
  c.model_name = "synthetic";
  const int64_t p = shape.n_features();
  // x = mean + sum_j a_j * sigma_j * u_j with a decaying spectrum over a few random directions.
  const int n_dirs = 24;
  std::vector<std::vector<float>> dirs(2 * n_dirs, std::vector<float>(p));
  for (auto& d : dirs)
    for (auto& x : d) x = normal(model_rng) / std::sqrt(float(p));
  std::vector<float> mean(2 * p);
  for (auto& m : mean) m = 0.3f * normal(model_rng);
  c.k.assign(shape.n_layers, std::vector<float>(size_t(shape.n_kv_heads) * n_tokens * shape.head_dim));
  c.v = c.k;
  std::vector<float> row(p);
  for (int s = 0; s < 2; ++s) {
    for (int64_t t = 0; t < n_tokens; ++t) {
      for (int64_t f = 0; f < p; ++f) row[f] = mean[s * p + f] + 0.05f * normal(rng);
      for (int j = 0; j < n_dirs; ++j) {
        const float a = normal(rng) * 8.0f / float(1 + j);
        for (int64_t f = 0; f < p; ++f) row[f] += a * dirs[s * n_dirs + j][f] * std::sqrt(float(p)) * 0.2f;
      }
      for (int l = 0; l < shape.n_layers; ++l)
        for (int h = 0; h < shape.n_kv_heads; ++h) {
          float* dst = s == 0 ? c.k_row(l, h, t) : c.v_row(l, h, t);
          for (int d = 0; d < shape.head_dim; ++d)
            dst[d] = row[(int64_t(l) * shape.n_kv_heads + h) * shape.head_dim + d];
        }
    }
  }
  RopeTable rope(shape.rope, shape.head_dim, position_offset, std::max<int64_t>(n_tokens, 1));
  for (int l = 0; l < shape.n_layers; ++l)
    for (int h = 0; h < shape.n_kv_heads; ++h) rope.apply(c.k_row(l, h, 0), 0, n_tokens, false);
  // Values representable in the file dtype, so file round trips are exact.
  if (dtype != DType::kF32) {
    for (auto* layers : {&c.k, &c.v})
      for (auto& layer : *layers)
        for (auto& x : layer) x = dtype == DType::kBF16 ? bf16_to_f32(f32_to_bf16(x)) : round_to_f16(x);
  }
  c.sync_metadata();
  return c;
}

}  // namespace kvtc::testing
