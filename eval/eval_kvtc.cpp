// The method under test: kvtc::encode at the target ratio, then kvtc::decode, through the public API.
// "kvtc" is codec 2 (fixed-width groups + DEFLATE), "kvtc3" codec 3 (ECSQ + rANS; its calibration needs
// ECSQ models), "kvtc3+classes" codec 3 with token-adaptive rate in one container (format 4): the quarter
// of the compressed tokens with the highest SnapKV score (token_subset.hpp's token_scores, the scores
// kvtc::attention_importance computes from a cache's queries) at a level 32 finer than the rest.
// The sinks and the window are the calibration's (kept exact by the codec itself). Bytes counted: the
// compressed tokens' coefficient chunks after DEFLATE, and for the whole cache the whole container.
#include <cstdio>

#include "engine/cache_io.hpp"
#include "eval/eval_method.hpp"
#include "eval/token_subset.hpp"
#include "util/status_macros.hpp"

namespace kvtc::engine {

namespace {

class KvtcMethod : public CacheMethod {
 public:
  KvtcMethod(const MethodConfig& c, int codec, bool classes) : c_(c), codec_(codec), classes_(classes) {
    c_.n_sink_tokens = c.calibration->n_sink_tokens();
    c_.n_window_tokens = c.calibration->n_window_tokens();
  }
  std::string name() const override { return classes_ ? "kvtc3+classes" : codec_ == 3 ? "kvtc3" : "kvtc"; }
  std::string reference() const override {
    if (classes_) return "KV cache transform coding, codec 3 with token classes (format 4): SnapKV-scored quarter finer";
    return codec_ == 3 ? "KV cache transform coding, codec 3: ECSQ + rANS (this library)"
                       : "KV cache transform coding (this library: kvtc::encode/decode)";
  }
  MethodNeeds needs() const override { return classes_ ? MethodNeeds{false, kSnapKvObservation} : MethodNeeds{}; }
  Result<MethodResult> apply(const Model& model, KvState* st, double target_ratio) const override {
    const ModelConfig& cfg = model.config();
    const CompressedRange r = compressed_range(*st, c_);
    ExportOptions xo;
    xo.dtype = DType::kBF16;  // a 16-bit cache, as the ratios assume
    KVTC_ASSIGN_OR_RETURN(KVCache cache, export_cache(cfg, *st, xo));
    EncodeOptions eo;
    eo.codec = codec_;
    eo.target_ratio = target_ratio;
    eo.n_threads = c_.n_threads;
    eo.measure_error = false;
    if (classes_ && r.n() > 0) {
      std::vector<double> score;
      KVTC_RETURN_IF_ERROR(token_scores(EvictionScore::kSnapKv, cfg, *st, r, &score));
      eo.token_importance.assign(size_t(st->n_tokens()), 0.0f);
      for (int64_t i = 0; i < r.n(); ++i) eo.token_importance[size_t(r.begin + i)] = float(score[size_t(i)]);
    }
    KVTC_ASSIGN_OR_RETURN(EncodedCache blob, encode(*c_.calibration, cache, eo));
    DecodeOptions dopt;
    dopt.n_threads = c_.n_threads;
    KVTC_ASSIGN_OR_RETURN(KVCache restored, decode(*c_.calibration, blob.bytes.data(), blob.bytes.size(), dopt));
    KVTC_RETURN_IF_ERROR(import_cache(cfg, restored, st));
    // Compressed tokens: their coefficient chunks after DEFLATE (the report's compressed payload, with
    // the token classes chunk where there is one);
    // with the exact tokens: the whole container, headers and exact tokens as the codec stores them.
    // The setting names the target exactly ("target 8x", "target 8.6x"): the eval scores a setting once
    // for every target that gives it, so a rounded name would score 8.6x as 8x.
    char setting[48];
    std::snprintf(setting, sizeof setting, "target %gx", target_ratio);
    MethodResult res = make_result(model, *st, r, double(blob.report.compressed_payload_bytes), setting);
    res.stored_bytes = double(blob.bytes.size());
    return res;
  }

 private:
  MethodConfig c_;
  int codec_;
  bool classes_;
};

}  // namespace

std::unique_ptr<CacheMethod> make_kvtc(const MethodConfig& c, int codec) { return std::make_unique<KvtcMethod>(c, codec, false); }
std::unique_ptr<CacheMethod> make_kvtc_classes(const MethodConfig& c) { return std::make_unique<KvtcMethod>(c, 3, true); }

}  // namespace kvtc::engine
