// kvtc eval --model DIR -c MODEL.kvtcal --tasks passkey,multikey,fidelity,continuation
//           --methods kvtc,kivi,snapkv,... --ratios 8,16,20,32 [--trials N] [--json] [--plot FILE.png]
// kvtc eval-merge A.json B.json ... [--json-out OUT.json] [--plot FILE.png]
// What compressing the cache does to the model's answers (eval/eval_tasks.hpp has the tasks); runs
// over different trials (--first-trial) pool into one report.
#include <cstdio>
#include <filesystem>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <map>
#include <optional>
#include <sstream>

#include <nlohmann/json.hpp>

#include "common.hpp"
#include "engine/model.hpp"
#include "engine/tokenizer.hpp"
#include "eval/eval_tasks.hpp"
#include "util/file_io.hpp"

namespace kvtc::cli {

namespace {

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

template <typename T>
std::vector<T> numbers(const std::string& s) {
  std::vector<T> out;
  for (double v : parse_number_list(s)) out.push_back(T(v));
  return out;
}

std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof(b), f, v);
  return b;
}

void print_table(const std::vector<engine::EvalRow>& rows) {
  std::printf("%-20s %-13s %-22s %7s %9s %9s %7s %15s %5s %21s  %s\n", "task", "method", "setting", "target",
              "achieved", "with-exact", "score", "95% CI", "n", "vs none [95% CI]", "ppl / KL");
  std::string last;
  for (const auto& r : rows) {
    if (r.task != last && !last.empty()) std::printf("\n");
    last = r.task;
    std::string extra;
    if (r.extra.count("ppl")) extra = fmt("%.3f", r.extra.at("ppl")) + " / " + fmt("%.4f", r.extra.at("kl"));
    const std::string delta = r.has_delta ? fmt("%+.1f", r.delta) + " [" + fmt("%+.1f", r.delta_lo) + ", " +
                                                fmt("%+.1f", r.delta_hi) + "]"
                                          : "-";
    std::printf("%-20s %-13s %-22s %7s %9s %9s %7.1f %15s %5lld %21s  %s\n", r.task.c_str(), r.method.c_str(),
                r.setting.substr(0, 22).c_str(), r.method == "none" ? "-" : fmt("%.0fx", r.target_ratio).c_str(),
                fmt("%.2fx", r.achieved_ratio).c_str(), fmt("%.2fx", r.achieved_ratio_all).c_str(), r.score,
                ("[" + fmt("%.1f", r.ci_lo) + ", " + fmt("%.1f", r.ci_hi) + "]").c_str(), static_cast<long long>(r.n),
                delta.c_str(), extra.c_str());
  }
}

nlohmann::json to_json(const std::vector<engine::EvalRow>& rows) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& r : rows) {
    nlohmann::json j = {{"task", r.task},
                        {"method", r.method},
                        {"setting", r.setting},
                        {"target_ratio", r.target_ratio},
                        {"achieved_ratio", r.achieved_ratio},
                        {"achieved_ratio_with_exact_tokens", r.achieved_ratio_all},
                        {"score", r.score},
                        {"ci95", {r.ci_lo, r.ci_hi}},
                        {"n", r.n}};
    for (const auto& [k, v] : r.extra) j[k] = v;
    if (r.has_delta) j.update({{"delta_vs_none", r.delta}, {"delta_ci95", {r.delta_lo, r.delta_hi}}});
    j["scoring"] = r.exact_match ? "exact_match" : (r.likelihood ? "mean_with_likelihood" : "mean");
    nlohmann::json trials = nlohmann::json::array();
    for (const auto& t : r.trials) {
      nlohmann::json tj = {{"trial", t.trial}, {"score", t.score}, {"achieved_ratio", t.achieved_ratio},
                           {"achieved_ratio_with_exact_tokens", t.achieved_ratio_all}};
      if (r.likelihood) tj.update({{"nll", t.nll}, {"kl", t.kl}});
      trials.push_back(tj);
    }
    j["trials"] = trials;
    out.push_back(j);
  }
  return out;
}

