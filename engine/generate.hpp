// Token selection and autoregressive generation on top of Model::forward.
#pragma once

#include <cstdint>
#include <functional>
#include <random>
#include <vector>

#include "engine/model.hpp"
#include "kvtc/status.hpp"

namespace kvtc::engine {

struct SamplingOptions {
  double temperature = 0.0;  // 0: greedy (argmax, lowest id on ties)
  int top_k = 0;             // 0: whole vocabulary
  double top_p = 1.0;        // nucleus mass kept (1: all)
  uint64_t seed = 0;
};

// Draws tokens from logits; one Sampler holds one seeded random stream, so a run is reproducible.
class Sampler {
 public:
  explicit Sampler(const SamplingOptions& options) : o_(options), rng_(options.seed) {}
  int32_t sample(const float* logits, int64_t vocab_size);

 private:
  SamplingOptions o_;
  std::mt19937_64 rng_;
};

int32_t argmax(const float* logits, int64_t n);

struct GenerateOptions {
  int64_t max_new_tokens = 64;
  SamplingOptions sampling;
  std::vector<int32_t> stop_tokens;  // generation ends after emitting one of these
  // Called after every new token with all tokens generated so far; returning true stops.
  std::function<bool(const std::vector<int32_t>&)> stop;
  int64_t chunk_tokens = 512;  // prefill chunk
  int n_threads = 0;           // ForwardOptions::n_threads
};

// Feeds `prompt` after what `state` holds (an empty prompt continues from state->last_logits()), then
// generates up to max_new_tokens. Every generated token except the last is fed back, so the state ends
// holding prompt + generated[0 .. n-2], ready for the last token to be fed if the caller continues.
Result<std::vector<int32_t>> generate(const Model& model, KvState* state, const std::vector<int32_t>& prompt,
                                      const GenerateOptions& options);

}  // namespace kvtc::engine
