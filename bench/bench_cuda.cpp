// CUDA backend benchmark: GPU decode + layer restore throughput per stage, against this run's own
// floors (device copy bandwidth, cuBLAS bf16 GEMM rate), for the reference model's shape and for
// Mistral NeMo 12B's shape (and Llama 3 8B's in ttft mode). Prints one JSON object per measurement and
// a table at the end.
//
// The caches and calibrations are synthetic (cuda_workload.hpp); containers are written by the CPU encoder.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <lapacke.h>
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "core/backend.hpp"
#include "core/rope.hpp"
#include "core/token_vectors.hpp"
#include "cuda/cuda_backend.hpp"
#include "kvtc/kvtc_cuda.hpp"
#include "cuda_workload.hpp"
#include "util/half.hpp"

namespace kvtc {
namespace {

using namespace bench;

struct Row {
  std::string name;
  double raw_bytes = 0, file_bytes = 0;
  double encode_cpu_s = 0;
  double upload_s = 0, inflate_s = 0, dequant_s = 0, exact_s = 0, decode_s = 0, decode_wall_s = 0;
  double restore_s = 0, first_layer_s = 0, total_wall_s = 0, host_s = 0, wait_s = 0;
  double inflated_bytes = 0;
  double inflate_nocrc_s = 0, coef_inflated_bytes = 0;
  double floor_s = 0, floor_bytes_s = 0, floor_gemm_s = 0;
  double bf16_rel_err = -1;
  double restore_fp8_s = 0, first_layer_fp8_s = 0, total_wall_fp8_s = 0, fp8_rel_err = -1;  // FP8 reconstruction
  double dequant_fp8_s = 0, fp8_convert_s = 0, inflate_fp8_s = 0;  // the FP8 runs' decode stages
  struct Grouped {
    int layers_per_gemm;
    bool fast_accum;
    double restore_s, total_wall_s, first_layer_s;
  };
  std::vector<Grouped> grouped;  // FP8 restores with several layers per GEMM, or fast accumulation
};

// Compress on the GPU (CudaBackend::encode, the path of encode_on_gpu) of the workload's host cache:
// one warm-up, then medians of 3 runs of every stage (CUDA events), in ms and GB/s of raw cache.
void measure_gpu_encode(const Workload& w, const CalibrationData& cal, const EncodeOptions& eo) {
  auto gpu = make_cuda_backend();
  std::vector<double> v[9];
  double file_bytes = 0;
  for (int rep = 0; rep < 4; ++rep) {
    CudaEncodeProbe probe;
    auto e = cuda_encode_probe(*gpu, cal, w.cache, eo, &probe);
    OK(e.status());
    file_bytes = double(e->bytes.size());
    if (rep == 0) continue;
    const double st[9] = {probe.host_s, probe.upload_s, probe.gather_s, probe.gemm_s, probe.quantize_s,
                          probe.pack_s, probe.deflate_s, probe.d2h_s, probe.total_s};
    for (int i = 0; i < 9; ++i) v[i].push_back(st[i]);
  }
  const double raw = double(w.cache.n_tokens) * w.cache.shape.n_features() * 2 * 2;
  double m[9];
  for (int i = 0; i < 9; ++i) m[i] = median(v[i]);
  const double device_s = m[2] + m[3] + m[4] + m[5] + m[6] + m[7];
  std::printf("{\"gpu_encode\":\"%s\",\"raw_bytes\":%.0f,\"file_bytes\":%.0f,\"ratio\":%.2f,\"host_ms\":%.3f,"
              "\"upload_ms\":%.3f,\"gather_ms\":%.3f,\"gemm_ms\":%.3f,\"quantize_ms\":%.3f,\"pack_ms\":%.3f,"
              "\"deflate_ms\":%.3f,\"d2h_ms\":%.3f,\"total_ms\":%.3f,\"GBps_device_stages\":%.2f,\"GBps_total\":%.2f}\n",
              w.name.c_str(), raw, file_bytes, raw / file_bytes, m[0] * 1e3, m[1] * 1e3, m[2] * 1e3, m[3] * 1e3,
              m[4] * 1e3, m[5] * 1e3, m[6] * 1e3, m[7] * 1e3, m[8] * 1e3, raw / device_s * 1e-9, raw / m[8] * 1e-9);
  std::fflush(stdout);
}

// overlap_exact: exact chunks inflate on a second stream (BatchDecodeOptions). The container of the
// last call is reused when the workload, codec and chunking repeat (the CPU encode of NeMo's shape
// takes about 100 s). codec 3 needs a workload made with learn_ecsq; the GPU encoder writes codec 2 only,
// so its timing runs with codec 2 alone.
Row run_workload(const Workload& w, const Floors& floors, int chunk_tokens, int64_t chunk_max_bytes, int reps,
                 int batch, bool overlap_exact = false, bool defer_status = false, int codec = 2) {
  Row r;
  r.name = w.name + (codec == 3 ? " codec 3" : "") + " chunk " + std::to_string(chunk_tokens) + "x" +
           std::to_string(chunk_max_bytes / 1024) + "K" + (batch > 1 ? " batch " + std::to_string(batch) : "") +
           (overlap_exact ? " overlap" : "") + (defer_status ? " deferred" : "");
  const auto cal_data = std::make_shared<CalibrationData>(w.cal);
  const Calibration cal(cal_data);
  EncodeOptions eo;
  eo.target_ratio = 20.0;
  eo.chunk_tokens = chunk_tokens;
  eo.chunk_max_bytes = chunk_max_bytes;
  eo.measure_error = false;
  eo.codec = codec;
  static std::string cached_key;
  static std::optional<EncodedCache> cached;
  static double cached_encode_s = 0;
  const std::string key =
      w.name + "/" + std::to_string(codec) + "/" + std::to_string(chunk_tokens) + "/" + std::to_string(chunk_max_bytes);
  if (key != cached_key || !cached) {
    cached.reset();
    auto t0 = Clock::now();
    StageTimes st;
    auto e = make_cpu_backend()->encode(*cal_data, w.cache, eo, &st);
    OK(e.status());
    std::fprintf(stderr, "CPU encode stages (s): gather %.2f transform %.2f quantize %.2f entropy %.2f exact %.2f total %.2f\n",
                 st.gather_s, st.transform_s, st.quantize_s, st.deflate_s, st.exact_s, st.total_s);
    cached = std::move(e).value();
    cached_key = key;
    cached_encode_s = since(t0);
    if (codec == 2) measure_gpu_encode(w, *cal_data, eo);
  }
  EncodedCache* enc = &*cached;
  r.encode_cpu_s = cached_encode_s;
  std::fprintf(stderr, "%s: CPU encode %.2f s\n", r.name.c_str(), r.encode_cpu_s);
  const ModelShape& sh = w.cache.shape;
  const int64_t p = sh.n_features(), T = w.cache.n_tokens;
  r.raw_bytes = double(T) * p * 2 * 2 * batch;
  r.file_bytes = double(enc->bytes.size()) * batch;
  auto parsed = parse_container(enc->bytes.data(), enc->bytes.size());
  OK(parsed.status());
  for (const ChunkEntry& c : parsed->header.chunks) {
    r.inflated_bytes += double(c.raw_bytes) * batch;
    if (c.kind != ChunkKind::kExact) r.coef_inflated_bytes += double(c.raw_bytes) * batch;
  }

  cudaStream_t stream;
  CK(cudaStreamCreate(&stream));
  cuda::DeviceCalibration::Options dopt;
  dopt.fp32 = false;
  dopt.fp8 = true;
  auto dcal = cuda::DeviceCalibration::upload(cal, dopt, stream);
  OK(dcal.status());
  cuda::BatchDecoder dec;
  cuda::BatchDecodeOptions bo;
  bo.keep_fp32 = false;
  bo.overlap_exact = overlap_exact;
  bo.defer_status = defer_status;  // restores queue right behind the decode; statuses checked at the end
  // Compressed caches wait in pinned host memory, as a serving system keeps them.
  CK(cudaHostRegister(enc->bytes.data(), enc->bytes.size(), cudaHostRegisterDefault));
  std::vector<cuda::ContainerView> views(size_t(batch), {enc->bytes.data(), enc->bytes.size()});
  const int L = sh.n_layers;
  const size_t layer_elems = size_t(sh.n_kv_heads) * T * sh.head_dim;
  void* out;
  CK(cudaMalloc(&out, size_t(L) * 2 * layer_elems * 2));
  std::vector<void*> kp(static_cast<size_t>(L)), vp(static_cast<size_t>(L)), ev(static_cast<size_t>(L));
  for (int l = 0; l < L; ++l) {
    kp[size_t(l)] = static_cast<uint8_t*>(out) + (2 * size_t(l)) * layer_elems * 2;
    vp[size_t(l)] = static_cast<uint8_t*>(out) + (2 * size_t(l) + 1) * layer_elems * 2;
    cudaEvent_t e;
    cudaEventCreate(&e);
    ev[size_t(l)] = e;
  }
  cudaEvent_t start;
  cudaEventCreate(&start);
  // One timed decode + restore of the batch: host clock for the decode call and the whole, CUDA events for
  // the restore from its start to layer 0 and to the last layer.
  struct Rep {
    double decode_wall_s = 0, total_s = 0, restore_all_s = 0, first_layer_s = 0;
    cuda::BatchDecodeTimes t;
  };
  auto run_once = [&](const cuda::BatchDecodeOptions& o) {
    Rep rep;
    CK(cudaStreamSynchronize(stream));
    const auto w0 = Clock::now();
    OK(dec.decode(*dcal, views, o, stream));
    rep.decode_wall_s = since(w0);
    cudaEventRecord(start, stream);
    for (int q = 0; q < batch; ++q)
      OK(dec.restore_all(*dcal, q, kp.data(), vp.data(), cuda::ElementType::kBF16, stream, ev.data()));
    CK(cudaStreamSynchronize(stream));
    OK(dec.status());
    rep.total_s = since(w0);
    rep.t = dec.last_times();
    float ms_all, ms_first;
    cudaEventElapsedTime(&ms_all, start, static_cast<cudaEvent_t>(ev[size_t(L - 1)]));
    cudaEventElapsedTime(&ms_first, start, static_cast<cudaEvent_t>(ev[0]));
    rep.restore_all_s = ms_all * 1e-3;
    rep.first_layer_s = ms_first * 1e-3;
    return rep;
  };
  std::vector<double> up, inf, dq, ex, dtot, dwall, rest, first, wall, host, wait;
  for (int i = 0; i < reps + 1; ++i) {
    const Rep rep = run_once(bo);
    if (i == 0) continue;  // warm-up
    up.push_back(rep.t.upload_s);
    host.push_back(rep.t.host_s);
    wait.push_back(rep.t.wait_s);
    inf.push_back(rep.t.inflate_s);
    dq.push_back(rep.t.dequantize_s);
    ex.push_back(rep.t.exact_s);  // exact chunks on the side stream (overlapped)
    dtot.push_back(rep.t.total_s);
    dwall.push_back(rep.decode_wall_s);
    rest.push_back(rep.restore_all_s);
    first.push_back(rep.first_layer_s);
    wall.push_back(rep.total_s);
  }
  // FP8 reconstruction: the same restores from E4M3 copies of the coefficients and basis.
  {
    cuda::BatchDecodeOptions f8 = bo;
    f8.fp8_reconstruction = true;
    std::vector<double> rest8, first8, wall8, dq8, cv8, inf8;
    for (int i = 0; i < reps + 1; ++i) {
      const Rep rep = run_once(f8);
      if (i == 0) continue;
      rest8.push_back(rep.restore_all_s);
      first8.push_back(rep.first_layer_s);
      wall8.push_back(rep.total_s);
      dq8.push_back(rep.t.dequantize_s);
      cv8.push_back(rep.t.fp8_s);
      inf8.push_back(rep.t.inflate_s);
    }
    // Several layers per GEMM (BatchDecodeOptions::layers_per_gemm), and fast accumulation
    // (fp8_fast_accum): the same FP8 restores (tests/test_cuda_fp8.cpp checks that they agree with one
    // layer per GEMM, and measures what fast accumulation adds to the error).
    for (const auto& [group, fast] : {std::pair{4, false}, std::pair{8, false}, std::pair{1, true}, std::pair{8, true}}) {
      if (group > L) continue;
      cuda::BatchDecodeOptions g8 = f8;
      g8.layers_per_gemm = group;
      g8.fp8_fast_accum = fast;
      std::vector<double> rest_g, wall_g, first_g;
      for (int i = 0; i < reps + 1; ++i) {
        const Rep rep = run_once(g8);
        if (i == 0) continue;
        rest_g.push_back(rep.restore_all_s);
        wall_g.push_back(rep.total_s);
        first_g.push_back(rep.first_layer_s);
      }
      r.grouped.push_back({group, fast, median(rest_g), median(wall_g), median(first_g)});
    }
    r.dequant_fp8_s = median(dq8);
    r.fp8_convert_s = median(cv8);
    r.inflate_fp8_s = median(inf8);
    r.restore_fp8_s = median(rest8);
    r.first_layer_fp8_s = median(first8);
    r.total_wall_fp8_s = median(wall8);
  }
  std::vector<uint16_t> k0_fp8(layer_elems);
  CK(cudaMemcpy(k0_fp8.data(), kp[0], layer_elems * 2, cudaMemcpyDeviceToHost));
  OK(dec.decode(*dcal, views, bo, stream));  // bf16 again, for the accuracy check below
  for (int q = 0; q < batch; ++q)
    OK(dec.restore_all(*dcal, q, kp.data(), vp.data(), cuda::ElementType::kBF16, stream, nullptr));
  CK(cudaStreamSynchronize(stream));
  OK(dec.status());
  // Diagnostic: the coefficient inflate without CRC checks.
  {
    cuda::BatchDecodeOptions nocrc = bo;
    nocrc.verify_checksums = false;
    std::vector<double> t_nocrc;
    for (int rep = 0; rep < reps; ++rep) {
      OK(dec.decode(*dcal, views, nocrc, stream));
      OK(dec.status());
      t_nocrc.push_back(dec.last_times().inflate_s);
    }
    r.inflate_nocrc_s = median(t_nocrc);
  }
  r.upload_s = median(up);
  r.host_s = median(host);
  r.wait_s = median(wait);
  r.inflate_s = median(inf);
  r.dequant_s = median(dq);
  r.exact_s = median(ex);
  r.decode_s = median(dtot);
  r.decode_wall_s = median(dwall);
  r.restore_s = median(rest);
  r.first_layer_s = median(first);
  r.total_wall_s = median(wall);
  // Layer timeline of the last repetition: when each layer's event completed, from restore start.
  std::printf("{\"timeline\":\"%s\",\"layer_ready_ms\":[", r.name.c_str());
  for (int l = 0; l < L; ++l) {
    float ms;
    cudaEventElapsedTime(&ms, start, static_cast<cudaEvent_t>(ev[size_t(l)]));
    std::printf("%s%.3f", l ? "," : "", ms);
  }
  std::printf("]}\n");
  // Floors: bytes that must move on the device (compressed payload read, inflated chunks written and
  // read, bf16 coefficients written and read once, bf16 basis rows read, bf16 output written) over
  // copy bandwidth; reconstruction FLOPs over the bf16 GEMM rate.
  double gemm_flops = 0, bytes = r.file_bytes + 2 * r.inflated_bytes + r.raw_bytes;
  for (int s = 0; s < 2; ++s) {
    const double kept = double(parsed->header.streams[s].n_kept());
    const double m = double(parsed->header.n_compressed_tokens());
    gemm_flops += 2.0 * m * kept * double(p) * batch;
    bytes += 2.0 * m * kept * 2 * batch + kept * double(p) * 2;
  }
  r.floor_bytes_s = bytes / floors.copy_bytes_per_s;
  r.floor_gemm_s = gemm_flops / floors.bf16_flops;
  r.floor_s = std::max(r.floor_bytes_s, r.floor_gemm_s);
  // Accuracy of the bf16 path on layer 0 of sequence 0 against the CPU decoder (fp32).
  if (p <= 8192) {
    auto cpu = make_cpu_backend();
    auto cd = cpu->decode_coefficients(*cal_data, enc->bytes.data(), enc->bytes.size(), DecodeOptions{}, nullptr);
    OK(cd.status());
    std::vector<float> kc(layer_elems), vc(layer_elems);
    OK(cpu->restore_layer(*cal_data, *cd, 0, kc.data(), vc.data(), 0, nullptr));
    std::vector<uint16_t> kg(layer_elems);
    CK(cudaMemcpy(kg.data(), kp[0], layer_elems * 2, cudaMemcpyDeviceToHost));
    double num = 0, num8 = 0, den = 0;
    for (size_t i = 0; i < layer_elems; ++i) {
      const double d = double(bf16_to_f32(kg[i])) - kc[i];
      const double d8 = double(bf16_to_f32(k0_fp8[i])) - kc[i];
      num += d * d;
      num8 += d8 * d8;
      den += double(kc[i]) * kc[i];
    }
    r.bf16_rel_err = std::sqrt(num / den);
    r.fp8_rel_err = std::sqrt(num8 / den);
  }
  for (void* e : ev) cudaEventDestroy(static_cast<cudaEvent_t>(e));
  cudaEventDestroy(start);
  cudaFree(out);
  cudaStreamDestroy(stream);
  cudaHostUnregister(enc->bytes.data());
  const double gb = 1e-9;
  std::printf(
      "{\"case\":\"%s\",\"raw_bytes\":%.0f,\"file_bytes\":%.0f,\"ratio\":%.2f,\"inflated_bytes\":%.0f,"
      "\"encode_cpu_s\":%.4f,\"upload_s\":%.6f,\"inflate_s\":%.6f,\"dequantize_s\":%.6f,\"exact_s\":%.6f,"
      "\"decode_device_s\":%.6f,\"decode_wall_s\":%.6f,\"restore_all_s\":%.6f,\"first_layer_s\":%.6f,"
      "\"total_wall_s\":%.6f,\"floor_s\":%.6f,\"floor_bytes_s\":%.6f,\"floor_gemm_s\":%.6f,"
      "\"coef_inflate_GBps_inflated\":%.1f,\"inflate_GBps_raw_cache\":%.1f,\"bf16_rel_l2_err_layer0_keys\":%.3g,"
      "\"coef_inflate_nocrc_s\":%.6f,\"decode_host_s\":%.6f,\"decode_wait_s\":%.6f,\"restore_all_fp8_s\":%.6f,"
      "\"first_layer_fp8_s\":%.6f,\"total_wall_fp8_s\":%.6f,\"fp8_rel_l2_err_layer0_keys\":%.3g,"
      "\"fp8_run_inflate_s\":%.6f,\"fp8_run_dequantize_s\":%.6f,\"fp8_run_e4m3_copy_s\":%.6f}\n",
      r.name.c_str(), r.raw_bytes, r.file_bytes, r.raw_bytes / r.file_bytes, r.inflated_bytes, r.encode_cpu_s, r.upload_s,
      r.inflate_s, r.dequant_s, r.exact_s, r.decode_s, r.decode_wall_s, r.restore_s, r.first_layer_s, r.total_wall_s,
      r.floor_s, r.floor_bytes_s, r.floor_gemm_s, r.coef_inflated_bytes / r.inflate_s * gb, r.raw_bytes / r.inflate_s * gb,
      r.bf16_rel_err, r.inflate_nocrc_s, r.host_s, r.wait_s, r.restore_fp8_s, r.first_layer_fp8_s, r.total_wall_fp8_s, r.fp8_rel_err,
      r.inflate_fp8_s, r.dequant_fp8_s, r.fp8_convert_s);
  for (const Row::Grouped& g : r.grouped)
    std::printf("{\"case\":\"%s\",\"fp8_layers_per_gemm\":%d,\"fp8_fast_accum\":%s,\"restore_all_fp8_s\":%.6f,"
                "\"total_wall_fp8_s\":%.6f,\"first_layer_fp8_s\":%.6f}\n",
                r.name.c_str(), g.layers_per_gemm, g.fast_accum ? "true" : "false", g.restore_s, g.total_wall_s,
                g.first_layer_s);
  std::fflush(stdout);
  return r;
}

}  // namespace
}  // namespace kvtc

