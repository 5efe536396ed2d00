// Device-resident compress: cuda::BatchEncoder on a cache already in GPU memory (bf16, contiguous per
// layer, as a serving engine holds it), for Mistral NeMo 12B's and Llama 3 8B's shapes, with each
// projection (fp32 SGEMM, TF32, bf16 tensor cores), against this run's floors: the raw cache read once
// at the device's copy bandwidth, and the projection's FLOPs at the cuBLAS bf16 GEMM rate.
//
//   kvtc_bench_cuda_encode [tokens, default 8192]
//
// The caches and calibrations are synthetic (cuda_workload.hpp: the 20x allocation, kept = 3p/8); one
// sequence per encode, the encoder's default options. Times: one warm-up, then the median of 5 runs of
// encode() + status() on the host clock (the whole call, host planning included). Prints one JSON
// object per measurement and a table at the end. The restored error of the bf16 projection is a test's
// (tests/test_cuda_batch_encode.cpp, RealCacheKeepsTheError), not measured here. A second table splits
// each row into BatchEncoder's stages (BatchEncodeTimes: host planning, then device stages by CUDA events).
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "cuda_workload.hpp"
#include "format/container.hpp"
#include "kvtc/kvtc_cuda.hpp"
#include "util/half.hpp"

namespace kvtc {
namespace {

using namespace bench;

struct EncodeRow {
  std::string name, projection;
  double raw_bytes = 0, file_bytes = 0, wall_s = 0, floor_bytes_s = 0, floor_gemm_s = 0;
  cuda::BatchEncodeTimes stages;  // medians over the timed runs, stage by stage
};

const char* projection_name(cuda::EncodeProjection p) {
  return p == cuda::EncodeProjection::kFp32 ? "fp32" : p == cuda::EncodeProjection::kTf32 ? "tf32" : "bf16";
}

// Uploads the workload's cache as bf16 (its values are bf16 already) and times BatchEncoder on it.
std::vector<EncodeRow> measure(const Workload& w, const Floors& floors) {
  const Calibration cal(std::make_shared<CalibrationData>(w.cal));
  auto dcal = cuda::DeviceCalibration::upload(cal, {}, nullptr);
  OK(dcal.status());
  const KVCache& c = w.cache;
  cuda::DeviceCacheView view;
  view.shape = c.shape;
  view.dtype = DType::kBF16;
  view.n_tokens = c.n_tokens;
  std::vector<void*> owned;
  for (int s = 0; s < 2; ++s)
    for (const auto& layer : s == 0 ? c.k : c.v) {
      std::vector<uint16_t> bits(layer.size());
      for (size_t i = 0; i < layer.size(); ++i) bits[i] = uint16_t(f32_to_bf16_bits(layer[i]));
      void* d = nullptr;
      CK(cudaMalloc(&d, bits.size() * 2));
      CK(cudaMemcpy(d, bits.data(), bits.size() * 2, cudaMemcpyHostToDevice));
      owned.push_back(d);
      (s == 0 ? view.k_layers : view.v_layers).push_back(d);
    }
  EncodeOptions eo;
  eo.target_ratio = 20;
  eo.measure_error = false;
  const std::vector<cuda::DeviceCacheView> views = {view};
  auto ws = cuda::BatchEncoder::workspace_bytes(*dcal, views, eo);
  OK(ws.status());
  auto bounds = cuda::BatchEncoder::container_bound_bytes(*dcal, views, eo);
  OK(bounds.status());
  void *wsp = nullptr, *out = nullptr, *size_dev = nullptr;
  CK(cudaMalloc(&wsp, *ws));
  CK(cudaMalloc(&out, (*bounds)[0]));
  CK(cudaMalloc(&size_dev, 8));
  cudaStream_t stream;
  CK(cudaStreamCreate(&stream));
  cuda::BatchEncoder enc;
  OK(enc.set_workspace(wsp, *ws));

  const double raw = double(c.n_tokens) * c.shape.n_features() * 2 * 2;
  double flops = 0;  // the projection's, from the container's header (first encode below)
  int64_t kept = 0;
  std::vector<EncodeRow> rows;
  for (auto p : {cuda::EncodeProjection::kFp32, cuda::EncodeProjection::kTf32, cuda::EncodeProjection::kBf16}) {
    enc.set_projection(p);
    std::vector<double> t, st[7];
    uint64_t size = 0;
    for (int rep = 0; rep < 6; ++rep) {
      const auto t0 = Clock::now();
      OK(enc.encode(*dcal, views, eo, static_cast<uint8_t*>(out), {0}, static_cast<uint64_t*>(size_dev), stream));
      OK(enc.status());
      if (rep == 0) continue;
      t.push_back(since(t0));
      const cuda::BatchEncodeTimes x = enc.last_times();
      const double v[7] = {x.host_s, x.upload_s, x.project_s, x.exact_s, x.entropy_s, x.assemble_s, x.total_s};
      for (int i = 0; i < 7; ++i) st[i].push_back(v[i]);
    }
    CK(cudaMemcpy(&size, size_dev, 8, cudaMemcpyDeviceToHost));
    if (flops == 0) {
      std::vector<uint8_t> bytes(size);
      CK(cudaMemcpy(bytes.data(), out, size, cudaMemcpyDeviceToHost));
      auto parsed = parse_container(bytes.data(), bytes.size());
      OK(parsed.status());
      const double m = double(parsed->header.n_compressed_tokens());
      for (int s = 0; s < 2; ++s) {
        kept += parsed->header.streams[s].n_kept();
        flops += 2.0 * m * double(parsed->header.streams[s].n_kept()) * double(c.shape.n_features());
      }
    }
    EncodeRow r;
    r.name = w.name;
    r.projection = projection_name(p);
    r.raw_bytes = raw;
    r.file_bytes = double(size);
    r.wall_s = median(t);
    r.stages = {median(st[0]), median(st[1]), median(st[2]), median(st[3]), median(st[4]), median(st[5]), median(st[6])};
    r.floor_bytes_s = raw / floors.copy_bytes_per_s;
    r.floor_gemm_s = flops / floors.bf16_flops;
    std::printf("{\"batch_encode\":\"%s\",\"projection\":\"%s\",\"tokens\":%lld,\"kept_k_plus_v\":%lld,\"raw_bytes\":%.0f,"
                "\"file_bytes\":%.0f,\"ratio\":%.2f,\"wall_ms\":%.3f,\"floor_bytes_ms\":%.3f,\"floor_gemm_ms\":%.3f,"
                "\"GBps_raw\":%.1f,\"host_ms\":%.3f,\"upload_ms\":%.3f,\"project_ms\":%.3f,\"exact_ms\":%.3f,"
                "\"entropy_ms\":%.3f,\"assemble_ms\":%.3f,\"device_ms\":%.3f}\n",
                r.name.c_str(), r.projection.c_str(), (long long)c.n_tokens, (long long)kept, raw, r.file_bytes,
                raw / r.file_bytes, r.wall_s * 1e3, r.floor_bytes_s * 1e3, r.floor_gemm_s * 1e3, raw / r.wall_s * 1e-9,
                r.stages.host_s * 1e3, r.stages.upload_s * 1e3, r.stages.project_s * 1e3, r.stages.exact_s * 1e3,
                r.stages.entropy_s * 1e3, r.stages.assemble_s * 1e3, r.stages.total_s * 1e3);
    std::fflush(stdout);
    rows.push_back(r);
  }
  cudaStreamDestroy(stream);
  for (void* d : {wsp, out, size_dev}) cudaFree(d);
  for (void* d : owned) cudaFree(d);
  return rows;
}

}  // namespace
}  // namespace kvtc

