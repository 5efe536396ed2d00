#include "eval/eval_method.hpp"

#include <algorithm>
#include <utility>

namespace kvtc::engine {

// Defined in the method files (eval_quant.cpp, eval_gear.cpp, eval_evict.cpp, eval_lowrank.cpp, eval_kvtc.cpp,
// eval_evict_kvtc.cpp, eval_adaptive_kvtc.cpp).
std::unique_ptr<CacheMethod> make_int_blockwise(const MethodConfig& c, int bits);
std::unique_ptr<CacheMethod> make_fp8(const MethodConfig& c);
std::unique_ptr<CacheMethod> make_kivi(const MethodConfig& c);
std::unique_ptr<CacheMethod> make_streamingllm(const MethodConfig& c);
std::unique_ptr<CacheMethod> make_h2o(const MethodConfig& c);
std::unique_ptr<CacheMethod> make_snapkv(const MethodConfig& c);
std::unique_ptr<CacheMethod> make_svd(const MethodConfig& c, int layers_per_group);
std::unique_ptr<CacheMethod> make_kvtc(const MethodConfig& c, int codec);
std::unique_ptr<CacheMethod> make_kvtc_classes(const MethodConfig& c);
std::unique_ptr<CacheMethod> make_gear(const MethodConfig& c);
std::unique_ptr<CacheMethod> make_evict_then_kvtc(const MethodConfig& c, EvictionScore kind, int fraction);
std::unique_ptr<CacheMethod> make_adaptive_kvtc(const MethodConfig& c, bool snapkv_score, int gain);

namespace {

class NoneMethod : public CacheMethod {
 public:
  explicit NoneMethod(const MethodConfig& c) : c_(c) {}
  std::string name() const override { return "none"; }
  std::string reference() const override { return "the uncompressed cache"; }
  Result<MethodResult> apply(const Model& model, KvState* state, double) const override {
    const CompressedRange r = compressed_range(*state, c_);
    return make_result(model, *state, r, r.n() * raw_bytes_per_token(model.config()), "fp32 (counted at 16 bits)");
  }

 private:
  MethodConfig c_;
};

}  // namespace

std::vector<std::string> method_names() {
  return {"none", "kvtc", "kvtc3", "kvtc3+classes", "kivi", "int8", "int4", "fp8", "gear", "streamingllm", "h2o", "snapkv", "svd", "xkv",
          "snapkv+kvtc/2", "snapkv+kvtc/4", "h2o+kvtc/2", "h2o+kvtc/4",
          "kvtc3+tar-snapkv/2", "kvtc3+tar-snapkv/4", "kvtc3+tar-knorm/2", "kvtc3+tar-knorm/4"};
}

Result<std::unique_ptr<CacheMethod>> make_method(const std::string& name, const MethodConfig& config) {
  if (name == "none") return std::unique_ptr<CacheMethod>(new NoneMethod(config));
  const bool with_kvtc = name == "kvtc" || name.rfind("kvtc3", 0) == 0 || name.find("+kvtc/") != std::string::npos ||
                         name.rfind("kvtc3+tar-", 0) == 0;
  if (with_kvtc && config.calibration == nullptr)
    return invalid_argument("method " + name + " needs a calibration (-c MODEL.kvtcal)");
  if (name == "kvtc") return make_kvtc(config, 2);
  if (name == "kvtc3") return make_kvtc(config, 3);
  if (name == "kvtc3+classes") return make_kvtc_classes(config);
  for (auto [prefix, kind] : {std::pair{"snapkv+kvtc/", EvictionScore::kSnapKv}, {"h2o+kvtc/", EvictionScore::kH2o}})
    for (int fraction : {2, 4})
      if (name == prefix + std::to_string(fraction)) return make_evict_then_kvtc(config, kind, fraction);
  for (auto [prefix, snapkv] : {std::pair{"kvtc3+tar-snapkv/", true}, {"kvtc3+tar-knorm/", false}})
    for (int gain : {2, 4})
      if (name == prefix + std::to_string(gain)) return make_adaptive_kvtc(config, snapkv, gain);
  if (name == "kivi") return make_kivi(config);
  if (name == "int8") return make_int_blockwise(config, 8);
  if (name == "int4") return make_int_blockwise(config, 4);
  if (name == "fp8") return make_fp8(config);
  if (name == "gear") return make_gear(config);
  if (name == "streamingllm") return make_streamingllm(config);
  if (name == "h2o") return make_h2o(config);
  if (name == "snapkv") return make_snapkv(config);
  if (name == "svd") return make_svd(config, 1);
  if (name == "xkv") return make_svd(config, 4);
  std::string all;
  for (const auto& n : method_names()) all += (all.empty() ? "" : ", ") + n;
  return invalid_argument("unknown method \"" + name + "\" (known: " + all + ")");
}

CompressedRange compressed_range(const KvState& state, const MethodConfig& config) {
  const int64_t n = state.n_tokens();
  CompressedRange r;
  r.begin = std::min<int64_t>(config.n_sink_tokens, n);
  r.end = std::max<int64_t>(r.begin, n - config.n_window_tokens);
  return r;
}

double raw_bytes_per_token(const ModelConfig& c) { return 2.0 * 2.0 * c.n_layers * c.n_kv_heads * c.head_dim; }

MethodResult make_result(const Model& model, const KvState& state, const CompressedRange& range,
                         double stored_compressed_bytes, std::string setting) {
  MethodResult m;
  const double per_token = raw_bytes_per_token(model.config());
  m.n_tokens = state.n_tokens();
  m.n_compressed_tokens = range.n();
  m.raw_compressed_bytes = range.n() * per_token;
  m.stored_compressed_bytes = stored_compressed_bytes;
  m.raw_bytes = m.n_tokens * per_token;
  m.stored_bytes = stored_compressed_bytes + (m.n_tokens - range.n()) * per_token;
  m.setting = std::move(setting);
  return m;
}

}  // namespace kvtc::engine
