#include "engine/cache_io.hpp"

#include <cstring>

#include "util/half.hpp"
#include "util/status_macros.hpp"

namespace kvtc::engine {

Result<KVCache> export_cache(const ModelConfig& config, const KvState& state, const ExportOptions& options) {
  const int64_t n = state.n_tokens();
  const auto& pos = state.positions();
  for (int64_t i = 1; i < n; ++i)
    if (pos[i] != pos[0] + i)
      return unsupported("export_cache: token positions are not consecutive (evicted state); the cache layout "
                         "records one position offset");
  if (options.n_query < 0 || options.n_query > state.n_captured_queries())
    return invalid_argument("export_cache: " + std::to_string(options.n_query) + " queries asked for, " +
                            std::to_string(state.n_captured_queries()) + " captured");
  KVCache c;
  c.shape = config.cache_shape();
  c.dtype = options.dtype;
  c.n_tokens = n;
  c.position_offset = n > 0 ? pos[0] : state.next_position();
  c.n_heads = config.n_heads;
  c.n_query = options.n_query;
  c.model_name = config.name;
  const int64_t hd = config.head_dim;
  c.k.resize(config.n_layers);
  c.v.resize(config.n_layers);
  for (int l = 0; l < config.n_layers; ++l) {
    c.k[l].resize(size_t(config.n_kv_heads) * n * hd);
    c.v[l].resize(size_t(config.n_kv_heads) * n * hd);
    for (int h = 0; h < config.n_kv_heads; ++h) {
      std::memcpy(c.k[l].data() + size_t(h) * n * hd, state.k(l, h), sizeof(float) * n * hd);
      std::memcpy(c.v[l].data() + size_t(h) * n * hd, state.v(l, h), sizeof(float) * n * hd);
    }
  }
  if (c.n_query > 0) {
    // Captured rows are token-major [count][H * hd]; the layout wants [H][n_query][hd].
    const int64_t nq = int64_t(config.n_heads) * hd, count = state.n_captured_queries();
    c.q.resize(config.n_layers);
    for (int l = 0; l < config.n_layers; ++l) {
      const auto& src = state.captured_queries(l);
      c.q[l].resize(size_t(config.n_heads) * c.n_query * hd);
      for (int h = 0; h < config.n_heads; ++h)
        for (int64_t t = 0; t < c.n_query; ++t)
          std::memcpy(c.q[l].data() + (size_t(h) * c.n_query + t) * hd,
                      src.data() + (count - c.n_query + t) * nq + int64_t(h) * hd, sizeof(float) * hd);
    }
  }
  if (c.dtype != DType::kF32) {
    for (auto* tensors : {&c.k, &c.v, &c.q})
      for (auto& t : *tensors)
        for (auto& x : t) x = c.dtype == DType::kBF16 ? bf16_to_f32(f32_to_bf16(x)) : round_to_f16(x);
  }
  c.sync_metadata();
  if (!options.source.empty()) c.metadata["source"] = options.source;
  return c;
}

Status import_cache(const ModelConfig& config, const KVCache& cache, KvState* state) {
  const ModelShape want = config.cache_shape();
  if (!(cache.shape == want))
    return mismatch("import_cache: cache is " + cache.shape.to_string() + ", model is " + want.to_string());
  KVTC_RETURN_IF_ERROR(cache.validate());
  std::vector<int64_t> positions(static_cast<size_t>(cache.n_tokens));
  for (int64_t i = 0; i < cache.n_tokens; ++i) positions[i] = cache.position_offset + i;
  KVTC_RETURN_IF_ERROR(state->assign(cache.n_tokens, positions, cache.k, cache.v));
  if (cache.n_tokens == 0) state->clear(cache.position_offset);
  return Status::ok();
}

}  // namespace kvtc::engine
