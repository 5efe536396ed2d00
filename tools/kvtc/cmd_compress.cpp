// kvtc compress -c MODEL.kvtcal -r 20 -o OUT.kvtc IN.safetensors [--codec 2|3] [--adaptive] [--json] [--device cpu|cuda]
#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "common.hpp"
#ifdef KVTC_WITH_CUDA
#include "kvtc/kvtc_cuda.hpp"
#endif

namespace kvtc::cli {

namespace {

nlohmann::json report_json(const EncodeReport& r, double target) {
  nlohmann::json layers = nlohmann::json::array();
  for (size_t l = 0; l < r.layers.size(); ++l) {
    const LayerError& e = r.layers[l];
    nlohmann::json j = {{"layer", l}, {"k_relative_mse", e.k_relative_mse}, {"v_relative_mse", e.v_relative_mse},
                        {"k_cosine", e.k_cosine}, {"v_cosine", e.v_cosine}};
    if (e.attention_relative_error >= 0) j["attention_relative_error"] = e.attention_relative_error;
    layers.push_back(j);
  }
  nlohmann::json j = {{"target_ratio", target}, {"n_tokens", r.n_tokens}, {"n_compressed_tokens", r.n_compressed_tokens},
          {"n_exact_tokens", r.n_exact_tokens}, {"raw_bytes", r.raw_bytes}, {"file_bytes", r.file_bytes},
          {"compressed_payload_bytes", r.compressed_payload_bytes}, {"nominal_payload_bytes", r.nominal_payload_bytes},
          {"ratio_compressed_tokens", r.ratio_compressed_tokens}, {"ratio_nominal", r.ratio_nominal},
          {"ratio_file", r.ratio_file}, {"deflate_gain", r.deflate_gain}, {"bytes_per_token", r.bytes_per_token},
          {"k_relative_mse", r.k_relative_mse}, {"v_relative_mse", r.v_relative_mse}, {"layers", layers},
          {"seconds", r.seconds}, {"codec", r.codec}};
  if (r.codec == 3) j["ecsq_level"] = {{"K", r.ecsq_level[0]}, {"V", r.ecsq_level[1]}};
  if (r.n_high_rate_tokens > 0) {
    j["ecsq_level_high"] = {{"K", r.ecsq_level_high[0]}, {"V", r.ecsq_level_high[1]}};
    j["n_high_rate_tokens"] = r.n_high_rate_tokens;
  }
  return j;
}

void print_report(const EncodeReport& r, double target, const std::string& out) {
  std::printf("%s: %lld tokens (%lld compressed, %lld exact), %lld -> %lld bytes\n", out.c_str(),
              static_cast<long long>(r.n_tokens), static_cast<long long>(r.n_compressed_tokens),
              static_cast<long long>(r.n_exact_tokens), static_cast<long long>(r.raw_bytes),
              static_cast<long long>(r.file_bytes));
  if (r.codec == 3) {
    // Codec 3 has no fixed-width size before entropy coding: the target bounds the stored bytes.
    std::printf("  codec 3 (ECSQ + rANS), levels K %d V %d\n", r.ecsq_level[0], r.ecsq_level[1]);
    if (r.n_high_rate_tokens > 0)
      std::printf("  token-adaptive rate: %lld tokens at levels K %d V %d\n", static_cast<long long>(r.n_high_rate_tokens),
                  r.ecsq_level_high[0], r.ecsq_level_high[1]);
    std::printf("  target %gx: compressed tokens %.2fx, whole file %.2fx, %.1f bytes/token\n", target,
                r.ratio_compressed_tokens, r.ratio_file, r.bytes_per_token);
  } else {
    std::printf("  target %gx: compressed tokens %.2fx (%.2fx before DEFLATE, DEFLATE gain %.3fx), whole file %.2fx, "
                "%.1f bytes/token\n",
                target, r.ratio_compressed_tokens, r.ratio_nominal, r.deflate_gain, r.ratio_file, r.bytes_per_token);
  }
  if (r.layers.empty()) return;
  std::printf("  relative MSE: K %.3f%%  V %.3f%%\n", 100 * r.k_relative_mse, 100 * r.v_relative_mse);
  std::printf("  %5s %9s %9s %9s %9s %10s\n", "layer", "K rMSE%", "V rMSE%", "K cos", "V cos", "attn err%");
  for (size_t l = 0; l < r.layers.size(); ++l) {
    const LayerError& e = r.layers[l];
    std::printf("  %5zu %9.3f %9.3f %9.5f %9.5f", l, 100 * e.k_relative_mse, 100 * e.v_relative_mse, e.k_cosine,
                e.v_cosine);
    if (e.attention_relative_error >= 0) std::printf(" %10.4f", 100 * e.attention_relative_error);
    std::printf("\n");
  }
}

}  // namespace

void register_compress(CLI::App& app) {
  struct Args {
    std::string cal, out, input, device = "cpu";
    double ratio = 20;
    int level = 6, threads = 0, chunk_tokens = 256, codec = 2, rans_lanes = 32;
    int64_t chunk_bytes = 16 * 1024;
    bool json = false, no_error = false, tf32 = false, adaptive = false;
    double high_fraction = 0.25;
    int high_levels = 32;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("compress", "Compress a cache file into a .kvtc container");
  cmd->add_option("input", args->input, "Cache file (safetensors)")->required()->check(CLI::ExistingFile);
  cmd->add_option("-c,--calibration", args->cal, "Calibration file (.kvtcal)")->required()->check(CLI::ExistingFile);
  cmd->add_option("-r,--ratio", args->ratio, "Target compression ratio (before entropy coding)")->capture_default_str();
  cmd->add_option("-o,--output", args->out, "Container to write (.kvtc)")->required();
  // Values are checked by the library (encode), so the CLI, C API and Python refuse the same ones.
  cmd->add_option("--codec", args->codec,
                  "2: fixed-width groups + DEFLATE (format 2); 3: ECSQ + rANS (format 3, encoded on the CPU; needs a "
                  "calibration with ECSQ models)")
      ->capture_default_str();
  cmd->add_option("--rans-lanes", args->rans_lanes, "Codec 3: interleaved rANS states per chunk, 1..64")
      ->capture_default_str();
  cmd->add_flag("--adaptive", args->adaptive,
                "Codec 3: token-adaptive rate (format 4): the tokens the cache's last queries attend to most (SnapKV's "
                "score; needs the q tensors that `kvtc dump` writes) get a finer level, the rest what is left");
  cmd->add_option("--high-fraction", args->high_fraction, "With --adaptive: share of the compressed tokens favoured")
      ->capture_default_str();
  cmd->add_option("--high-levels", args->high_levels, "With --adaptive: how many levels finer (32: about 2x the bits)")
      ->capture_default_str();
  cmd->add_option("--level", args->level, "DEFLATE level 1..12 (codec 2)")->capture_default_str();
  cmd->add_option("--chunk-tokens", args->chunk_tokens, "Tokens per chunk")->capture_default_str();
  cmd->add_option("--chunk-bytes", args->chunk_bytes, "Largest chunk before DEFLATE, in bytes")->capture_default_str();
  cmd->add_option("-j,--threads", args->threads, "Worker threads (0: all cores)")->capture_default_str();
  cmd->add_option("--device", args->device, "cpu, or cuda (compress on the GPU)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  cmd->add_flag("--json", args->json, "Print the report as JSON");
  cmd->add_flag("--no-error", args->no_error, "Skip measuring the restoration error");
  cmd->add_flag("--tf32", args->tf32, "With --device cuda: project on TF32 tensor cores (faster; codes may differ from the CPU's by a level)");
  cmd->callback([args] {
#ifndef KVTC_WITH_CUDA
    if (args->device == "cuda")
      fail(unsupported("this kvtc was built without the CUDA backend"), "compress --device cuda");
#endif
    if (args->tf32 && args->device != "cuda") fail(invalid_argument("--tf32 needs --device cuda"), "compress --tf32");
    Calibration cal = unwrap(Calibration::load(args->cal), args->cal);
    KVCache cache = unwrap(read_cache(args->input), args->input);
    EncodeOptions o;
    o.codec = args->codec;
    o.rans_lanes = args->rans_lanes;
    o.target_ratio = args->ratio;
    o.deflate_level = args->level;
    o.chunk_tokens = args->chunk_tokens;
    o.chunk_max_bytes = args->chunk_bytes;
    o.n_threads = args->threads;
    o.measure_error = !args->no_error;
    o.progress = progress_bar();
    if (args->adaptive) {
      const int64_t begin = std::min<int64_t>(cal.n_sink_tokens(), cache.n_tokens);
      const int64_t end = std::max<int64_t>(begin, cache.n_tokens - cal.n_window_tokens());
      o.token_importance = unwrap(attention_importance(cache, begin, end), args->input);
      o.high_rate_fraction = args->high_fraction;
      o.high_rate_levels = args->high_levels;
    }
#ifdef KVTC_WITH_CUDA
    EncodedCache enc =
        unwrap(args->device == "cuda"
                   ? cuda::encode_on_gpu(cal, cache, o, args->tf32 ? cuda::EncodeProjection::kTf32 : cuda::EncodeProjection::kFp32)
                   : encode(cal, cache, o),
               args->input);
#else
    EncodedCache enc = unwrap(encode(cal, cache, o), args->input);
#endif
    progress_done();
    check(write_bytes_atomic(args->out, enc.bytes), args->out);
    if (args->json) {
      auto j = report_json(enc.report, args->ratio);
      j["input"] = args->input;
      j["output"] = args->out;
      std::printf("%s\n", j.dump(2).c_str());
    } else {
      print_report(enc.report, args->ratio, args->out);
    }
  });
}

}  // namespace kvtc::cli
