#include "engine/generate.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "util/status_macros.hpp"

namespace kvtc::engine {

int32_t argmax(const float* logits, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (logits[i] > logits[best]) best = i;
  return int32_t(best);
}

int32_t Sampler::sample(const float* logits, int64_t vocab_size) {
  if (o_.temperature <= 0.0 || vocab_size <= 1) return argmax(logits, vocab_size);
  std::vector<int32_t> ids(static_cast<size_t>(vocab_size));
  std::iota(ids.begin(), ids.end(), 0);
  int64_t k = vocab_size;
  if (o_.top_k > 0 && o_.top_k < vocab_size) {
    k = o_.top_k;
    std::partial_sort(ids.begin(), ids.begin() + k, ids.end(),
                      [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
  } else {
    std::sort(ids.begin(), ids.end(),
              [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
  }
  std::vector<double> p(static_cast<size_t>(k));
  const double m = logits[ids[0]];
  double sum = 0;
  for (int64_t i = 0; i < k; ++i) sum += p[i] = std::exp((double(logits[ids[i]]) - m) / o_.temperature);
  if (o_.top_p < 1.0) {
    double acc = 0;
    int64_t keep = 0;
    while (keep < k) {
      acc += p[keep++] / sum;
      if (acc >= o_.top_p) break;
    }
    k = keep;
    sum = std::accumulate(p.begin(), p.begin() + k, 0.0);
  }
  const double u = std::uniform_real_distribution<double>(0.0, sum)(rng_);
  double acc = 0;
  for (int64_t i = 0; i < k; ++i) {
    acc += p[i];
    if (u < acc) return ids[i];
  }
  return ids[k - 1];
}

Result<std::vector<int32_t>> generate(const Model& model, KvState* state, const std::vector<int32_t>& prompt,
                                      const GenerateOptions& options) {
  ForwardOptions fo;
  fo.chunk_tokens = options.chunk_tokens;
  fo.n_threads = options.n_threads;
  fo.n_logits = 0;
  if (!prompt.empty()) {
    KVTC_RETURN_IF_ERROR(model.forward(state, prompt.data(), int64_t(prompt.size()), fo, nullptr));
  }
  if (state->last_logits().empty()) return invalid_argument("generate: empty prompt and no logits in the state");
  Sampler sampler(options.sampling);
  std::vector<int32_t> out;
  const int64_t V = model.config().vocab_size;
  for (int64_t i = 0; i < options.max_new_tokens; ++i) {
    const int32_t t = sampler.sample(state->last_logits().data(), V);
    out.push_back(t);
    if (std::find(options.stop_tokens.begin(), options.stop_tokens.end(), t) != options.stop_tokens.end()) break;
    if (options.stop && options.stop(out)) break;
    if (i + 1 == options.max_new_tokens) break;
    KVTC_RETURN_IF_ERROR(model.forward(state, &t, 1, fo, nullptr));
  }
  return out;
}

}  // namespace kvtc::engine
