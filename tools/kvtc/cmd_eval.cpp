// kvtc eval --model DIR -c MODEL.kvtcal --tasks passkey,multikey,fidelity,continuation
//           --methods kvtc,kivi,snapkv,... --ratios 8,16,20,32 [--trials N] [--json] [--plot FILE.png]
// What compressing the cache does to the model's answers (engine/eval_tasks.hpp has the tasks).
#include <cstdio>
#include <filesystem>
#include <map>
#include <optional>
#include <sstream>

#include <nlohmann/json.hpp>

#include "common.hpp"
#include "engine/eval_tasks.hpp"
#include "engine/model.hpp"
#include "engine/tokenizer.hpp"
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
  std::printf("%-20s %-13s %-22s %7s %9s %9s %7s %15s %5s  %s\n", "task", "method", "setting", "target", "achieved",
              "with-exact", "score", "95% CI", "n", "ppl / KL");
  std::string last;
  for (const auto& r : rows) {
    if (r.task != last && !last.empty()) std::printf("\n");
    last = r.task;
    std::string extra;
    if (r.extra.count("ppl")) extra = fmt("%.3f", r.extra.at("ppl")) + " / " + fmt("%.4f", r.extra.at("kl"));
    std::printf("%-20s %-13s %-22s %7s %9s %9s %7.1f %15s %5lld  %s\n", r.task.c_str(), r.method.c_str(),
                r.setting.substr(0, 22).c_str(), r.method == "none" ? "-" : fmt("%.0fx", r.target_ratio).c_str(),
                fmt("%.2fx", r.achieved_ratio).c_str(), fmt("%.2fx", r.achieved_ratio_all).c_str(), r.score,
                ("[" + fmt("%.1f", r.ci_lo) + ", " + fmt("%.1f", r.ci_hi) + "]").c_str(), static_cast<long long>(r.n),
                extra.c_str());
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
    out.push_back(j);
  }
  return out;
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

}  // namespace

void register_eval(CLI::App& app) {
  struct Args {
    std::string model, calibration, corpus, tasks = "passkey,multikey,fidelity,continuation",
                                            methods = "kvtc,kivi,int4,streamingllm,snapkv,svd", ratios = "8,16,20,32",
                                            lengths = "1024,2048,4096", depths = "0.1,0.3,0.5,0.7,0.9",
                                            keys = "50,150", contexts = "1024,2048,4096", domains = "prose,code";
    std::string json_out, plot_out;
    int trials = 20, sinks = 4, window = 128, threads = 0, workers = 0;
    int64_t continuation_context = 1024;
    uint64_t seed = 1;
    bool json = false;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("eval", "Accuracy of the model on compressed-and-restored caches, per task and method");
  cmd->add_option("--model", a->model, "Hugging Face model folder")->required()->check(CLI::ExistingDirectory);
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
    engine::Model model = unwrap(engine::Model::load(a->model), a->model);
    engine::Tokenizer tok = unwrap(engine::Tokenizer::load(a->model + "/tokenizer.json"), a->model);
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
    nlohmann::json doc = {{"model", model.config().name},
                          {"calibration", a->calibration},
                          {"trials", a->trials},
                          {"seed", a->seed},
                          {"ratio_note", "achieved_ratio: raw 16-bit bytes of the compressed tokens / bytes stored for "
                                         "them; achieved_ratio_with_exact_tokens counts the exact sinks and window too"},
                          {"methods", methods},
                          {"results", to_json(rows)}};
    if (a->json) std::printf("%s\n", doc.dump(1).c_str());
    else print_table(rows);
    if (!a->json_out.empty()) {
      const std::string text = doc.dump(1) + "\n";
      check(write_file_atomic(a->json_out, reinterpret_cast<const uint8_t*>(text.data()), text.size()), a->json_out);
    }
    if (!a->plot_out.empty()) {
      check(plot(rows, a->plot_out), a->plot_out);
      if (!a->json) std::printf("wrote %s\n", a->plot_out.c_str());
    }
  });
}

}  // namespace kvtc::cli
