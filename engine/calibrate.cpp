#include "engine/calibrate.hpp"

#include "engine/cache_io.hpp"
#include "engine/model.hpp"
#include "engine/token_stream.hpp"
#include "engine/tokenizer.hpp"
#include "util/status_macros.hpp"

namespace kvtc::engine {

Result<Calibration> calibrate_from_model(const std::string& model_dir, const std::vector<std::string>& text_files,
                                         const CalibrateOptions& options, int64_t n_tokens_per_sequence,
                                         int64_t max_tokens) {
  if (text_files.empty()) return invalid_argument("calibrate_from_model: no text files");
  if (n_tokens_per_sequence <= 0 || max_tokens < 0)
    return invalid_argument("calibrate_from_model: sequence length must be > 0 and max_tokens >= 0");
  KVTC_ASSIGN_OR_RETURN(Model model, Model::load(model_dir));
  KVTC_ASSIGN_OR_RETURN(Tokenizer tok, Tokenizer::load_for_model(model_dir));
  const ModelConfig& cfg = model.config();
  if (cfg.max_position_embeddings > 0 && n_tokens_per_sequence > cfg.max_position_embeddings)
    return invalid_argument("calibrate_from_model: sequences of " + std::to_string(n_tokens_per_sequence) +
                            " tokens exceed the model's " + std::to_string(cfg.max_position_embeddings) + " positions");
  KVTC_ASSIGN_OR_RETURN(CalibrationBuilder builder, CalibrationBuilder::create(cfg.cache_shape(), cfg.name, options));

  // The files take turns, a sequence each: every domain given is represented whatever max_tokens is.
  InterleavedStreams stream(tok, text_files, cfg.eos_token_ids.empty() ? -1 : cfg.eos_token_ids[0]);
  const int64_t min_tokens = int64_t(options.n_sink_tokens) + options.n_window_tokens + 64;
  KvState state = model.new_state();
  ExportOptions eo;
  eo.dtype = DType::kBF16;
  eo.source = "calibrate_from_model";
  int64_t done = 0, n_sequences = 0;
  while (max_tokens == 0 || done < max_tokens) {
    const int64_t want = max_tokens == 0 ? n_tokens_per_sequence : std::min(n_tokens_per_sequence, max_tokens - done);
    KVTC_ASSIGN_OR_RETURN(std::vector<int32_t> tokens, stream.next(want));
    if (tokens.empty()) break;                                           // every file is used up
    if (int64_t(tokens.size()) < std::min(want, min_tokens)) continue;  // a file's short tail
    state.clear();
    ForwardOptions fo;
    fo.n_logits = 0;
    KVTC_RETURN_IF_ERROR(model.forward(&state, tokens.data(), int64_t(tokens.size()), fo, nullptr));
    KVTC_ASSIGN_OR_RETURN(KVCache cache, export_cache(cfg, state, eo));
    KVTC_RETURN_IF_ERROR(builder.add(cache).with_context("sequence " + std::to_string(n_sequences)));
    done += int64_t(tokens.size());
    ++n_sequences;
    if (options.progress)
      options.progress(max_tokens > 0 ? double(done) / double(max_tokens) : stream.progress(), "prefill");
  }
  if (n_sequences == 0)
    return invalid_argument("calibrate_from_model: the text gives no sequence of at least " +
                            std::to_string(min_tokens) + " tokens");
  return builder.finish();
}

}  // namespace kvtc::engine
