// Moving a sequence's KV state in and out of kvtc::KVCache (the project's cache layout), so that the
// engine's caches can be written, compressed, restored and put back in the model.
#pragma once

#include <cstdint>
#include <string>

#include "engine/config.hpp"
#include "engine/model.hpp"
#include "kvtc/cache.hpp"
#include "kvtc/status.hpp"

namespace kvtc::engine {

struct ExportOptions {
  // Element type recorded for the file. Values are rounded to it on export, so that the cache in
  // memory equals what a file written from it reads back as.
  DType dtype = DType::kF32;
  // Queries of the last n_query positions as q.<layer> (RoPE applied). They must have been captured
  // during the forward pass (KvState::set_query_capture(>= n_query)); 0: none.
  int64_t n_query = 0;
  std::string source;  // optional metadata "source"
};

// The state's tokens as a KVCache: k/v per layer [n_kv_heads][n_tokens][head_dim], metadata from the
// model config. The state's positions must be consecutive (a state after eviction has gaps and is
// refused with kUnsupported); position_offset is the first one.
Result<KVCache> export_cache(const ModelConfig& config, const KvState& state, const ExportOptions& options = {});

// Replaces the state's contents with the cache's tokens at positions position_offset + i. The cache
// must have the model's shape (layers, KV heads, head_dim, RoPE theta and style): kMismatch otherwise.
Status import_cache(const ModelConfig& config, const KVCache& cache, KvState* state);

}  // namespace kvtc::engine
