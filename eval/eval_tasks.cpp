#include "eval/eval_tasks.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

#include "engine/blas_threads.hpp"
#include "engine/generate.hpp"
#include "engine/text_io.hpp"
#include "engine/token_stream.hpp"
#include "util/status_macros.hpp"

namespace kvtc::engine {

// ---------------------------------------------------------------------------------------------------
// Scoring helpers
// ---------------------------------------------------------------------------------------------------

std::string first_number(const std::string& text) {
  size_t i = 0;
  while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
  size_t j = i;
  while (j < text.size() && std::isdigit(static_cast<unsigned char>(text[j]))) ++j;
  return text.substr(i, j - i);
}

bool number_done(const std::string& text) {
  size_t i = 0;
  while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
  size_t j = i;
  while (j < text.size() && std::isdigit(static_cast<unsigned char>(text[j]))) ++j;
  return j > i && j < text.size();
}

std::pair<double, double> wilson_interval(int64_t k, int64_t n) {
  if (n <= 0) return {0, 100};
  const double z = 1.959964, p = double(k) / double(n), z2 = z * z / double(n);
  const double center = (p + z2 / 2) / (1 + z2);
  const double half = z * std::sqrt(p * (1 - p) / double(n) + z * z / (4.0 * double(n) * double(n))) / (1 + z2);
  return {100 * std::max(0.0, center - half), 100 * std::min(1.0, center + half)};
}

void mean_interval(const std::vector<double>& v, double* mean, double* lo, double* hi) {
  const double n = double(v.size());
  double m = 0, ss = 0;
  for (double x : v) m += x;
  m = v.empty() ? 0 : m / n;
  for (double x : v) ss += (x - m) * (x - m);
  const double se = v.size() > 1 ? std::sqrt(ss / (n - 1) / n) : 0;
  *mean = m;
  *lo = std::max(0.0, m - 1.959964 * se);
  *hi = std::min(100.0, m + 1.959964 * se);
}

namespace {

// ---------------------------------------------------------------------------------------------------
// Prompts (train/train_eval.py)
// ---------------------------------------------------------------------------------------------------

const char* kIntro =
    "There is an important piece of information hidden inside a lot of irrelevant text. "
    "Find it and memorize it. I will quiz you about the important information there.\n\n";

struct Corpus {
  std::vector<std::string> verses;  // KJV verses of prose.test
  std::vector<int64_t> verse_tokens;
  std::map<std::string, std::vector<int32_t>> streams;  // domain -> <bos> doc <eos> stream of its test split
};

Status load_verses(const Tokenizer& tok, const std::string& dir, Corpus* c) {
  KVTC_ASSIGN_OR_RETURN(std::string text, read_text_file(dir + "/prose.test.txt.xz"));
  KVTC_ASSIGN_OR_RETURN(std::string tsv, read_text_file(dir + "/prose.test.docs.tsv"));
  const auto docs = split_documents(text);
  std::vector<std::string> sources;
  std::istringstream lines(tsv);
  std::string line;
  std::getline(lines, line);  // header
  while (std::getline(lines, line)) {
    const size_t a = line.find('\t'), b = line.find('\t', a + 1);
    sources.push_back(a == std::string::npos ? "" : line.substr(a + 1, b - a - 1));
  }
  if (sources.size() != docs.size()) return corrupt(dir + "/prose.test.docs.tsv: does not match prose.test.txt.xz");
  for (size_t d = 0; d < docs.size(); ++d) {
    if (sources[d] != "bible") continue;
    // A chapter: title line, blank line, then "N verse text" lines.
    std::istringstream ls{std::string(docs[d])};
    int line_no = 0;
    while (std::getline(ls, line)) {
      if (line_no++ < 2) continue;
      size_t i = 0;
      while (i < line.size() && std::isdigit(static_cast<unsigned char>(line[i]))) ++i;
      if (i == 0 || i >= line.size() || line[i] != ' ') continue;
      std::string verse = line.substr(i + 1);
      while (!verse.empty() && std::isspace(static_cast<unsigned char>(verse.back()))) verse.pop_back();
      KVTC_ASSIGN_OR_RETURN(auto ids, tok.encode(" " + verse, false));
      c->verses.push_back(std::move(verse));
      c->verse_tokens.push_back(int64_t(ids.size()));
    }
  }
  if (c->verses.empty()) return corrupt(dir + "/prose.test.txt.xz: no KJV verses found");
  return Status::ok();
}

// passkey_example() of train_eval.py, with its length search: the prompt fits in length - 8 tokens.
Result<std::vector<int32_t>> passkey_prompt(const Tokenizer& tok, const Corpus& c, int64_t length, double depth,
                                            const std::string& key, std::mt19937_64& rng) {
  int64_t target = length - 8;
  for (int attempt = 0; attempt < 50; ++attempt) {
    const int64_t need = std::max<int64_t>(8, target - 75);
    std::vector<size_t> idx;
    int64_t total = 0;
    std::uniform_int_distribution<size_t> pick(0, c.verses.size() - 1);
    while (total < need) {
      idx.push_back(pick(rng));
      total += c.verse_tokens[idx.back()];
    }
    size_t k = 0;
    int64_t cum = 0;
    while (k < idx.size() && cum + c.verse_tokens[idx[k]] < depth * double(total)) cum += c.verse_tokens[idx[k++]];
    std::string before, after;
    for (size_t i = 0; i < idx.size(); ++i) {
      std::string& s = i < k ? before : after;
      if (!s.empty()) s += ' ';
      s += c.verses[idx[i]];
    }
    const std::string text = std::string(kIntro) + before + "\nThe pass key is " + key + ". Remember it. " + key +
                             " is the pass key.\n" + after + "\nWhat is the pass key? The pass key is";
    KVTC_ASSIGN_OR_RETURN(auto ids, tok.encode(text, false));
    ids.insert(ids.begin(), 0);  // <|bos|>, as the harness prepends it
    if (int64_t(ids.size()) <= length - 8) return ids;
    target -= std::max<int64_t>(4, int64_t(ids.size()) - (length - 8));
  }
  return internal_error("passkey: could not fit the prompt");
}

// multikey_example() of train_eval.py (one query).
Result<std::vector<int32_t>> multikey_prompt(const Tokenizer& tok, int n_keys, std::string* answer, std::mt19937_64& rng) {
  static const std::vector<std::string> cons = {"b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s",
                                                "t", "v", "z", "ch", "sh", "tr", "pl"};
  static const std::vector<std::string> vow = {"a", "e", "i", "o", "u"};
  auto word = [&] {
    std::string w;
    const int syll = std::uniform_int_distribution<int>(2, 3)(rng);
    for (int i = 0; i < syll; ++i)
      w += cons[std::uniform_int_distribution<size_t>(0, cons.size() - 1)(rng)] +
           vow[std::uniform_int_distribution<size_t>(0, vow.size() - 1)(rng)];
    return w;
  };
  std::vector<std::pair<std::string, int>> keys;
  std::map<std::string, int> seen;
  while (int(keys.size()) < n_keys) {
    std::string w = word();
    if (seen.count(w)) continue;
    seen[w] = 1;
    keys.emplace_back(w, std::uniform_int_distribution<int>(100000, 999999)(rng));
  }
  const auto& q = keys[std::uniform_int_distribution<size_t>(0, keys.size() - 1)(rng)];
  std::string text = "Below is a list of keys and their values. Remember them.\n";
  for (size_t i = 0; i < keys.size(); ++i) {
    if (i > 0) text.append("\n");
    text.append("key ").append(keys[i].first).append(": ").append(std::to_string(keys[i].second));
  }
  text.append("\nQuery: the value of key ").append(q.first).append(" is");
  *answer = std::to_string(q.second);
  KVTC_ASSIGN_OR_RETURN(auto ids, tok.encode(text, false));
  ids.insert(ids.begin(), 0);
  return ids;
}

// ---------------------------------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------------------------------

// One trial's prompt: the context (all but its last token) and what follows.
struct Trial {
  std::vector<int32_t> context;  // prefilled, then compressed
  int32_t last = 0;              // fed after compression
  std::vector<int32_t> continuation;  // fidelity: the true next tokens
  std::string answer;            // retrieval
};

enum class Kind { kRetrieval, kFidelity, kContinuation };

struct Cell {
  std::string name;
  Kind kind;
  std::function<Result<Trial>(int64_t trial, std::mt19937_64& rng)> make;
};

struct Outcome {
  double score = 0, nll = 0, kl = 0;
};

// "1k" for 1024 tokens, "512" otherwise.
std::string length_name(int64_t n) { return n % 1024 == 0 ? std::to_string(n / 1024) + "k" : std::to_string(n); }

uint64_t mix(uint64_t a, uint64_t b) {
  uint64_t x = a ^ (b + 0x9e3779b97f4a7c15ull + (a << 6) + (a >> 2));
  x ^= x >> 31;
  x *= 0xbf58476d1ce4e5b9ull;
  return x ^ (x >> 29);
}

uint64_t hash_name(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (char c : s) h = (h ^ uint8_t(c)) * 1099511628211ull;
  return h;
}

// Logits of `tokens` fed after the state, [n][V].
Result<std::vector<float>> teacher_forced(const Model& model, KvState* st, const std::vector<int32_t>& tokens,
                                          int n_threads) {
  std::vector<float> logits;
  ForwardOptions fo;
  fo.n_logits = -1;
  fo.n_threads = n_threads;
  KVTC_RETURN_IF_ERROR(model.forward(st, tokens.data(), int64_t(tokens.size()), fo, &logits));
  return logits;
}

void log_softmax(const float* x, int64_t n, std::vector<double>* out) {
  out->resize(size_t(n));
  double m = x[0];
  for (int64_t i = 1; i < n; ++i) m = std::max(m, double(x[i]));
  double z = 0;
  for (int64_t i = 0; i < n; ++i) z += std::exp(double(x[i]) - m);
  const double lz = m + std::log(z);
  for (int64_t i = 0; i < n; ++i) (*out)[i] = double(x[i]) - lz;
}

// One scored (method, target ratio) of one trial.
struct Scored {
  size_t method = 0;
  double target_ratio = 1;
  Outcome outcome;
  double achieved = 1, achieved_all = 1;
  std::string setting;
};

// What every trial shares (read-only while trials run).
struct TrialContext {
  const Model& model;
  const Tokenizer& tok;
  const EvalOptions& o;
  const std::vector<std::unique_ptr<CacheMethod>>& methods;  // "none" first
  MethodNeeds needs;
  int forward_threads;  // ForwardOptions::n_threads
};

// Scores a state that holds the trial's context: the answer (retrieval), the teacher-forced
// continuation against the uncompressed logits (fidelity) or the greedy continuation (continuation).
Result<Outcome> score_state(const TrialContext& c, Kind kind, const Trial& t, const std::vector<float>& ref_logits,
                            const std::vector<int32_t>& ref_tokens, KvState* st) {
  Outcome out;
  if (kind == Kind::kRetrieval) {
    GenerateOptions go;
    go.max_new_tokens = 8;
    go.n_threads = c.forward_threads;
    go.stop = [&](const std::vector<int32_t>& g) { return number_done(c.tok.decode(g)); };
    KVTC_ASSIGN_OR_RETURN(auto gen, generate(c.model, st, {t.last}, go));
    out.score = first_number(c.tok.decode(gen)) == t.answer ? 100.0 : 0.0;
  } else if (kind == Kind::kFidelity) {
    const int64_t V = c.model.config().vocab_size;
    std::vector<int32_t> feed = {t.last};
    feed.insert(feed.end(), t.continuation.begin(), t.continuation.end() - 1);
    KVTC_ASSIGN_OR_RETURN(auto logits, teacher_forced(c.model, st, feed, c.forward_threads));
    std::vector<double> lp_ref, lp;
    double agree = 0, nll = 0, kl = 0;
    const int64_t n = int64_t(t.continuation.size());
    for (int64_t i = 0; i < n; ++i) {
      const float* a = ref_logits.data() + i * V;
      const float* b = logits.data() + i * V;
      agree += argmax(a, V) == argmax(b, V);
      log_softmax(a, V, &lp_ref);
      log_softmax(b, V, &lp);
      nll -= lp[t.continuation[i]];
      double k = 0;
      for (int64_t v = 0; v < V; ++v) k += std::exp(lp_ref[v]) * (lp_ref[v] - lp[v]);
      kl += std::max(0.0, k);
    }
    out.score = 100.0 * agree / double(n);
    out.nll = nll / double(n);
    out.kl = kl / double(n);
  } else {
    GenerateOptions go;
    go.max_new_tokens = c.o.continuation_tokens;
    go.n_threads = c.forward_threads;
    KVTC_ASSIGN_OR_RETURN(auto gen, generate(c.model, st, {t.last}, go));
    int64_t same = 0;
    for (size_t i = 0; i < ref_tokens.size(); ++i) same += i < gen.size() && gen[i] == ref_tokens[i];
    out.score = 100.0 * double(same) / double(std::max<size_t>(1, ref_tokens.size()));
  }
  return out;
}

// One trial of one cell: the context is prefilled once, uncompressed; each method then gets a copy of
// that state at each target ratio and is scored on it.
Result<std::vector<Scored>> run_trial(const TrialContext& c, const Cell& cell, int64_t trial) {
  std::mt19937_64 rng(mix(mix(c.o.seed, hash_name(cell.name)), uint64_t(trial)));
  KVTC_ASSIGN_OR_RETURN(Trial t, cell.make(trial, rng));
  KvState base = c.model.new_state();
  base.set_accumulate_attention(c.needs.attention_mass);
  base.set_query_capture(c.needs.n_queries);
  ForwardOptions fo;
  fo.n_logits = 0;
  fo.n_threads = c.forward_threads;
  KVTC_RETURN_IF_ERROR(c.model.forward(&base, t.context.data(), int64_t(t.context.size()), fo, nullptr));

  // The uncompressed reference for this trial.
  std::vector<float> ref_logits;
  std::vector<int32_t> ref_tokens;
  if (cell.kind == Kind::kFidelity) {
    KvState st = base;
    std::vector<int32_t> feed = {t.last};
    feed.insert(feed.end(), t.continuation.begin(), t.continuation.end() - 1);
    KVTC_ASSIGN_OR_RETURN(ref_logits, teacher_forced(c.model, &st, feed, c.forward_threads));
  } else if (cell.kind == Kind::kContinuation) {
    KvState st = base;
    GenerateOptions go;
    go.max_new_tokens = c.o.continuation_tokens;
    go.n_threads = c.forward_threads;
    KVTC_ASSIGN_OR_RETURN(ref_tokens, generate(c.model, &st, {t.last}, go));
  }

  std::vector<Scored> scored;
  for (size_t mi = 0; mi < c.methods.size(); ++mi) {
    const CacheMethod& method = *c.methods[mi];
    const std::vector<double> ratios = mi == 0 ? std::vector<double>{1.0} : c.o.ratios;
    // Methods with a discrete knob give the same cache for several targets: compress and score it once.
    std::map<std::string, std::pair<MethodResult, Outcome>> by_setting;
    KVTC_ASSIGN_OR_RETURN(const std::unique_ptr<PreparedContext> prepared, method.prepare(c.model, base));
    for (double ratio : ratios) {
      const std::string known = method.setting_for(c.model, base, ratio);
      auto it = known.empty() ? by_setting.end() : by_setting.find(known);
      if (it == by_setting.end()) {
        KvState st = base;
        KVTC_ASSIGN_OR_RETURN(MethodResult mr, method.apply_prepared(c.model, &st, ratio, prepared.get()));
        it = by_setting.find(mr.setting);
        if (it == by_setting.end()) {
          Result<Outcome> outcome = score_state(c, cell.kind, t, ref_logits, ref_tokens, &st);
          if (!outcome.is_ok()) return outcome.status().with_context(method.name() + " " + std::to_string(ratio));
          it = by_setting.emplace(mr.setting, std::make_pair(mr, *outcome)).first;
        }
      }
      const MethodResult& mr = it->second.first;
      Scored r;
      r.method = mi;
      r.target_ratio = ratio;
      r.achieved = mi == 0 ? 1.0 : mr.ratio_compressed();
      r.achieved_all = mi == 0 ? 1.0 : mr.ratio_all();
      r.setting = mr.setting;
      r.outcome = it->second.second;
      scored.push_back(std::move(r));
    }
  }
  return scored;
}

}  // namespace

Result<std::vector<EvalRow>> run_eval(const Model& model, const Tokenizer& tok, const EvalOptions& o) {
  // Methods, "none" first.
  std::vector<std::unique_ptr<CacheMethod>> methods;
  std::vector<std::string> names = {"none"};
  for (const auto& m : o.methods)
    if (m != "none" && std::find(names.begin(), names.end(), m) == names.end()) names.push_back(m);
  // Parallel trials each take one core: the codec then runs on the worker's thread alone.
  const int64_t max_workers =
      o.workers > 0 ? o.workers : int64_t(std::max(1u, std::thread::hardware_concurrency()));
  MethodConfig method_config = o.method_config;
  if (max_workers > 1) method_config.n_threads = 1;
  MethodNeeds needs;
  for (const auto& n : names) {
    KVTC_ASSIGN_OR_RETURN(auto m, make_method(n, method_config));
    needs.attention_mass |= m->needs().attention_mass;
    needs.n_queries = std::max(needs.n_queries, m->needs().n_queries);
    methods.push_back(std::move(m));
  }
  if (o.trials <= 0) return invalid_argument("eval: trials must be positive");
  if (o.first_trial < 0) return invalid_argument("eval: first_trial must not be negative");
  for (double r : o.ratios)
    if (!(r >= 1)) return invalid_argument("eval: ratios must be >= 1");

  // Task cells.
  Corpus corpus;
  bool need_verses = false, need_streams = false;
  std::vector<Cell> cells;
  for (const auto& task : o.tasks) {
    if (task == "passkey") {
      need_verses = true;
      for (int64_t L : o.passkey_lengths)
        cells.push_back({"passkey_" + length_name(L), Kind::kRetrieval,
                         [&, L](int64_t trial, std::mt19937_64& rng) -> Result<Trial> {
                           const double depth = o.passkey_depths[size_t(trial) % o.passkey_depths.size()];
                           Trial t;
                           t.answer = std::to_string(std::uniform_int_distribution<int>(10000, 99999)(rng));
                           KVTC_ASSIGN_OR_RETURN(auto ids, passkey_prompt(tok, corpus, L, depth, t.answer, rng));
                           t.last = ids.back();
                           ids.pop_back();
                           t.context = std::move(ids);
                           return t;
                         }});
    } else if (task == "multikey") {
      for (int nk : o.multikey_counts)
        cells.push_back({"multikey_" + std::to_string(nk), Kind::kRetrieval,
                         [&, nk](int64_t, std::mt19937_64& rng) -> Result<Trial> {
                           Trial t;
                           KVTC_ASSIGN_OR_RETURN(auto ids, multikey_prompt(tok, nk, &t.answer, rng));
                           t.last = ids.back();
                           ids.pop_back();
                           t.context = std::move(ids);
                           return t;
                         }});
    } else if (task == "fidelity" || task == "continuation") {
      need_streams = true;
      const bool fid = task == "fidelity";
      std::vector<std::pair<std::string, int64_t>> specs;
      if (fid) {
        for (const auto& d : o.domains)
          for (int64_t L : o.fidelity_contexts) specs.emplace_back(d, L);
      } else {
        specs.emplace_back("", o.continuation_context);
      }
      for (const auto& [domain, L] : specs) {
        const int n_follow = fid ? o.fidelity_tokens : o.continuation_tokens;
        const std::string name = fid ? "fidelity_" + domain + "_" + length_name(L)
                                     : "continuation_" + length_name(L);
        cells.push_back({name, fid ? Kind::kFidelity : Kind::kContinuation,
                         [&, domain = domain, L = L, n_follow](int64_t trial, std::mt19937_64& rng) -> Result<Trial> {
                           const std::string d =
                               domain.empty() ? o.domains[size_t(trial) % o.domains.size()] : domain;
                           const auto& s = corpus.streams.at(d);
                           const int64_t span = L + n_follow;
                           if (int64_t(s.size()) <= span) return invalid_argument("eval: " + d + " test stream too short");
                           const int64_t off =
                               std::uniform_int_distribution<int64_t>(0, int64_t(s.size()) - span - 1)(rng);
                           Trial t;
                           t.context.assign(s.begin() + off, s.begin() + off + L - 1);
                           t.last = s[off + L - 1];
                           t.continuation.assign(s.begin() + off + L, s.begin() + off + span);
                           return t;
                         }});
      }
    } else {
      return invalid_argument("eval: unknown task \"" + task + "\" (passkey, multikey, fidelity, continuation)");
    }
  }
  if (need_verses || need_streams) {
    if (o.corpus_dir.empty()) return invalid_argument("eval: these tasks need the corpus folder (--corpus)");
  }
  if (need_verses) KVTC_RETURN_IF_ERROR(load_verses(tok, o.corpus_dir, &corpus));
  if (need_streams) {
    const int32_t eos = model.config().eos_token_ids.empty() ? -1 : model.config().eos_token_ids[0];
    for (const auto& d : o.domains) {
      TokenStream ts(tok, {o.corpus_dir + "/" + d + ".test.txt.xz"}, eos);
      KVTC_ASSIGN_OR_RETURN(corpus.streams[d], ts.next(int64_t(1) << 40));
    }
  }

  // Trials run in parallel, one per worker; results are gathered per trial and accumulated in trial
  // order afterwards, so the report does not depend on which worker ran what.
  const int64_t total = int64_t(cells.size()) * o.trials;
  const int64_t workers = std::clamp<int64_t>(max_workers, 1, total);
  TrialContext ctx{model, tok, o, methods, needs, workers > 1 ? 1 : 0};
  std::vector<Result<std::vector<Scored>>> results(size_t(total), std::vector<Scored>{});
  {
    BlasThreads single(workers > 1 ? 1 : 0);
    std::atomic<int64_t> next{0};
    std::atomic<bool> failed{false};
    std::mutex progress_mutex;
    int64_t done = 0;
    auto work = [&] {
      for (int64_t item; !failed && (item = next.fetch_add(1)) < total;) {
        const Cell& cell = cells[size_t(item / o.trials)];
        results[size_t(item)] = run_trial(ctx, cell, o.first_trial + item % o.trials);
        if (!results[size_t(item)].is_ok()) failed = true;
        std::lock_guard<std::mutex> lock(progress_mutex);
        ++done;
        if (o.progress) o.progress(double(done) / double(total), cell.name);
      }
    };
    std::vector<std::thread> pool;
    for (int64_t w = 1; w < workers; ++w) pool.emplace_back(work);
    work();
    for (auto& t : pool) t.join();
  }

  // Rows per (cell, method, ratio), their trials in trial order.
  std::map<std::tuple<size_t, size_t, double>, EvalRow> by_key;
  for (int64_t item = 0; item < total; ++item) {
    const size_t ci = size_t(item / o.trials);
    const int64_t trial = o.first_trial + item % o.trials;
    if (!results[size_t(item)].is_ok())
      return results[size_t(item)].status().with_context(cells[ci].name + " trial " + std::to_string(trial));
    for (const Scored& sc : *results[size_t(item)]) {
      EvalRow& r = by_key[{ci, sc.method, sc.target_ratio}];
      r.task = cells[ci].name;
      r.method = methods[sc.method]->name();
      r.setting = sc.setting;
      r.target_ratio = sc.target_ratio;
      r.exact_match = cells[ci].kind == Kind::kRetrieval;
      r.likelihood = cells[ci].kind == Kind::kFidelity;
      r.trials.push_back({trial, sc.outcome.score, sc.achieved, sc.achieved_all, sc.outcome.nll, sc.outcome.kl});
    }
  }
  std::vector<EvalRow> rows;
  for (auto& [key, r] : by_key) {
    summarize(&r);
    rows.push_back(std::move(r));
  }
  add_paired_deltas(&rows);
  return rows;
}

void add_paired_deltas(std::vector<EvalRow>* rows) {
  constexpr double z = 1.959964;
  for (EvalRow& r : *rows) {
    r.has_delta = false;
    if (r.method == "none") continue;
    auto none = std::find_if(rows->begin(), rows->end(),
                             [&](const EvalRow& x) { return x.method == "none" && x.task == r.task; });
    if (none == rows->end()) continue;
    std::map<int64_t, double> base;
    for (const TrialValue& t : none->trials) base[t.trial] = t.score;
    std::vector<double> d;
    int64_t gained = 0, lost = 0;  // exact match: right only here, right only uncompressed
    for (const TrialValue& t : r.trials) {
      auto it = base.find(t.trial);
      if (it == base.end()) continue;
      d.push_back(t.score - it->second);
      gained += t.score > 50 && it->second <= 50;
      lost += t.score <= 50 && it->second > 50;
    }
    if (d.empty()) continue;
    const double n = double(d.size());
    double mean = 0, ss = 0;
    for (double x : d) mean += x;
    mean /= n;
    for (double x : d) ss += (x - mean) * (x - mean);
    double center = mean, half = d.size() > 1 ? z * std::sqrt(ss / (n - 1) / n) : 0;
    if (r.exact_match) {
      // Agresti & Min (2005): half a count added to each cell of the paired 2x2 table.
      const double n2 = n + 2, p_gain = (double(gained) + 0.5) / n2, p_loss = (double(lost) + 0.5) / n2;
      center = 100 * (p_gain - p_loss);
      half = 100 * z * std::sqrt((p_gain + p_loss - (p_gain - p_loss) * (p_gain - p_loss)) / n2);
    }
    r.has_delta = true;
    r.delta = mean;
    r.delta_lo = std::max(-100.0, center - half);
    r.delta_hi = std::min(100.0, center + half);
  }
}

void summarize(EvalRow* r) {
  const double n = double(r->trials.size());
  double ratio = 0, ratio_all = 0, nll = 0, kl = 0;
  int64_t right = 0;
  std::vector<double> scores;
  for (const TrialValue& t : r->trials) {
    ratio += t.achieved_ratio;
    ratio_all += t.achieved_ratio_all;
    nll += t.nll;
    kl += t.kl;
    right += t.score > 50;
    scores.push_back(t.score);
  }
  r->n = int64_t(r->trials.size());
  r->achieved_ratio = n > 0 ? ratio / n : 1;
  r->achieved_ratio_all = n > 0 ? ratio_all / n : 1;
  if (r->exact_match) {
    r->score = n > 0 ? 100.0 * double(right) / n : 0;
    std::tie(r->ci_lo, r->ci_hi) = wilson_interval(right, r->n);
  } else {
    mean_interval(scores, &r->score, &r->ci_lo, &r->ci_hi);
  }
  r->extra.clear();
  if (r->likelihood && n > 0) {
    r->extra["nll"] = nll / n;
    r->extra["ppl"] = std::exp(nll / n);
    r->extra["kl"] = kl / n;
  }
}

Status merge_rows(std::vector<EvalRow>* into, const std::vector<EvalRow>& more) {
  for (const EvalRow& m : more) {
    auto it = std::find_if(into->begin(), into->end(), [&](const EvalRow& r) {
      return r.task == m.task && r.method == m.method && r.target_ratio == m.target_ratio;
    });
    if (it == into->end()) {
      into->push_back(m);
      summarize(&into->back());
      continue;
    }
    if (it->exact_match != m.exact_match || it->likelihood != m.likelihood)
      return invalid_argument("merge: " + m.task + " is scored differently in the two runs");
    std::vector<TrialValue> all = it->trials;
    all.insert(all.end(), m.trials.begin(), m.trials.end());
    std::sort(all.begin(), all.end(), [](const TrialValue& a, const TrialValue& b) { return a.trial < b.trial; });
    for (size_t i = 1; i < all.size(); ++i)
      if (all[i].trial == all[i - 1].trial)
        return invalid_argument("merge: trial " + std::to_string(all[i].trial) + " of " + m.task + " " + m.method +
                                " is in both runs (pool runs over different trials: --first-trial)");
    it->trials = std::move(all);
    summarize(&*it);
  }
  add_paired_deltas(into);
  return Status::ok();
}

}  // namespace kvtc::engine
