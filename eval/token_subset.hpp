// Treating a subset of a state's compressed tokens on its own: the per-token importance scores and the
// coding of chosen tokens as a cache of their own, shared by kvtc composed with eviction
// (eval_evict_kvtc.cpp) and kvtc with token-adaptive rate (eval_adaptive_kvtc.cpp).
//
// kvtc's PCA joins every layer and KV head of a token into one vector, so what kvtc can treat apart is a
// token, not a (token, head): scores are per token, summed over all heads.
#pragma once

#include <cstdint>
#include <vector>

#include "eval/eval_method.hpp"

namespace kvtc::engine {

// One score per compressed token (score[i] for token range.begin + i; higher: more worth keeping): each
// layer's and KV head's eviction scores of `kind` (eval_evict.cpp) as shares of that head's total,
// summed over all layers and heads.
Status token_scores(EvictionScore kind, const ModelConfig& config, const KvState& state, const CompressedRange& range,
                    std::vector<double>* score);

// Adds one layer's and KV head's scores to the per-token totals as shares of that head's sum (nothing
// where they sum to 0), so that every head weighs the same in token_scores and its kin.
template <class T>
void add_head_share(const std::vector<T>& head_score, std::vector<double>* score) {
  double sum = 0;
  for (T s : head_score) sum += s;
  if (sum > 0)
    for (size_t i = 0; i < score->size(); ++i) (*score)[i] += head_score[i] / sum;
}

// The `count` highest-scoring indices into `score`, ascending; of equal scores the later index wins.
std::vector<int64_t> top_tokens(const std::vector<double>& score, int64_t count);

// Codes the compressed tokens `tokens` (ascending indices into the state, inside `range`) as a cache of
// their own: the state's sinks [0, range.begin), these tokens and its window [range.end, n), at
// consecutive positions 0..m-1 (keys rotated there from their true RoPE positions, and back after), given
// to `method` at `target_ratio`. What the method gives back for all of them (the exact tokens as its
// container stores them, bf16 for kvtc) is written into the state's rows at the true positions; the
// other compressed tokens stay as they were. The method must keep range.begin sinks and n - range.end
// window tokens exact (kvtc with the calibration's counts does), so that what it compresses is exactly
// `tokens`. Returns the method's result for the packed cache.
Result<MethodResult> code_tokens_apart(const Model& model, KvState* state, const CompressedRange& range,
                                       const std::vector<int64_t>& tokens, const CacheMethod& method,
                                       double target_ratio);

}  // namespace kvtc::engine
