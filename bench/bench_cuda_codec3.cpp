// Codec 3's entropy stage on the GPU: the fused rANS decode + dequantise kernel (src/cuda/ecsq_decode.cu)
// on real codes, against codec 2's inflate + dequantise on the same caches and the CPU decoder in the
// same run. Calibrates from real caches (ECSQ models included), encodes each test cache with codec 2
// and codec 3 on the CPU, then decodes `copies` copies of each container in one GPU batch (real codes,
// enough chunks to fill the device), checking the coefficients against the CPU decoder's first.
//
//   kvtc_bench_cuda_codec3 CAL1[,CAL2...] TEST1[,TEST2...] [ratios, default 8,16,32] [copies, default 64] [reps, default 7]
//
// One JSON object per (test cache, ratio, codec, and codec 3 with token classes where the cache has
// queries to score tokens with) on stdout, and for codec 3 one more with the GPU rANS encoder
// (src/cuda/rans_encode.cu) re-encoding the same chunks' symbols: compressed codes bytes, symbols, GPU
// entropy-stage seconds (median of reps) and GB/s of stored codes in, CPU decode seconds (all cores),
// and the bf16 restore of one decoded container's layers (reconstruction GEMMs and epilogues).
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "core/backend.hpp"
#include "core/ecsq_inspect.hpp"
#include "cuda/rans_batch_encoder.hpp"
#include "entropy/rans_encode.hpp"
#include "cuda/gpu_decoder.hpp"
#include "format/container.hpp"
#include "kvtc/kvtc.hpp"
#include "util/half.hpp"

namespace kvtc {
namespace {

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

int fail(const Status& s, const char* what) {
  std::fprintf(stderr, "%s: %s\n", what, s.to_string().c_str());
  return 1;
}

int run(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s CAL1[,CAL2...] TEST1[,TEST2...] [ratios] [copies] [reps]\n", argv[0]);
    return 2;
  }
  const std::vector<std::string> cal_paths = split(argv[1]), test_paths = split(argv[2]);
  std::vector<double> ratios;
  for (const std::string& r : split(argc > 3 ? argv[3] : "8,16,32")) ratios.push_back(std::stod(r));
  const int copies = argc > 4 ? std::stoi(argv[4]) : 64, reps = argc > 5 ? std::stoi(argv[5]) : 7;

  CalibrateOptions co;
  co.ratios = ratios;
  const auto t0 = std::chrono::steady_clock::now();
  auto cal = calibrate(cal_paths, co);
  if (!cal.is_ok()) return fail(cal.status(), "calibrate");
  const CalibrationData& cd = cal->data();
  std::fprintf(stderr, "calibrated in %.1f s (p = %lld)\n",
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
               static_cast<long long>(cd.shape.n_features()));

  cudaStream_t stream;
  cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
  cuda::GpuCalibration gcal;
  if (Status s = gcal.upload(cd, false, true, -1, stream); !s.is_ok()) return fail(s, "upload");
  cuda::GpuBatchDecoder dec;
  auto cpu = make_cpu_backend();

