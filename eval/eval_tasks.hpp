// `kvtc eval`: what compressing the cache does to a model's answers, task by task and method by method.
//
// Every trial prefills its context once, uncompressed; each method then gets a copy of that state,
// compresses and restores it at each target ratio, and the model goes on from the restored cache.
// The context's last token is held back and fed after compression, so that even the first answer
// token is computed from the restored cache. Tasks (formats of shared/models/kvtc-ref-26m/train/
// train_eval.py, which the model was trained and scored on):
//   passkey_<L>      the pass key line hidden in KJV verses of prose.test at depths 10..90% (cycled
//                    over trials), "What is the pass key? The pass key is"; score: first generated
//                    number equals the key (greedy, <= 8 tokens)
//   multikey_<n>     n lines "key <word>: <6 digits>", one "Query: the value of key <word> is"; same score
//   fidelity_<domain>_<L>  L tokens of the domain's test stream at a random offset, then 64 tokens
//                    teacher-forced: score = top-1 agreement with the uncompressed model (%), with the
//                    continuation's perplexity and the mean KL(uncompressed || compressed) beside it
//   continuation_<L> greedy 64 tokens after a test context (prose and code alternating): share of
//                    positions identical to the uncompressed model's continuation (%)
// Intervals: Wilson score intervals for the exact-match tasks, mean +- 1.96 standard errors for the
// others; all trials are seeded, so every method sees the same prompts. Trials may run in parallel
// (EvalOptions::workers); each trial's prompt depends only on the seed, the cell and its index.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "engine/model.hpp"
#include "engine/tokenizer.hpp"
#include "eval/eval_method.hpp"
#include "kvtc/kvtc.hpp"

namespace kvtc::engine {

struct EvalOptions {
  std::vector<std::string> tasks = {"passkey", "multikey", "fidelity", "continuation"};
  std::vector<std::string> methods = {"kvtc", "kivi", "int4", "streamingllm", "snapkv", "svd"};  // "none" is added
  std::vector<double> ratios = {8, 16, 20, 32};
  std::vector<int64_t> passkey_lengths = {1024, 2048, 4096};
  std::vector<double> passkey_depths = {0.1, 0.3, 0.5, 0.7, 0.9};
  std::vector<int> multikey_counts = {50, 150};
  std::vector<int64_t> fidelity_contexts = {1024, 2048, 4096};
  std::vector<std::string> domains = {"prose", "code"};
  int64_t continuation_context = 1024;
  int continuation_tokens = 64;
  int fidelity_tokens = 64;
  int trials = 20;  // per task cell
  int64_t first_trial = 0;  // trials first_trial .. first_trial + trials - 1 (runs to pool: merge_rows)
  // Trials run at once, each on one core (0: one per core). Results do not depend on it beyond
  // OpenBLAS's rounding, which may differ with its thread count.
  int workers = 1;
  uint64_t seed = 1;
  std::string corpus_dir;  // holds <domain>.test.txt.xz and prose.test.docs.tsv
  MethodConfig method_config;
  ProgressFn progress;  // (fraction, task cell)
};

// One trial's outcome for one (task, method, target ratio).
struct TrialValue {
  int64_t trial = 0;  // index: with the seed and the task it fixes the prompt
  double score = 0;   // points; exact-match tasks: 0 or 100
  double achieved_ratio = 1, achieved_ratio_all = 1;
  double nll = 0, kl = 0;  // fidelity only
};

struct EvalRow {
  std::string task, method, setting;
  double target_ratio = 1, achieved_ratio = 1, achieved_ratio_all = 1;  // means over trials
  double score = 0, ci_lo = 0, ci_hi = 0;  // points, 0..100
  int64_t n = 0;
  std::map<std::string, double> extra;  // fidelity: ppl, kl, nll
  bool exact_match = false;  // right/wrong per trial: Wilson interval; else mean +- 1.96 SE
  bool likelihood = false;   // fidelity: nll, ppl and kl in extra
  std::vector<TrialValue> trials;  // what the summary above is computed from, in trial order
  // Against the uncompressed model on the same trials (method "none", same task): the mean of
  // score - none's score over the trials both have, with a 95% interval of that paired difference
  // (Agresti-Min for exact-match tasks, mean +- 1.96 SE otherwise). Pairing removes the variance the
  // prompts share, so a small loss is resolved with far fewer trials than the scores' own intervals
  // need. Not set for "none" itself or without a "none" row.
  bool has_delta = false;
  double delta = 0, delta_lo = 0, delta_hi = 0;  // points
};

Result<std::vector<EvalRow>> run_eval(const Model& model, const Tokenizer& tokenizer, const EvalOptions& options);

// Recomputes a row's summary (score, interval, n, mean ratios, extra) from its trials.
void summarize(EvalRow* row);
// Sets the paired difference against the "none" row of the same task on every other row.
void add_paired_deltas(std::vector<EvalRow>* rows);
// Pools runs of the same seed over different trials (EvalOptions::first_trial): the trials of each row
// of `more` join the row of `into` with the same task, method and target ratio (or become a new row),
// and the summaries and paired differences are recomputed. Fails when a trial index would be counted
// twice.
Status merge_rows(std::vector<EvalRow>* into, const std::vector<EvalRow>& more);

// Scoring pieces, public for tests.
// The first run of digits after leading whitespace ("" when the text does not start that way).
std::string first_number(const std::string& text);
// True once `text` holds whitespace, digits and then something else (the answer is complete).
bool number_done(const std::string& text);
// 95% Wilson score interval of k successes in n, in points.
std::pair<double, double> wilson_interval(int64_t k, int64_t n);
// Mean and 95% normal interval of per-trial values (points), clipped to [0, 100].
void mean_interval(const std::vector<double>& values, double* mean, double* lo, double* hi);

}  // namespace kvtc::engine
