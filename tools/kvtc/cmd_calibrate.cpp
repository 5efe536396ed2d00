// kvtc calibrate -o MODEL.kvtcal [--ratios 8,16,20,32,64] CACHE.safetensors...
// kvtc calibrate --model DIR --text FILE... -o MODEL.kvtcal   (with the engine: caches made on the fly)
#include <cstdio>

#include "common.hpp"
#ifdef KVTC_WITH_ENGINE
#include "engine/calibrate.hpp"
#endif

namespace kvtc::cli {

void register_calibrate(CLI::App& app) {
  struct Args {
    std::string out, ratios = "8,16,20,32,64";
    std::vector<std::string> inputs, texts;
    std::string model;
    int64_t rank_cap = 0, exact_max = 16384, samples = 4096, seq_tokens = 1024, max_tokens = 0;
    int threads = 0;
    bool no_ecsq = false;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("calibrate", "Compute the PCA bases and bit allocations of a model from cache files");
  cmd->add_option("inputs", args->inputs, "Cache files (safetensors, kvtc cache layout)")->check(CLI::ExistingFile);
#ifdef KVTC_WITH_ENGINE
  auto* model = cmd->add_option("--model", args->model, "Model (Hugging Face folder or .gguf file): run it over --text instead of reading caches")
                    ->check(CLI::ExistingPath);
  cmd->add_option("--text", args->texts, "Calibration text (.txt or .txt.xz; documents split by a 0x1E line); files take turns, a sequence each")
      ->check(CLI::ExistingFile)
      ->needs(model);
  cmd->add_option("--tokens-per-sequence", args->seq_tokens, "Tokens per prefill sequence")->capture_default_str();
  cmd->add_option("--max-tokens", args->max_tokens, "Stop after this many tokens (0: all text)")->capture_default_str();
#endif
  cmd->add_option("-o,--output", args->out, "Calibration file to write (.kvtcal)")->required();
  cmd->add_option("--ratios", args->ratios, "Target compression ratios to allocate bits for")->capture_default_str();
  cmd->add_option("--rank-cap", args->rank_cap, "Principal components kept (0: automatic)")->capture_default_str();
  cmd->add_option("--exact-max-features", args->exact_max, "Largest p for the exact covariance path")->capture_default_str();
  cmd->add_option("--samples", args->samples, "Calibration tokens used to measure quantisation error")->capture_default_str();
  cmd->add_option("-j,--threads", args->threads, "Worker threads (0: all cores)")->capture_default_str();
  cmd->add_flag("--no-ecsq", args->no_ecsq,
                "Skip codec 3's ECSQ models (faster; such a calibration encodes with codec 2 only)");
  cmd->callback([args] {
    CalibrateOptions o;
    o.ratios = parse_number_list(args->ratios);
    o.rank_cap = args->rank_cap;
    o.exact_max_features = args->exact_max;
    o.max_allocation_samples = args->samples;
    o.n_threads = args->threads;
    o.learn_ecsq = !args->no_ecsq;
    o.progress = progress_bar();
    Calibration cal = [&] {
#ifdef KVTC_WITH_ENGINE
      if (!args->model.empty()) {
        if (args->texts.empty()) fail(invalid_argument("--model needs --text"));
        return unwrap(engine::calibrate_from_model(args->model, args->texts, o, args->seq_tokens, args->max_tokens),
                      "calibrate");
      }
#endif
      if (args->inputs.empty()) fail(invalid_argument("give cache files to calibrate on"));
      return unwrap(calibrate(args->inputs, o), "calibrate");
    }();
    progress_done();
    check(cal.save(args->out), args->out);
    std::printf("calibrated %s on %lld tokens: p = %lld, rank K %lld, V %lld\n", cal.shape().to_string().c_str(),
                static_cast<long long>(cal.n_calibration_tokens()), static_cast<long long>(cal.shape().n_features()),
                static_cast<long long>(cal.rank(true)), static_cast<long long>(cal.rank(false)));
    std::printf("%8s %14s %14s %12s %12s\n", "ratio", "K bits/token", "V bits/token", "K pred.err", "V pred.err");
    for (double r : cal.ratios()) {
      auto k = unwrap(cal.plan(r, true)), v = unwrap(cal.plan(r, false));
      std::printf("%8g %7lld/%-6lld %7lld/%-6lld %11.3f%% %11.3f%%\n", r, static_cast<long long>(k.bits_per_token),
                  static_cast<long long>(k.budget_bits_per_token), static_cast<long long>(v.bits_per_token),
                  static_cast<long long>(v.budget_bits_per_token), 100 * k.predicted_relative_error,
                  100 * v.predicted_relative_error);
    }
    std::printf("wrote %s\n", args->out.c_str());
  });
}

}  // namespace kvtc::cli