int main(int argc, char** argv) {
  using namespace kvtc;
  using namespace kvtc::bench;
  std::string why;
  if (!cuda_device_available(&why)) {
    std::printf("SKIPPED: %s\n", why.c_str());
    return 0;
  }
  const int64_t tokens = argc > 1 ? std::atoll(argv[1]) : 8192;
  // Second argument: "all" (default), "ref-only", or "ttft": the encoder's defaults with deferred
  // statuses for every shape (reference, NeMo 12B, Llama 3 8B) and both codecs (the time-to-first-token
  // rows) and nothing else.
  const std::string mode = argc > 2 ? argv[2] : "all";
  // "ttft3": the ttft rows of codec 3 alone, each with and without overlap_exact (the CPU encodes of
  // codec 2 at these shapes take most of a ttft run).
  if (mode != "all" && mode != "ref-only" && mode != "ttft" && mode != "ttft3") {
    std::fprintf(stderr, "usage: kvtc_bench_cuda [tokens] [all|ref-only|ttft|ttft3] [nemo|llama3]\n");
    return 2;
  }
  // Third argument (ttft modes): "nemo" or "llama3" times that shape alone (default: both).
  const std::string only = argc > 3 ? argv[3] : "";
  const bool codec3_only = mode == "ttft3", ttft = mode == "ttft" || codec3_only;
  const bool nemo = mode != "ref-only" && only != "llama3", llama3 = ttft && only != "nemo";
  const std::vector<int> ttft_codecs = codec3_only ? std::vector<int>{3} : std::vector<int>{2, 3};
  // The ttft rows of one workload: codec 2 and 3 without overlap, or codec 3 without and with it.
  auto ttft_rows = [&](const Workload& w, const Floors& floors, std::vector<Row>& rows) {
    for (int codec : ttft_codecs) rows.push_back(run_workload(w, floors, 256, 16 << 10, 5, 1, false, true, codec));
    if (codec3_only) rows.push_back(run_workload(w, floors, 256, 16 << 10, 5, 1, /*overlap_exact=*/true, true, 3));
  };
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  std::printf("{\"device\":\"%s\",\"sms\":%d,\"l2_bytes\":%d,\"tokens\":%lld}\n", prop.name, prop.multiProcessorCount,
              prop.l2CacheSize, (long long)tokens);
  const Floors floors = measure_floors();
  std::printf("{\"floor_copy_GBps_read_plus_write\":%.1f,\"floor_bf16_TFLOPs\":%.1f}\n", floors.copy_bytes_per_s * 1e-9,
              floors.bf16_flops * 1e-12);
  std::vector<double> spectrum[2];
  auto calib = read_cache(KVTC_SOURCE_DIR "/data/small-calib.safetensors");
  if (calib.is_ok()) {
    spectrum[0] = reference_spectrum(*calib, Stream::kKey);
    spectrum[1] = reference_spectrum(*calib, Stream::kValue);
  }
  std::printf("{\"spectrum\":\"%s\"}\n", spectrum[0].empty() ? "power law (reference cache unreadable)"
                                                             : "reference model keys (data/small-calib.safetensors)");
  std::vector<Row> rows;
  {
    const Workload ref = make_workload("ref 8x2x128", 8, 2, 128, tokens, &spectrum[0], 1, /*learn_ecsq=*/true);
    if (ttft) {
      ttft_rows(ref, floors, rows);
    } else {
      rows.push_back(run_workload(ref, floors, 256, 16 << 10, 5, 1));  // the encoder's defaults
      rows.push_back(run_workload(ref, floors, 64, 16 << 10, 5, 1));
      rows.push_back(run_workload(ref, floors, 256, 16 << 10, 5, 8));
      rows.push_back(run_workload(ref, floors, 256, 16 << 10, 5, 8, /*overlap_exact=*/true));
      rows.push_back(run_workload(ref, floors, 256, 16 << 10, 5, 1, false, false, /*codec=*/3));
    }
  }
  if (nemo) {
    const Workload big =
        make_workload("nemo 40x8x128", 40, 8, 128, tokens, &spectrum[0], 2, /*learn_ecsq=*/true, /*ecsq_samples=*/2048);
    // The encoder's defaults: 256-token blocks, lowered to 65 tokens by block_tokens() because this
    // allocation carries 250 side bytes per token (side chunks stay within 16 KiB).
    if (!ttft) {
      rows.push_back(run_workload(big, floors, 256, 16 << 10, 5, 1));
      rows.push_back(run_workload(big, floors, 256, 16 << 10, 5, 1, /*overlap_exact=*/true));
    }
    if (ttft) {
      ttft_rows(big, floors, rows);
    } else {
      rows.push_back(run_workload(big, floors, 256, 16 << 10, 5, 1, /*overlap_exact=*/false, /*defer_status=*/true));
      rows.push_back(run_workload(big, floors, 256, 16 << 10, 5, 1, false, true, /*codec=*/3));
    }
  }
  if (llama3) {  // Llama 3 8B's shape: 32 layers x 8 KV heads x 128 (the second shape)
    const Workload l3 =
        make_workload("llama3-8b 32x8x128", 32, 8, 128, tokens, &spectrum[0], 3, /*learn_ecsq=*/true, /*ecsq_samples=*/2048);
    ttft_rows(l3, floors, rows);
  }
  std::printf("\n%-44s %8s %9s %9s %9s %9s %9s %9s %9s %9s %7s\n", "case (times in ms)", "ratio", "inflate", "dequant",
              "exact||", "restore", "rst fp8", "wall", "wall fp8", "floor", "x floor");
  for (const Row& r : rows) {
    std::printf("%-44s %8.2f %9.3f %9.3f %9.3f %9.3f %9.3f %9.3f %9.3f %9.3f %7.2f\n", r.name.c_str(),
                r.raw_bytes / r.file_bytes, r.inflate_s * 1e3, r.dequant_s * 1e3, r.exact_s * 1e3, r.restore_s * 1e3,
                r.restore_fp8_s * 1e3, r.total_wall_s * 1e3, r.total_wall_fp8_s * 1e3, r.floor_s * 1e3,
                r.total_wall_s / r.floor_s);
  }
  return 0;
}
