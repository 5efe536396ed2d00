// Calibration straight from a model: the engine prefills sequences of calibration text and streams
// each sequence's cache into kvtc::CalibrationBuilder, so no cache files are written.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kvtc/kvtc.hpp"

namespace kvtc::engine {

// Runs the model in `model_dir` over `text_files` (.txt or .txt.xz; documents as in shared/corpus, made
// into the <bos> doc <eos> stream of token_stream.hpp), cut into sequences of n_tokens_per_sequence
// tokens, each prefilled from position 0, until max_tokens tokens (0: all the text). The files take
// turns (InterleavedStreams), one sequence each, so every file given counts even when max_tokens
// stops long before the first one ends. Sequences shorter
// than sinks + window + 64 tokens (the tail) are skipped, since the builder would learn nothing from
// them. Caches are rounded to bf16 before they are added, like the cache files `kvtc dump` writes.
// options.progress sees "prefill" with the fraction of tokens (or text) done, then the builder's own
// stages. Use validation text: calibrating on the test split would flatter every evaluation.
Result<Calibration> calibrate_from_model(const std::string& model_dir, const std::vector<std::string>& text_files,
                                         const CalibrateOptions& options, int64_t n_tokens_per_sequence = 1024,
                                         int64_t max_tokens = 0);

}  // namespace kvtc::engine
