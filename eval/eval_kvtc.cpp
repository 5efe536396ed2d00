// The method under test: kvtc::encode at the target ratio, then kvtc::decode, through the public API.
// "kvtc" is codec 2 (fixed-width groups + DEFLATE), "kvtc3" codec 3 (ECSQ + rANS; its calibration needs
// ECSQ models).
// The sinks and the window are the calibration's (kept exact by the codec itself). Bytes counted: the
// compressed tokens' coefficient chunks after DEFLATE, and for the whole cache the whole container.
#include <cstdio>

#include "engine/cache_io.hpp"
#include "eval/eval_method.hpp"
#include "util/status_macros.hpp"

namespace kvtc::engine {

namespace {

class KvtcMethod : public CacheMethod {
 public:
  KvtcMethod(const MethodConfig& c, int codec) : c_(c), codec_(codec) {
    c_.n_sink_tokens = c.calibration->n_sink_tokens();
    c_.n_window_tokens = c.calibration->n_window_tokens();
  }
  std::string name() const override { return codec_ == 3 ? "kvtc3" : "kvtc"; }
  std::string reference() const override {
    return codec_ == 3 ? "KV cache transform coding, codec 3: ECSQ + rANS (this library)"
                       : "KV cache transform coding (this library: kvtc::encode/decode)";
  }
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
    KVTC_ASSIGN_OR_RETURN(EncodedCache blob, encode(*c_.calibration, cache, eo));
    DecodeOptions dopt;
    dopt.n_threads = c_.n_threads;
    KVTC_ASSIGN_OR_RETURN(KVCache restored, decode(*c_.calibration, blob.bytes.data(), blob.bytes.size(), dopt));
    KVTC_RETURN_IF_ERROR(import_cache(cfg, restored, st));
    // Compressed tokens: their coefficient chunks after DEFLATE (the report's compressed payload);
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
};

}  // namespace

std::unique_ptr<CacheMethod> make_kvtc(const MethodConfig& c, int codec) { return std::make_unique<KvtcMethod>(c, codec); }

}  // namespace kvtc::engine