// The rows of a `kvtc eval --json-out` file, with their trials.
Result<std::vector<engine::EvalRow>> rows_from_json(const nlohmann::json& doc) {
  std::vector<engine::EvalRow> rows;
  try {
    for (const auto& j : doc.at("results")) {
      engine::EvalRow r;
      r.task = j.at("task").get<std::string>();
      r.method = j.at("method").get<std::string>();
      r.setting = j.at("setting").get<std::string>();
      r.target_ratio = j.at("target_ratio").get<double>();
      const std::string scoring = j.at("scoring").get<std::string>();
      r.exact_match = scoring == "exact_match";
      r.likelihood = scoring == "mean_with_likelihood";
      for (const auto& t : j.at("trials")) {
        engine::TrialValue v;
        v.trial = t.at("trial").get<int64_t>();
        v.score = t.at("score").get<double>();
        v.achieved_ratio = t.at("achieved_ratio").get<double>();
        v.achieved_ratio_all = t.at("achieved_ratio_with_exact_tokens").get<double>();
        v.nll = t.value("nll", 0.0);
        v.kl = t.value("kl", 0.0);
        r.trials.push_back(v);
      }
      engine::summarize(&r);
      rows.push_back(std::move(r));
    }
    engine::add_paired_deltas(&rows);
  } catch (const nlohmann::json::exception& e) {
    return corrupt(std::string("not a kvtc eval report with trials: ") + e.what());
  }
  return rows;
}

// Accuracy against achieved ratio, one panel per task, drawn by gnuplot (pngcairo).
Status plot(const std::vector<engine::EvalRow>& rows, const std::string& path) {
  std::map<std::string, std::map<std::string, std::vector<const engine::EvalRow*>>> by_task;
  std::vector<std::string> order;
  for (const auto& r : rows) {
    if (!by_task.count(r.task)) order.push_back(r.task);
    by_task[r.task][r.method].push_back(&r);
  }
  const int cols = std::min<int>(3, int(order.size()));
  const int nrows = (int(order.size()) + cols - 1) / std::max(1, cols);
  std::string s = "set terminal pngcairo size " + std::to_string(480 * cols) + "," + std::to_string(360 * nrows) +
                  " font 'sans,9' noenhanced\nset output '" + path + "'\nset multiplot layout " + std::to_string(nrows) + "," +
                  std::to_string(cols) + "\nset logscale x 2\nset xlabel 'achieved ratio'\nset ylabel 'score'\n"
                  "set key outside right\nset grid\nset yrange [0:105]\n";
  for (const auto& task : order) {
    std::string cmds, data;
    double none = -1;
    for (const auto& [method, list] : by_task[task]) {
      if (method == "none") {
        none = list.front()->score;
        continue;
      }
      const std::string block = "$d_" + std::to_string(data.size());
      data += block + " << EOD\n";
      for (const auto* r : list) data += fmt("%g", r->achieved_ratio) + " " + fmt("%g", r->score) + "\n";
      data += "EOD\n";
      cmds += std::string(cmds.empty() ? "plot " : ", ") + block + " using 1:2 with linespoints title '" + method + "'";
    }
    if (cmds.empty()) continue;
    if (none >= 0) cmds += ", " + fmt("%g", none) + " with lines dashtype 2 lc rgb 'black' title 'none'";
    s += data + "set title '" + task + "'\n" + cmds + "\n";
  }
  s += "unset multiplot\n";
  FILE* p = ::popen("gnuplot 2>&1", "w");
  if (p == nullptr) return unsupported("plot: cannot run gnuplot (Debian package gnuplot-nox)");
  std::fwrite(s.data(), 1, s.size(), p);
  const int rc = ::pclose(p);
  if (rc != 0) return unsupported("plot: gnuplot failed (exit " + std::to_string(rc) + "); is gnuplot-nox installed?");
  return Status::ok();
}

// Writes the report: table or JSON on stdout, and the JSON file and plot where asked.
void report(const std::vector<engine::EvalRow>& rows, nlohmann::json doc, bool json, const std::string& json_out,
            const std::string& plot_out) {
  doc["results"] = to_json(rows);
  if (json) std::printf("%s\n", doc.dump(1).c_str());
  else print_table(rows);
  if (!json_out.empty()) {
    const std::string text = doc.dump(1) + "\n";
    check(write_file_atomic(json_out, reinterpret_cast<const uint8_t*>(text.data()), text.size()), json_out);
  }
  if (!plot_out.empty()) {
    check(plot(rows, plot_out), plot_out);
    if (!json) std::printf("wrote %s\n", plot_out.c_str());
  }
}

}  // namespace

