// kvtc with token-adaptive rate (issue 12's lever): the compressed tokens that a cheap importance score
// ranks highest get more bytes per token than the rest, at the same total size.
//
//   kvtc3+tar-snapkv/G, kvtc3+tar-knorm/G (G = 2 or 4)
//
// The quarter of the compressed tokens that score highest get G times the bytes per token of the other
// three quarters. Scores, per token over all layers and KV heads (token_subset.hpp): snapkv, the attention
// the prompt's last 32 queries pay a token (SnapKV's score, available at the end of a prefill); knorm, the
// key's norm as a share of its head's total (available from the cache alone). Each class is coded by kvtc
// (codec 3) as a cache of its own (code_tokens_apart: consecutive positions, keys rotated there and back),
// at the ratios that put both classes' coefficient chunks plus a class map of one bit per compressed token
// at the target; the low class gets what the high class leaves. A container with two levels per stream
// and that map would store the same; this measures whether such a format change pays (bench/RESULTS.md,
// "Token-adaptive rate").
#include <algorithm>
#include <cmath>
#include <cstdio>

#include "eval/eval_method.hpp"
#include "eval/token_subset.hpp"
#include "util/status_macros.hpp"

namespace kvtc::engine {

std::unique_ptr<CacheMethod> make_kvtc(const MethodConfig& c, int codec);  // eval_kvtc.cpp

namespace {

constexpr int kImportantShare = 4;  // one token in this many is in the favoured class

// Each head's key norms as shares of that head's total over the range, summed over layers and heads.
void key_norm_scores(const ModelConfig& cfg, const KvState& st, const CompressedRange& r, std::vector<double>* score) {
  score->assign(size_t(r.n()), 0.0);
  std::vector<double> norm(size_t(r.n()));
  for (int l = 0; l < cfg.n_layers; ++l)
    for (int h = 0; h < cfg.n_kv_heads; ++h) {
      for (int64_t i = 0; i < r.n(); ++i) {
        const float* row = st.k(l, h) + (r.begin + i) * cfg.head_dim;
        double s = 0;
        for (int d = 0; d < cfg.head_dim; ++d) s += double(row[d]) * row[d];
        norm[size_t(i)] = std::sqrt(s);
      }
      add_head_share(norm, score);
    }
}

class AdaptiveKvtc : public CacheMethod {
 public:
  enum class Score { kSnapKv, kKeyNorm };
  AdaptiveKvtc(const MethodConfig& c, Score score, int gain) : c_(c), score_(score), gain_(gain), kvtc_(make_kvtc(c, 3)) {
    c_.n_sink_tokens = c.calibration->n_sink_tokens();
    c_.n_window_tokens = c.calibration->n_window_tokens();
  }
  std::string name() const override {
    return std::string("kvtc3+tar-") + (score_ == Score::kSnapKv ? "snapkv" : "knorm") + "/" + std::to_string(gain_);
  }
  std::string reference() const override {
    return "kvtc (codec 3) with token-adaptive rate: the quarter of the tokens " +
           std::string(score_ == Score::kSnapKv ? "the last queries attend to most" : "with the largest keys") +
           " at " + std::to_string(gain_) + "x the bytes of the rest";
  }
  MethodNeeds needs() const override {
    return score_ == Score::kSnapKv ? MethodNeeds{false, kSnapKvObservation} : MethodNeeds{};
  }

  Result<MethodResult> apply(const Model& model, KvState* st, double target_ratio) const override {
    const ModelConfig& cfg = model.config();
    const CompressedRange r = compressed_range(*st, c_);
    if (r.n() < 2) return invalid_argument(name() + ": fewer than 2 tokens between the sinks and the window");
    if (!(target_ratio > 1)) return invalid_argument(name() + ": the target ratio must be above 1");
    std::vector<double> score;
    if (score_ == Score::kSnapKv) {
      KVTC_RETURN_IF_ERROR(token_scores(EvictionScore::kSnapKv, cfg, *st, r, &score));
    } else {
      key_norm_scores(cfg, *st, r, &score);
    }
    const int64_t n_high = std::clamp<int64_t>(std::llround(double(r.n()) / kImportantShare), 1, r.n() - 1);
    const std::vector<int64_t> high_offsets = top_tokens(score, n_high);
    std::vector<int64_t> high, low;
    for (int64_t i = 0, j = 0; i < r.n(); ++i) {
      const bool is_high = j < n_high && high_offsets[size_t(j)] == i;
      (is_high ? high : low).push_back(r.begin + i);
      j += is_high;
    }

    // Bytes per token of the low class b and of the high class G b, with the class map, at the target.
    MethodResult res = make_result(model, *st, r, 0.0, "");
    const double map_bytes = std::ceil(double(r.n()) / 8.0);
    const double budget_bytes = res.raw_compressed_bytes / target_ratio - map_bytes;
    if (!(budget_bytes > 0)) return invalid_argument(name() + ": the target leaves no room beside the class map");
    const double raw_token_bytes = raw_bytes_per_token(cfg);
    const double low_token_bytes = budget_bytes / (double(gain_) * double(high.size()) + double(low.size()));
    const double high_ratio = raw_token_bytes / (gain_ * low_token_bytes);
    KVTC_ASSIGN_OR_RETURN(MethodResult coded_high, code_tokens_apart(model, st, r, high, *kvtc_, high_ratio));
    // The low class gets what the high class left: codec 3 lands a little under a target's bytes, and a
    // target finer than its finest level leaves more.
    const double low_budget_bytes = budget_bytes - coded_high.stored_compressed_bytes;
    if (!(low_budget_bytes > 0)) return internal_error(name() + ": the favoured tokens took the whole budget");
    const double low_ratio = raw_token_bytes * double(low.size()) / low_budget_bytes;
    KVTC_ASSIGN_OR_RETURN(MethodResult coded_low, code_tokens_apart(model, st, r, low, *kvtc_, low_ratio));

    res.stored_compressed_bytes = coded_high.stored_compressed_bytes + coded_low.stored_compressed_bytes + map_bytes;
    // One container's worth of headers and exact tokens (the high class's), the other's coefficients.
    res.stored_bytes = coded_high.stored_bytes + coded_low.stored_compressed_bytes + map_bytes;
    char setting[96];
    std::snprintf(setting, sizeof setting, "target %gx: %lld tokens at %.2fx, %lld at %.2fx", target_ratio,
                  static_cast<long long>(high.size()), high_ratio, static_cast<long long>(low.size()), low_ratio);
    res.setting = setting;
    return res;
  }

 private:
  MethodConfig c_;
  Score score_;
  int gain_;
  std::unique_ptr<CacheMethod> kvtc_;
};

}  // namespace

std::unique_ptr<CacheMethod> make_adaptive_kvtc(const MethodConfig& c, bool snapkv_score, int gain) {
  return std::make_unique<AdaptiveKvtc>(c, snapkv_score ? AdaptiveKvtc::Score::kSnapKv : AdaptiveKvtc::Score::kKeyNorm,
                                        gain);
}

}  // namespace kvtc::engine
