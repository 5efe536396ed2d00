// CPU codec throughput on the real caches, per stage and whole, beside the floors each stage is
// measured against: the machine's sgemm rate (projection / reconstruction) and memcpy bandwidth.
// Throughput is MB/s of raw cache (all tokens of K and V at 16 bits). Run with
//   build/bench/kvtc_bench --benchmark_format=json
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <chrono>
#include <cstring>
#include <vector>

#include "bench_util.hpp"
#include "core/backend.hpp"
#include "entropy/deflate.hpp"

namespace kvtc::bench {
namespace {

double raw_bytes(const KVCache& c) { return double(c.n_tokens) * double(c.shape.n_features()) * 4.0; }

// Stage rates: raw-cache MB over the stage's seconds summed over all iterations. Stages that run on
// worker threads (quantize, deflate, exact) sum their threads' seconds: MB per thread-second.
void set_stage_counters(benchmark::State& state, const StageTimes& t, double bytes, int64_t iters) {
  auto rate = [&](double s) { return s > 0 ? bytes * double(iters) / s / 1e6 : 0.0; };
  state.counters["gather_MBps"] = rate(t.gather_s);
  state.counters["transform_MBps"] = rate(t.transform_s);
  state.counters["quantize_MBps"] = rate(t.quantize_s);
  state.counters["deflate_MBps"] = rate(t.deflate_s);
  state.counters["exact_MBps"] = rate(t.exact_s);
  state.counters["whole_MBps"] = rate(t.total_s);
}

void accumulate(StageTimes& sum, const StageTimes& t) {
  sum.gather_s += t.gather_s;
  sum.transform_s += t.transform_s;
  sum.quantize_s += t.quantize_s;
  sum.deflate_s += t.deflate_s;
  sum.exact_s += t.exact_s;
  sum.total_s += t.total_s;
}

void BM_Calibrate(benchmark::State& state) {
  CalibrateOptions o;
  o.ratios = {8, 16, 20, 32, 64};
  for (auto _ : state) {
    auto r = calibrate(calibration_files(), o);
    if (!r.is_ok()) state.SkipWithError(r.status().to_string().c_str());
    benchmark::DoNotOptimize(r);
  }
  state.counters["tokens"] = double(real_calibration().n_calibration_tokens());
}
BENCHMARK(BM_Calibrate)->Unit(benchmark::kMillisecond)->Iterations(1);

void BM_Encode(benchmark::State& state) {
  const double ratio = double(state.range(0));
  const KVCache& cache = real_cache(test_files()[0]);
  const Calibration& cal = real_calibration();
  auto backend = make_cpu_backend();
  EncodeOptions o;
  o.target_ratio = ratio;
  o.codec = int(state.range(1));
  o.measure_error = false;
  StageTimes sum;
  int64_t bytes_out = 0;
  for (auto _ : state) {
    StageTimes t;
    auto r = backend->encode(cal.data(), cache, o, &t);
    if (!r.is_ok()) state.SkipWithError(r.status().to_string().c_str());
    accumulate(sum, t);
    bytes_out = int64_t(r->bytes.size());
  }
  state.SetBytesProcessed(int64_t(raw_bytes(cache)) * state.iterations());
  set_stage_counters(state, sum, raw_bytes(cache), state.iterations());
  state.counters["file_ratio"] = raw_bytes(cache) / double(bytes_out);
}
// Args: target ratio, codec (2: groups + DEFLATE; 3: ECSQ + rANS, whose entropy stage is reported in
// deflate_MBps, and whose rate control is in quantize_MBps).
BENCHMARK(BM_Encode)->ArgsProduct({{8, 20, 64}, {2, 3}})->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_Decode(benchmark::State& state) {
  const double ratio = double(state.range(0));
  const KVCache& cache = real_cache(test_files()[0]);
  const Calibration& cal = real_calibration();
  auto backend = make_cpu_backend();
  EncodeOptions o;
  o.target_ratio = ratio;
  o.codec = int(state.range(1));
  o.measure_error = false;
  auto enc = backend->encode(cal.data(), cache, o, nullptr);
  if (!enc.is_ok()) {
    state.SkipWithError(enc.status().to_string().c_str());
    return;
  }
  std::vector<float> k, v;
  StageTimes sum;
  for (auto _ : state) {
    StageTimes t;
    auto dec = backend->decode_coefficients(cal.data(), enc->bytes.data(), enc->bytes.size(), {}, &t);
    if (!dec.is_ok()) state.SkipWithError(dec.status().to_string().c_str());
    const size_t n = size_t(cache.shape.n_kv_heads) * size_t(cache.n_tokens) * size_t(cache.shape.head_dim);
    k.resize(n);
    v.resize(n);
    auto start = std::chrono::steady_clock::now();
    for (int l = 0; l < cache.shape.n_layers; ++l)
      (void)backend->restore_layer(cal.data(), *dec, l, k.data(), v.data(), 0, &t);
    t.total_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    accumulate(sum, t);
  }
  state.SetBytesProcessed(int64_t(raw_bytes(cache)) * state.iterations());
  set_stage_counters(state, sum, raw_bytes(cache), state.iterations());
}
BENCHMARK(BM_Decode)->ArgsProduct({{8, 20, 64}, {2, 3}})->Unit(benchmark::kMillisecond)->UseRealTime();

// Floor for the transforms: sgemm of the projection's shape (tokens x p) * (p x rank).
void BM_SgemmFloor(benchmark::State& state) {
  const int m = 1024, n = int(state.range(0)), k = 2048;
  std::vector<float> a(size_t(m) * k, 0.5f), b(size_t(k) * n, 0.25f), c(size_t(m) * n);
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a.data(), k, b.data(), k, 0.0f, c.data(), n);
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["GFLOPS"] = benchmark::Counter(2.0 * m * n * k, benchmark::Counter::kIsIterationInvariantRate,
                                                benchmark::Counter::kIs1000);
}
BENCHMARK(BM_SgemmFloor)->Arg(512)->Arg(2048)->Unit(benchmark::kMillisecond)->UseRealTime();

// Floor for the memory-bound stages: memcpy of a raw cache's size.
void BM_MemcpyFloor(benchmark::State& state) {
  const size_t n = size_t(raw_bytes(real_cache(test_files()[0])));
  std::vector<uint8_t> a(n, 1), b(n);
  for (auto _ : state) {
    std::memcpy(b.data(), a.data(), n);
    benchmark::DoNotOptimize(b.data());
  }
  state.SetBytesProcessed(int64_t(n) * state.iterations());
}
BENCHMARK(BM_MemcpyFloor)->Unit(benchmark::kMicrosecond);

// The entropy stage alone on the symbols of a real container (inflate of every chunk).
void BM_InflateChunks(benchmark::State& state) {
  const KVCache& cache = real_cache(test_files()[0]);
  EncodeOptions o;
  o.target_ratio = double(state.range(0));
  o.measure_error = false;
  auto enc = make_cpu_backend()->encode(real_calibration().data(), cache, o, nullptr);
  auto pc = parse_container(enc->bytes.data(), enc->bytes.size());
  std::vector<uint8_t> raw;
  int64_t raw_total = 0;
  for (auto _ : state) {
    for (const ChunkEntry& c : pc->header.chunks) {
      raw.resize(c.raw_bytes);
      (void)inflate_raw(enc->bytes.data() + pc->payload_offset + c.offset, c.stored_bytes, raw.data(), raw.size());
      raw_total += c.raw_bytes;
    }
  }
  state.SetBytesProcessed(raw_total);
}
BENCHMARK(BM_InflateChunks)->Arg(20)->Unit(benchmark::kMillisecond)->UseRealTime();

// Host work every decode (CPU or GPU) does first: parsing a container and checking it against the
// calibration, per chunk, on a codec 3 container of the real cache cut into many chunks (the GPU
// decoder's host_s, bench/RESULTS.md "CUDA backend", holds this for about 10,000 chunks at NeMo 12B's
// 8K-token shape).
void BM_ParseContainer(benchmark::State& state) {
  const KVCache& cache = real_cache(test_files()[0]);
  EncodeOptions o;
  o.codec = 3;
  o.target_ratio = 16.0;
  o.chunk_max_bytes = state.range(0);
  o.measure_error = false;
  const CalibrationData& cal = real_calibration().data();
  auto enc = make_cpu_backend()->encode(cal, cache, o, nullptr);
  if (!enc.is_ok()) {
    state.SkipWithError(enc.status().to_string().c_str());
    return;
  }
  size_t n_chunks = 0;
  for (auto _ : state) {
    auto pc = parse_container(enc->bytes.data(), enc->bytes.size());
    if (!pc.is_ok() || !check_container_matches(cal, pc->header).is_ok()) {
      state.SkipWithError("container refused");
      return;
    }
    n_chunks = pc->header.chunks.size();
    benchmark::DoNotOptimize(pc);
  }
  state.counters["chunks"] = double(n_chunks);
  state.counters["ns_per_chunk"] =
      benchmark::Counter(double(n_chunks) * 1e-9, benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
}
BENCHMARK(BM_ParseContainer)->Arg(1024)->Arg(16 << 10)->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace
}  // namespace kvtc::bench

BENCHMARK_MAIN();
