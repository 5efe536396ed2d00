// kvtc bench --device cuda|cpu -c MODEL.kvtcal IN.kvtc [--repeat N] [--batch B] [--fp32 | --fp8
//            [--fp8-fast-accum]] [--overlap-exact] [--layers-per-gemm G]
//
// Times restoring a compressed cache: on the GPU, decode (entropy decode + dequantise, B copies of the
// container in one batch) and reconstruction of every layer into device memory, in bf16 (default), fp32,
// or bf16 output reconstructed on FP8 tensor cores (--fp8: Hopper or newer), with the batch API's
// options (BatchDecodeOptions); on the CPU, the library's Decoder and a restore_layer loop. Prints one
// JSON object.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "common.hpp"
#ifdef KVTC_WITH_CUDA
#include "kvtc/kvtc_cuda.hpp"
#endif

namespace kvtc::cli {

void register_bench(CLI::App& app) {
  struct Args {
    std::string cal, input, device = "cuda";
    int repeat = 5, batch = 1, threads = 0, layers_per_gemm = 1;
    bool fp32 = false, fp8 = false, fp8_fast_accum = false, overlap_exact = false;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("bench", "Time restoring a .kvtc container (GPU or CPU)");
  cmd->add_option("input", args->input, "Container (.kvtc)")->required()->check(CLI::ExistingFile);
  cmd->add_option("-c,--calibration", args->cal, "Calibration file the container was made with")->required()->check(CLI::ExistingFile);
  cmd->add_option("--device", args->device, "cuda or cpu")->check(CLI::IsMember({"cuda", "cpu"}))->capture_default_str();
  cmd->add_option("--repeat", args->repeat, "Timed repetitions (after one warm-up)")->check(CLI::Range(1, 1000))->capture_default_str();
  cmd->add_option("--batch", args->batch, "GPU: copies of the container decoded together")->check(CLI::Range(1, 1024))->capture_default_str();
  auto* fp32 = cmd->add_flag("--fp32", args->fp32, "GPU: fp32 reconstruction instead of bf16");
  auto* fp8 = cmd->add_flag("--fp8", args->fp8, "GPU: reconstruct on FP8 (E4M3) tensor cores, bf16 output (compute capability 8.9+)")
                  ->excludes(fp32);
  cmd->add_flag("--fp8-fast-accum", args->fp8_fast_accum,
                "GPU, with --fp8: cuBLASLt's fast accumulation (faster GEMMs, more rounding error)")
      ->needs(fp8);
  cmd->add_flag("--overlap-exact", args->overlap_exact, "GPU: inflate exact-token chunks on a second stream");
  cmd->add_option("--layers-per-gemm", args->layers_per_gemm,
                  "GPU, bf16 and FP8: consecutive layers reconstructed by one GEMM per stream")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  cmd->add_option("-j,--threads", args->threads, "CPU: worker threads (0: all cores)")->capture_default_str();
  cmd->callback([args] {
    Calibration cal = unwrap(Calibration::load(args->cal), args->cal);
    std::vector<uint8_t> bytes = unwrap(read_bytes(args->input), args->input);
    if (args->device == "cpu") {
      using Clock = std::chrono::steady_clock;
      std::vector<double> open_s, restore_s;
      for (int rep = 0; rep <= args->repeat; ++rep) {
        DecodeOptions o;
        o.n_threads = args->threads;
        const auto t0 = Clock::now();
        Decoder dec = unwrap(Decoder::open(cal, bytes.data(), bytes.size(), o), args->input);
        const auto t1 = Clock::now();
        std::vector<float> k, v;
        for (int l = 0; l < dec.skeleton().shape.n_layers; ++l) check(dec.restore_layer(l, &k, &v));
        const auto t2 = Clock::now();
        if (rep == 0) continue;
        open_s.push_back(std::chrono::duration<double>(t1 - t0).count());
        restore_s.push_back(std::chrono::duration<double>(t2 - t1).count());
      }
      std::sort(open_s.begin(), open_s.end());
      std::sort(restore_s.begin(), restore_s.end());
      std::printf("{\"device\":\"cpu\",\"repeat\":%d,\"file_bytes\":%zu,\"decode_s\":%.6f,\"restore_s\":%.6f}\n",
                  args->repeat, bytes.size(), open_s[open_s.size() / 2], restore_s[restore_s.size() / 2]);
      return;
    }
#ifdef KVTC_WITH_CUDA
    cuda::DeviceCalibration::Options dopt;
    dopt.fp32 = args->fp32;
    dopt.bf16 = !args->fp32;
    dopt.fp8 = args->fp8;
    cuda::DeviceCalibration dcal = unwrap(cuda::DeviceCalibration::upload(cal, dopt, nullptr), "uploading the calibration");
    std::vector<cuda::ContainerView> views(size_t(args->batch), {bytes.data(), bytes.size()});
    cuda::BatchDecodeOptions bo;
    bo.keep_fp32 = args->fp32;
    bo.keep_bf16 = !args->fp32;
    bo.overlap_exact = args->overlap_exact;
    bo.fp8_reconstruction = args->fp8;
    bo.fp8_fast_accum = args->fp8_fast_accum;
    bo.layers_per_gemm = args->layers_per_gemm;
    const cuda::ElementType type = args->fp32 ? cuda::ElementType::kF32 : cuda::ElementType::kBF16;
    const cuda::RestoreTiming t = unwrap(cuda::time_restore(dcal, views, args->repeat, type, bo), args->input);
    std::printf(
        "{\"device\":\"cuda\",\"precision\":\"%s\",\"fp8_fast_accum\":%s,\"layers_per_gemm\":%d,"
        "\"overlap_exact\":%s,\"repeat\":%d,\"batch\":%d,\"raw_bytes\":%.0f,\"file_bytes\":%.0f,"
        "\"decode_wall_s\":%.6f,\"host_s\":%.6f,"
        "\"upload_s\":%.6f,\"inflate_s\":%.6f,\"dequantize_s\":%.6f,\"e4m3_copy_s\":%.6f,\"exact_s\":%.6f,"
        "\"restore_s\":%.6f,\"first_layer_s\":%.6f,\"total_wall_s\":%.6f,\"restore_GBps\":%.1f}\n",
        args->fp32 ? "fp32" : args->fp8 ? "fp8" : "bf16", args->fp8_fast_accum ? "true" : "false", args->layers_per_gemm,
        args->overlap_exact ? "true" : "false", t.repeat, args->batch, t.raw_bytes, t.file_bytes, t.decode_wall_s,
        t.host_s, t.upload_s, t.inflate_s, t.dequantize_s, t.fp8_s, t.exact_s, t.restore_s, t.first_layer_s,
        t.total_wall_s, t.raw_bytes / t.total_wall_s * 1e-9);
#else
    fail(unsupported("this kvtc was built without the CUDA backend (configure with -DKVTC_CUDA=ON)"), "bench --device cuda");
#endif
  });
}

}  // namespace kvtc::cli