  for (const std::string& path : test_paths) {
    auto cache = read_cache(path);
    if (!cache.is_ok()) return fail(cache.status(), path.c_str());
    // Format 4 (codec 3 with token classes) where the cache has queries to score its tokens with.
    std::vector<float> importance;
    if (cache->n_query > 0) {
      const int64_t a = std::min<int64_t>(cd.n_sink_tokens, cache->n_tokens);
      auto imp = attention_importance(*cache, a, std::max<int64_t>(a, cache->n_tokens - cd.n_window_tokens));
      if (!imp.is_ok()) return fail(imp.status(), "importance");
      importance = std::move(imp).value();
    }
    for (double ratio : ratios)
      for (int variant : {2, 3, 4}) {
        if (variant == 4 && importance.empty()) continue;
        const int codec = variant == 4 ? 3 : variant;
        EncodeOptions eo;
        eo.codec = codec;
        eo.target_ratio = ratio;
        eo.measure_error = false;
        if (variant == 4) eo.token_importance = importance;
        auto enc = encode(*cal, *cache, eo);
        if (!enc.is_ok()) return fail(enc.status(), "encode");
        const std::vector<uint8_t>& bytes = enc->bytes;
        auto parsed = parse_container(bytes.data(), bytes.size());
        if (!parsed.is_ok()) return fail(parsed.status(), "parse");
        double codes_stored = 0, symbols = 0;
        for (const ChunkEntry& c : parsed->header.chunks)
          if (c.kind != ChunkKind::kExact) {
            codes_stored += c.stored_bytes;
            symbols += c.coder == ChunkCoder::kEcsqRans ? c.raw_bytes : 0;
          }

        // Correctness first: one copy with fp32 coefficients, bit for bit against the CPU decoder.
        auto want = cpu->decode_coefficients(cd, bytes.data(), bytes.size(), DecodeOptions{}, nullptr);
        if (!want.is_ok()) return fail(want.status(), "CPU decode");
        if (Status s = dec.decode(gcal, cd, {{bytes.data(), bytes.size()}}, true, true, false, false, stream, nullptr);
            !s.is_ok())
          return fail(s, "GPU decode");
        bool match = true;
        for (int s = 0; s < 2; ++s) {
          const auto& seq = dec.sequence(0);
          const size_t m = size_t(seq.container.header.n_compressed_tokens()), kept = size_t(seq.n_kept[s]);
          std::vector<float> got(want->coef[s].size());
          cudaMemcpy(got.data(), seq.coef_f32[s].get(), got.size() * sizeof(float), cudaMemcpyDeviceToHost);
          for (size_t t = 0; t < m; ++t)  // the CPU's [M][n_kept]; the GPU's may be [n_kept][M]
            for (size_t j = 0; j < kept; ++j)
              match = match && std::memcmp(&got[seq.coef_by_component[s] ? j * m + t : t * kept + j],
                                           &want->coef[s][t * kept + j], sizeof(float)) == 0;
        }

        // Throughput: `copies` containers per batch, bf16 coefficients (what the restore GEMM reads),
        // exact chunks on the side stream so that the coefficient stages are timed alone.
        std::vector<std::pair<const uint8_t*, size_t>> batch(size_t(copies), {bytes.data(), bytes.size()});
        cuda::GpuDecodeOptions go;
        go.want_f32 = false;
        go.want_bf16 = true;
        go.overlap_exact = true;
        std::vector<double> stage_s, wall_s;
        for (int r = 0; r < reps + 1; ++r) {
          cuda::GpuDecodeTimes t;
          const auto w0 = std::chrono::steady_clock::now();
          if (Status s = dec.decode(gcal, cd, batch, go, stream, &t); !s.is_ok()) return fail(s, "GPU batch decode");
          if (Status s = dec.exact_status(nullptr); !s.is_ok()) return fail(s, "GPU exact chunks");
          if (r == 0) continue;  // warm-up (level tables uploaded, buffers sized)
          wall_s.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count());
          stage_s.push_back(t.inflate_s + t.dequantize_s);
        }
        // The restore after it: every layer of the batch's first container into bf16 [H][T][D], the
        // reconstruction GEMM (codec 3's coefficients component-major, codec 2's token-major) and its
        // epilogue; GEMM rate from 2 m kept p FLOPs per stream.
        const ContainerHeader& h = dec.sequence(0).container.header;
        const size_t layer_elems = size_t(h.shape.n_kv_heads) * h.n_tokens * h.shape.head_dim;
        void* kv_dev = nullptr;
        if (cudaMalloc(&kv_dev, 2 * layer_elems * 2) != cudaSuccess) return fail(internal_error("cudaMalloc"), "restore buffer");
        std::vector<double> restore_s;
        cudaEvent_t e0, e1;
        cudaEventCreate(&e0);
        cudaEventCreate(&e1);
        for (int r = 0; r < reps + 1; ++r) {
          cudaEventRecord(e0, stream);
          for (int l = 0; l < h.shape.n_layers; ++l)
            if (Status s = dec.restore_layer(gcal, 0, l, kv_dev, static_cast<uint16_t*>(kv_dev) + layer_elems,
                                             cuda::OutType::kBF16, stream);
                !s.is_ok())
              return fail(s, "GPU restore");
          cudaEventRecord(e1, stream);
          cudaEventSynchronize(e1);
          float ms = 0;
          cudaEventElapsedTime(&ms, e0, e1);
          if (r > 0) restore_s.push_back(ms * 1e-3);
        }
        cudaEventDestroy(e0);
        cudaEventDestroy(e1);
        cudaFree(kv_dev);
        const double gemm_flop = 2.0 * double(h.n_compressed_tokens()) *
                                 double(dec.sequence(0).n_kept[0] + dec.sequence(0).n_kept[1]) *
                                 double(h.shape.n_features());
        std::vector<double> cpu_s;
        for (int r = 0; r < 3; ++r) {
          const auto c0 = std::chrono::steady_clock::now();
          auto d = cpu->decode_coefficients(cd, bytes.data(), bytes.size(), DecodeOptions{}, nullptr);
          if (!d.is_ok()) return fail(d.status(), "CPU decode");
          cpu_s.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - c0).count());
        }
        // Codec 3's entropy stage the other way: the GPU rANS encoder on the same chunks' symbols (`copies`
        // copies in one launch), checked byte for byte against the stored rANS chunks, and the CPU's
        // rans_encode of one copy on one core.
        double enc_gpu_s = 0, enc_cpu_s = 0, enc_symbols = 0, enc_out_bytes = 0;
        bool enc_match = true;
        if (codec == 3) {
          auto chunks = ecsq_container_rans_chunks(cd, bytes.data(), bytes.size());
          if (!chunks.is_ok()) return fail(chunks.status(), "rANS chunks");
          std::vector<cuda::RansChunkInput> in;
          for (int q = 0; q < copies; ++q)
            for (const EcsqChunkRans& c : *chunks)
              in.push_back({c.symbols.data(), uint32_t(c.symbols.size()), c.runs.data(), uint32_t(c.runs.size()), c.n_lanes});
          cuda::RansBatchEncoder renc;
          if (Status s = renc.upload(in, stream); !s.is_ok()) return fail(s, "rANS upload");
          std::vector<double> enc_s;
          cudaEvent_t a, b;
          cudaEventCreate(&a);
          cudaEventCreate(&b);
          for (int r = 0; r < reps + 1; ++r) {
            cudaEventRecord(a, stream);
            if (Status s = renc.encode(stream); !s.is_ok()) return fail(s, "rANS encode");
            cudaEventRecord(b, stream);
            cudaEventSynchronize(b);
            float ms = 0;
            cudaEventElapsedTime(&ms, a, b);
            if (r > 0) enc_s.push_back(ms * 1e-3);
          }
          cudaEventDestroy(a);
          cudaEventDestroy(b);
          std::vector<std::vector<uint8_t>> got;
          if (Status s = renc.download(&got, stream); !s.is_ok()) return fail(s, "rANS download");
          for (size_t i = 0; i < got.size(); ++i) {
            const EcsqChunkRans& c = (*chunks)[i % chunks->size()];
            enc_match = enc_match && got[i] == c.rans_bytes;
            enc_out_bytes += double(got[i].size());
          }
          enc_symbols = double(renc.n_symbols());
          enc_gpu_s = median(enc_s);
          const auto c0 = std::chrono::steady_clock::now();
          std::vector<uint8_t> out;
          for (const EcsqChunkRans& c : *chunks)
            if (Status s = rans_encode(c.symbols.data(), c.symbols.size(), c.runs.data(), c.runs.size(), c.n_lanes, out);
                !s.is_ok())
              return fail(s, "CPU rans_encode");
          enc_cpu_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - c0).count();
          std::printf("{\"cache\": \"%s\", \"ratio\": %g, \"token_classes\": %s, \"rans_encode_chunks\": %zu, "
                      "\"symbols\": %.0f, \"gpu_rans_encode_s\": %.6f, \"gpu_encode_Gsym_per_s\": %.2f, "
                      "\"gpu_encode_GBps_out\": %.2f, \"encode_matches_stored\": %s, \"cpu_rans_encode_one_core_Gsym_per_s\": %.3f}\n",
                      path.c_str(), ratio, variant == 4 ? "true" : "false", in.size(), enc_symbols, enc_gpu_s,
                      enc_symbols / enc_gpu_s * 1e-9, enc_out_bytes / enc_gpu_s * 1e-9, enc_match ? "true" : "false",
                      enc_symbols / copies / enc_cpu_s * 1e-9);
        }
        const double gpu = median(stage_s);
        std::printf(
            "{\"cache\": \"%s\", \"ratio\": %g, \"codec\": %d, \"token_classes\": %s, \"file_bytes\": %zu, \"codes_stored_bytes\": %.0f, "
            "\"symbols\": %.0f, \"coef_match_cpu\": %s, \"copies\": %d, \"gpu_entropy_dequant_s\": %.6f, "
            "\"gpu_codes_GBps\": %.2f, \"gpu_Gsym_per_s\": %.2f, \"gpu_decode_wall_s\": %.6f, "
            "\"cpu_decode_coefficients_s\": %.6f, \"cpu_codes_GBps\": %.3f, \"kept\": [%lld, %lld], "
            "\"restore_bf16_s\": %.6f, \"restore_TFLOPs\": %.1f}\n",
            path.c_str(), ratio, codec, variant == 4 ? "true" : "false", bytes.size(), codes_stored, symbols, match ? "true" : "false", copies, gpu,
            codes_stored * copies / gpu * 1e-9, symbols * copies / gpu * 1e-9, median(wall_s), median(cpu_s),
            codes_stored / median(cpu_s) * 1e-9, static_cast<long long>(dec.sequence(0).n_kept[0]),
            static_cast<long long>(dec.sequence(0).n_kept[1]), median(restore_s), gemm_flop / median(restore_s) * 1e-12);
        std::fflush(stdout);
      }
  }
  cudaStreamDestroy(stream);
  return 0;
}

}  // namespace
}  // namespace kvtc

int main(int argc, char** argv) { return kvtc::run(argc, argv); }