void register_eval(CLI::App& app) {
  struct Args {
    std::string model, calibration, corpus, tasks = "passkey,multikey,fidelity,continuation",
                                            methods = "kvtc,kivi,int4,streamingllm,snapkv,svd", ratios = "8,16,20,32",
                                            lengths = "1024,2048,4096", depths = "0.1,0.3,0.5,0.7,0.9",
                                            keys = "50,150", contexts = "1024,2048,4096", domains = "prose,code";
    std::string json_out, plot_out;
    int trials = 20, sinks = 4, window = 128, threads = 0, workers = 0;
    int64_t first_trial = 0;
    int64_t continuation_context = 1024;
    uint64_t seed = 1;
    bool json = false;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("eval", "Accuracy of the model on compressed-and-restored caches, per task and method");
  cmd->add_option("--model", a->model, "Model: Hugging Face folder or .gguf file")->required()->check(CLI::ExistingPath);
  cmd->add_option("-c,--calibration", a->calibration, "Calibration file (.kvtcal) for method kvtc")
      ->check(CLI::ExistingFile);
  cmd->add_option("--corpus", a->corpus, "Folder with <domain>.test.txt.xz (default: ../../corpus from the model)");
  cmd->add_option("--tasks", a->tasks, "passkey, multikey, fidelity, continuation")->capture_default_str();
  std::string all_methods;
  for (const auto& m : engine::method_names()) all_methods += (all_methods.empty() ? "" : ", ") + m;
  cmd->add_option("--methods", a->methods, "Methods (none is always included): " + all_methods)->capture_default_str();
  cmd->add_option("--ratios", a->ratios, "Target ratios (over the compressed tokens)")->capture_default_str();
  cmd->add_option("--trials", a->trials, "Trials per task cell")->capture_default_str();
  cmd->add_option("--seed", a->seed, "Seed of every trial's prompt")->capture_default_str();
  cmd->add_option("--first-trial", a->first_trial, "Index of the first trial (runs to pool with eval-merge)")
      ->capture_default_str();
  cmd->add_option("--passkey-lengths", a->lengths, "Passkey prompt lengths (tokens)")->capture_default_str();
  cmd->add_option("--depths", a->depths, "Passkey depths, cycled over trials")->capture_default_str();
  cmd->add_option("--keys", a->keys, "Multi-key list sizes")->capture_default_str();
  cmd->add_option("--contexts", a->contexts, "Fidelity context lengths (tokens)")->capture_default_str();
  cmd->add_option("--domains", a->domains, "Corpus domains for fidelity and continuation")->capture_default_str();
  cmd->add_option("--continuation-context", a->continuation_context, "Context before the greedy continuation")
      ->capture_default_str();
  cmd->add_option("--sinks", a->sinks, "Exact first tokens for the baselines (kvtc: the calibration's)")
      ->capture_default_str();
  cmd->add_option("--window", a->window, "Exact newest tokens for the baselines (kvtc: the calibration's)")
      ->capture_default_str();
  cmd->add_option("-j,--threads", a->threads, "Codec threads when trials run one at a time (0: all cores)")
      ->capture_default_str();
  cmd->add_option("-w,--workers", a->workers, "Trials run at once, one core each (0: one per core)")
      ->capture_default_str();
  cmd->add_flag("--json", a->json, "Print one JSON object instead of the table");
  cmd->add_option("--json-out", a->json_out, "Also write the JSON object to this file");
  cmd->add_option("--plot", a->plot_out, "Write a PNG of score against achieved ratio per task (gnuplot)");
  cmd->callback([a] {
#if defined(__GLIBC__)
    // Trials copy and free caches of megabytes: keep freed memory in the heap rather than handing it
    // back to the kernel and faulting it in again, which parallel workers would queue on.
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
    engine::Model model = unwrap(engine::Model::load(a->model), a->model);
    engine::Tokenizer tok = unwrap(engine::Tokenizer::load_for_model(a->model), a->model);
    std::optional<Calibration> cal;
    if (!a->calibration.empty()) cal = unwrap(Calibration::load(a->calibration), a->calibration);
    engine::EvalOptions o;
    o.tasks = split_list(a->tasks);
    o.methods = split_list(a->methods);
    o.ratios = parse_number_list(a->ratios);
    o.passkey_lengths = numbers<int64_t>(a->lengths);
    o.passkey_depths = parse_number_list(a->depths);
    o.multikey_counts = numbers<int>(a->keys);
    o.fidelity_contexts = numbers<int64_t>(a->contexts);
    o.domains = split_list(a->domains);
    o.continuation_context = a->continuation_context;
    o.trials = a->trials;
    o.workers = a->workers;
    o.first_trial = a->first_trial;
    o.seed = a->seed;
    o.corpus_dir = a->corpus;
    if (o.corpus_dir.empty()) {
      const auto guess = std::filesystem::path(a->model) / ".." / ".." / "corpus";
      if (std::filesystem::exists(guess / "prose.test.txt.xz")) o.corpus_dir = guess.lexically_normal().string();
    }
    o.method_config.n_sink_tokens = a->sinks;
    o.method_config.n_window_tokens = a->window;
    o.method_config.n_threads = a->threads;
    o.method_config.calibration = cal ? &*cal : nullptr;
    o.progress = progress_bar();
    std::vector<engine::EvalRow> rows = unwrap(engine::run_eval(model, tok, o), "eval");
    progress_done();
    nlohmann::json methods = nlohmann::json::object();
    for (const auto& name : o.methods) {
      auto m = engine::make_method(name, o.method_config);
      if (m.is_ok()) methods[name] = (*m)->reference();
    }
    char fingerprint[17] = "";  // as `kvtc inspect` prints it
    if (cal)
      std::snprintf(fingerprint, sizeof fingerprint, "%016llx", static_cast<unsigned long long>(cal->fingerprint()));
    nlohmann::json doc = {{"model", model.config().name},
                          {"calibration", a->calibration},
                          {"calibration_fingerprint", cal ? nlohmann::json(fingerprint) : nlohmann::json()},
                          {"trials", a->trials},
                          {"first_trial", a->first_trial},
                          {"seed", a->seed},
                          {"ratio_note", "achieved_ratio: raw 16-bit bytes of the compressed tokens / bytes stored for "
                                         "them; achieved_ratio_with_exact_tokens counts the exact sinks and window too"},
                          {"methods", methods}};
    report(rows, doc, a->json, a->json_out, a->plot_out);
  });
}

void register_eval_merge(CLI::App& app) {
  struct Args {
    std::vector<std::string> inputs;
    std::string json_out, plot_out;
    bool json = false;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("eval-merge", "Pool `kvtc eval` reports of the same seed over different trials");
  cmd->add_option("inputs", a->inputs, "Reports written by kvtc eval --json-out (runs with different --first-trial)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_flag("--json", a->json, "Print one JSON object instead of the table");
  cmd->add_option("--json-out", a->json_out, "Also write the pooled JSON object to this file");
  cmd->add_option("--plot", a->plot_out, "Write a PNG of score against achieved ratio per task (gnuplot)");
  cmd->callback([a] {
    nlohmann::json first;
    std::vector<engine::EvalRow> rows;
    int64_t trials = 0;
    for (const auto& path : a->inputs) {
      const auto bytes = unwrap(read_file(path), path);
      nlohmann::json doc = nlohmann::json::parse(bytes.begin(), bytes.end(), nullptr, false);
      if (doc.is_discarded() || !doc.is_object()) check(corrupt("not JSON"), path);
      if (first.is_null()) first = doc;
      // The calibration is known by its fingerprint where both runs record it (the same file may lie
      // at different paths on different machines), else by its path.
      const bool by_fingerprint =
          !doc.value("calibration_fingerprint", nlohmann::json()).is_null() &&
          !first.value("calibration_fingerprint", nlohmann::json()).is_null();
      for (const char* key : {"model", "seed", by_fingerprint ? "calibration_fingerprint" : "calibration"})
        if (doc.value(key, nlohmann::json()) != first.value(key, nlohmann::json()))
          check(invalid_argument(std::string("\"") + key + "\" differs from " + a->inputs[0] + "'s"), path);
      check(engine::merge_rows(&rows, unwrap(rows_from_json(doc), path)), path);
      trials += doc.value("trials", int64_t(0));
    }
    first["trials"] = trials;
    first.erase("first_trial");
    first["merged_from"] = a->inputs;
    report(rows, first, a->json, a->json_out, a->plot_out);
  });
}

}  // namespace kvtc::cli
