// kvtc inspect FILE [--json]
#include <cstdio>
#include <nlohmann/json.hpp>

#include "common.hpp"

namespace kvtc::cli {

namespace {

void print_human(const nlohmann::json& j) {
  const auto& s = j["shape"];
  std::printf("%s, %s bytes\n", j["type"].get<std::string>().c_str(), j["file_bytes"].dump().c_str());
  std::printf("  shape: %d layers x %d kv heads x %d = p %lld, rope %s theta %g\n", s["n_layers"].get<int>(),
              s["n_kv_heads"].get<int>(), s["head_dim"].get<int>(), s["n_features"].get<long long>(),
              s["rope_style"].get<std::string>().c_str(), s["rope_theta"].get<double>());
  auto print_groups = [](const nlohmann::json& groups) {
    std::string line;
    for (const auto& g : groups) {
      if (g["kind"] == "dropped") continue;
      line += " [" + g["first"].dump() + "+" + g["n"].dump() + " " + g["kind"].get<std::string>() +
              (g["kind"] == "fp16" ? "" : std::to_string(g["width_bits"].get<int>())) + "]";
    }
    std::printf("      groups:%s\n", line.c_str());
  };
  if (j["type"] == "container") {
    std::printf("  tokens %s (exact: first %s, last %s), dtype %s, target %gx, calibration %s\n",
                j["n_tokens"].dump().c_str(), j["n_head_exact"].dump().c_str(), j["n_tail_exact"].dump().c_str(),
                j["dtype"].get<std::string>().c_str(), j["target_ratio"].get<double>(),
                j["calibration_fingerprint"].get<std::string>().c_str());
    for (const char* st : {"K", "V"}) {
      const auto& a = j["streams"][st];
      if (a.value("quantiser", "groups") == "ecsq") {
        // ECSQ streams have no fixed bits per token: the level and model say how they were coded.
        std::printf("  %s: ECSQ level %s%s, %s kept components of rank %s, model %s\n", st,
                    a["ecsq_level"].dump().c_str(),
                    a.contains("ecsq_level_high") ? (" (high-rate tokens " + a["ecsq_level_high"].dump() + ")").c_str() : "",
                    a["ecsq_n_kept"].dump().c_str(), a["basis_rank"].dump().c_str(),
                    a["ecsq_fingerprint"].get<std::string>().c_str());
        continue;
      }
      std::printf("  %s: %s%s kept components of rank %s, %s bits/token\n", st,
                  a.contains("quantiser") ? "groups, " : "", a["kept_components"].dump().c_str(),
                  a["basis_rank"].dump().c_str(), a["bits_per_token"].dump().c_str());
      print_groups(a["groups"]);
    }
    const auto& sm = j["summary"];
    std::printf("  %s chunks (%s with bad checksum): coefficients %s bytes, exact %s bytes\n",
                sm["n_chunks"].dump().c_str(), sm["chunks_with_bad_checksum"].dump().c_str(),
                sm["coefficient_bytes"].dump().c_str(), sm["exact_bytes"].dump().c_str());
    if (j["format_version"].get<int>() < 3)
      std::printf("  ratio: compressed tokens %.2fx (nominal %.2fx, DEFLATE gain %.3fx), whole file %.2fx\n",
                  sm["ratio_compressed_tokens"].get<double>(), sm["ratio_nominal"].get<double>(),
                  sm["deflate_gain"].get<double>(), sm["ratio_file"].get<double>());
    else  // format 3: ECSQ streams have no fixed-width size to compare with
      std::printf("  ratio: compressed tokens %.2fx, whole file %.2fx\n", sm["ratio_compressed_tokens"].get<double>(),
                  sm["ratio_file"].get<double>());
    // Format 3 adds each chunk's coder (deflate or rans); earlier formats print as they always did.
    const bool coders = j["format_version"].get<int>() >= 3;
    auto coder_column = [&](const std::string& text) {
      char buf[16] = "";
      if (coders) std::snprintf(buf, sizeof buf, " %7s", text.c_str());
      return std::string(buf);
    };
    std::printf("  %5s %6s %2s %8s%s %8s %7s %7s %9s %9s %8s %s\n", "chunk", "kind", "s", "layout",
                coder_column("coder").c_str(), "tokens", "n", "items", "stored", "raw", "crc32", "ok");
    int i = 0;
    for (const auto& c : j["chunks"])
      std::printf("  %5d %6s %2s %8s%s %8s %7s %7s %9s %9s %8s %s\n", i++, c["kind"].get<std::string>().c_str(),
                  c["stream"].get<std::string>().c_str(), c["layout"].get<std::string>().c_str(),
                  coder_column(c.value("coder", "")).c_str(), c["token_begin"].dump().c_str(), c["n_tokens"].dump().c_str(), c["n_items"].dump().c_str(),
                  c["stored_bytes"].dump().c_str(), c["raw_bytes"].dump().c_str(),
                  c["crc32"].get<std::string>().c_str(), c["checksum_ok"].get<bool>() ? "yes" : "NO");
  } else {
    std::printf("  model %s, fingerprint %s, %s calibration tokens, exact sinks %s / window %s\n",
                j["model"].get<std::string>().c_str(), j["fingerprint"].get<std::string>().c_str(),
                j["n_calibration_tokens"].dump().c_str(), j["n_sink_tokens"].dump().c_str(),
                j["n_window_tokens"].dump().c_str());
    for (const char* st : {"K", "V"}) {
      const auto& sj = j[st];
      std::printf("  %s: rank %s, total variance %.4g\n", st, sj["rank"].dump().c_str(),
                  sj["total_variance"].get<double>());
      if (sj.contains("ecsq"))
        std::printf("    ECSQ model (codec 3): %s levels over %s components, fingerprint %s\n",
                    sj["ecsq"]["levels"].dump().c_str(), sj["ecsq"]["n_components"].dump().c_str(),
                    sj["ecsq"]["fingerprint"].get<std::string>().c_str());
      for (const auto& a : sj["allocations"]) {
        std::printf("    ratio %gx: %s/%s bits/token, %s kept components, predicted relative error %.3f%%\n",
                    a["target_ratio"].get<double>(), a["bits_per_token"].dump().c_str(),
                    a["budget_bits_per_token"].dump().c_str(), a["kept_components"].dump().c_str(),
                    100 * a["predicted_relative_error"].get<double>());
        print_groups(a["groups"]);
      }
    }
  }
}

}  // namespace

void register_inspect(CLI::App& app) {
  struct Args {
    std::string input;
    bool json = false;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("inspect", "Show everything a container or calibration file holds");
  cmd->add_option("file", args->input, "A .kvtc container or .kvtcal calibration")->required()->check(CLI::ExistingFile);
  cmd->add_flag("--json", args->json, "Print JSON");
  cmd->callback([args] {
    std::vector<uint8_t> bytes = unwrap(read_bytes(args->input), args->input);
    std::string text = unwrap(inspect_json(bytes.data(), bytes.size()), args->input);
    if (args->json) {
      std::printf("%s\n", text.c_str());
    } else {
      print_human(nlohmann::json::parse(text));
    }
  });
}

}  // namespace kvtc::cli
