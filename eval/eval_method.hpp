// Cache compression methods for `kvtc eval`: one interface, each method in its own file.
//
// A method takes the KV state of a prefilled context and replaces it by what the method would give
// back after storing it at a target compression ratio: restored values (quantisation, low rank,
// transform coding) or a subset of tokens (eviction). It reports the bytes it would store, counted
// honestly: every value, scale, zero point, index, basis vector and exact token.
//
// Ratios. "Raw" is the cache at 16 bits per element (K and V, every layer and KV head). The first
// n_sink tokens and the newest n_window tokens are kept exact by every method here (for eviction
// methods they are part of what is kept); the target applies to the tokens between them, the
// "compressed" tokens, so that short contexts can still reach high ratios. MethodResult gives the
// ratio over the compressed tokens and over the whole cache (exact tokens at 16 bits included).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/model.hpp"
#include "kvtc/kvtc.hpp"
#include "kvtc/status.hpp"

namespace kvtc::engine {

struct MethodConfig {
  int n_sink_tokens = 4;
  int n_window_tokens = 128;
  const Calibration* calibration = nullptr;  // kvtc only
  int n_threads = 0;
};

struct MethodResult {
  int64_t n_tokens = 0, n_compressed_tokens = 0;
  double raw_compressed_bytes = 0;     // compressed tokens at 16 bits
  double stored_compressed_bytes = 0;  // what the method stores for them
  double raw_bytes = 0;                // all tokens at 16 bits
  double stored_bytes = 0;             // stored_compressed_bytes + exact tokens at 16 bits
  std::string setting;                 // the knob value chosen ("2-bit", "rank 12", "keep 64")
  double ratio_compressed() const { return stored_compressed_bytes > 0 ? raw_compressed_bytes / stored_compressed_bytes : 0; }
  double ratio_all() const { return stored_bytes > 0 ? raw_bytes / stored_bytes : 0; }
};

// What a method needs from the context's prefill, requested before it runs.
struct MethodNeeds {
  bool attention_mass = false;  // KvState::set_accumulate_attention (H2O)
  int64_t n_queries = 0;        // KvState::set_query_capture (SnapKV's observation window)
};

// What a method computes from the context alone, whatever the target (low rank: each prompt matrix's
// SVD), so that the eval can do it once per trial and apply every target from it.
struct PreparedContext {
  virtual ~PreparedContext() = default;
};

class CacheMethod {
 public:
  virtual ~CacheMethod() = default;
  virtual std::string name() const = 0;
  virtual std::string reference() const = 0;  // the paper or code it follows
  virtual MethodNeeds needs() const { return {}; }
  // Compresses the state's tokens at `target_ratio` (over the compressed tokens) and puts back what a
  // decoder would see. The state's later tokens (decoding) are not affected by the method.
  virtual Result<MethodResult> apply(const Model& model, KvState* state, double target_ratio) const = 0;

  // The setting apply() would choose at `target_ratio` (MethodResult::setting), where a method with a
  // discrete knob can tell it without compressing; empty otherwise. Equal settings give equal caches,
  // so the eval compresses and scores each setting once.
  virtual std::string setting_for(const Model&, const KvState&, double /*target_ratio*/) const { return {}; }
  // Context-only work for several apply_prepared() calls on copies of `state`; null where there is none.
  virtual Result<std::unique_ptr<PreparedContext>> prepare(const Model&, const KvState&) const {
    return std::unique_ptr<PreparedContext>();
  }
  // apply() on a copy of the state that prepare() saw, reusing its work: the same result as apply().
  virtual Result<MethodResult> apply_prepared(const Model& model, KvState* state, double target_ratio,
                                              const PreparedContext* /*prepared*/) const {
    return apply(model, state, target_ratio);
  }
};

// Names: none, kvtc, kvtc3, kivi, int8, int4, fp8, gear, streamingllm, h2o, snapkv, svd, xkv, kvtc with
// eviction (snapkv+kvtc/F, h2o+kvtc/F) and kvtc3 with token-adaptive rate (kvtc3+tar-SCORE/G); method_names()
// lists them all.
Result<std::unique_ptr<CacheMethod>> make_method(const std::string& name, const MethodConfig& config);
std::vector<std::string> method_names();

// ---- helpers shared by the method files --------------------------------------------------------

// The token range [begin, end) that a method compresses, and the byte bookkeeping around it.
struct CompressedRange {
  int64_t begin = 0, end = 0;  // tokens outside are exact
  int64_t n() const { return end - begin; }
};
CompressedRange compressed_range(const KvState& state, const MethodConfig& config);

// Fills the raw/stored totals of a result from the range and the bytes stored for it.
MethodResult make_result(const Model& model, const KvState& state, const CompressedRange& range,
                         double stored_compressed_bytes, std::string setting);

// Bytes of one token's K and V at 16 bits (all layers and KV heads).
double raw_bytes_per_token(const ModelConfig& config);

// How eviction methods rank the compressed tokens of one layer and KV head (eval_evict.cpp):
// H2O by the attention they received over the prefill (MethodNeeds::attention_mass), SnapKV by the
// attention of the prompt's last kSnapKvObservation queries, max-pooled over neighbours.
enum class EvictionScore { kH2o, kSnapKv };
constexpr int kSnapKvObservation = 32;
// score[i] for token range.begin + i (higher: more worth keeping).
Status eviction_scores(EvictionScore kind, const ModelConfig& cfg, const KvState& state, const CompressedRange& range,
                       int layer, int head, std::vector<float>* score);

}  // namespace kvtc::engine