int main(int argc, char** argv) {
  using namespace kvtc;
  using namespace kvtc::bench;
  std::string why;
  if (!cuda::device_available(&why)) {
    std::printf("SKIPPED: %s\n", why.c_str());
    return 0;
  }
  const int64_t tokens = argc > 1 ? std::atoll(argv[1]) : 8192;
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  std::printf("{\"device\":\"%s\",\"sms\":%d,\"tokens\":%lld}\n", prop.name, prop.multiProcessorCount, (long long)tokens);
  const Floors floors = measure_floors();
  std::printf("{\"floor_copy_GBps_read_plus_write\":%.1f,\"floor_bf16_TFLOPs\":%.1f}\n", floors.copy_bytes_per_s * 1e-9,
              floors.bf16_flops * 1e-12);
  const std::vector<double> spectrum = reference_key_spectrum();
  std::vector<EncodeRow> rows;
  for (const auto& [name, L] : {std::pair<const char*, int>{"nemo 40x8x128", 40}, {"llama3-8b 32x8x128", 32}}) {
    const Workload w = make_workload(name, L, 8, 128, tokens, &spectrum, L == 40 ? 2 : 3);
    for (const EncodeRow& r : measure(w, floors)) rows.push_back(r);
  }
  std::printf("\n%-22s %-5s %8s %10s %12s %12s %8s\n", "case (ms)", "proj", "ratio", "wall", "floor bytes",
              "floor GEMM", "x floor");
  for (const EncodeRow& r : rows) {
    const double floor_s = r.floor_bytes_s > r.floor_gemm_s ? r.floor_bytes_s : r.floor_gemm_s;
    std::printf("%-22s %-5s %8.2f %10.3f %12.3f %12.3f %8.2f\n", r.name.c_str(), r.projection.c_str(),
                r.raw_bytes / r.file_bytes, r.wall_s * 1e3, r.floor_bytes_s * 1e3, r.floor_gemm_s * 1e3,
                r.wall_s / floor_s);
  }
  std::printf("\nStages (medians, ms; host on the host clock, the rest CUDA events)\n");
  std::printf("%-22s %-5s %8s %8s %9s %8s %9s %9s %9s\n", "case", "proj", "host", "upload", "project", "exact",
              "entropy", "assemble", "device");
  for (const EncodeRow& r : rows) {
    const cuda::BatchEncodeTimes& x = r.stages;
    std::printf("%-22s %-5s %8.3f %8.3f %9.3f %8.3f %9.3f %9.3f %9.3f\n", r.name.c_str(), r.projection.c_str(),
                x.host_s * 1e3, x.upload_s * 1e3, x.project_s * 1e3, x.exact_s * 1e3, x.entropy_s * 1e3,
                x.assemble_s * 1e3, x.total_s * 1e3);
  }
  return 0;
}
