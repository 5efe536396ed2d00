// The GPU DEFLATE encoder (cuda/deflate_encode.cuh) against its host mirror (cuda/huffman_deflate.hpp):
// batches of mixed sizes and statistics must give byte-identical streams, sizes and CRC-32s in
// device memory, streams that libdeflate and the GPU inflate kernel restore to the input, and
// overflow statuses without a byte written. Also prints the encode throughput (not asserted).
#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <libdeflate.h>
#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "cuda/cuda_backend.hpp"
#include "cuda_test_util.hpp"
#include "cuda/cuda_common.hpp"
#include "cuda/deflate_encode.cuh"
#include "entropy/inflate.cuh"

namespace kvtc::cuda {
namespace {

#define ASSERT_CUDA(expr) ASSERT_EQ((expr), cudaSuccess) << #expr << ": " << cudaGetErrorString(cudaGetLastError())

constexpr size_t kGuardBytes = 64;
constexpr uint8_t kPoison = 0xa5;

// The statistics of kvtc's chunks (packed 2- and 4-bit codes, geometric), plus random bytes, runs
// of one byte and text.
std::vector<uint8_t> make_input(int kind, size_t n, std::mt19937_64& rng) {
  std::vector<uint8_t> v(n);
  std::normal_distribution<double> normal(7.5, 1.6);
  std::geometric_distribution<int> geometric(0.3);
  auto code4 = [&] { return uint8_t(std::clamp(int(std::lround(normal(rng))), 0, 15)); };
  const uint8_t code2[8] = {1, 1, 1, 2, 2, 2, 0, 3};
  const char* words[] = {"key ", "value ", "cache ", "transform ", "coding ", "deflate ", "\n"};
  size_t i = 0;
  switch (kind % 6) {
    case 0: for (auto& x : v) x = uint8_t(rng()); break;
    case 1: for (auto& x : v) x = uint8_t(std::min(geometric(rng), 255)); break;
    case 2: for (auto& x : v) x = uint8_t(code4() | code4() << 4); break;
    case 3: for (auto& x : v) x = uint8_t(code2[rng() % 8] | code2[rng() % 8] << 2 | code2[rng() % 8] << 4 | code2[rng() % 8] << 6); break;
    case 4: std::fill(v.begin(), v.end(), uint8_t(rng())); break;
    default:
      while (i < n)
        for (const char* w = words[rng() % 7]; *w && i < n; ++w) v[i++] = uint8_t(*w);
  }
  return v;
}

// One batch on the device: inputs and outputs at the given (possibly unaligned) offsets.
struct Batch {
  std::vector<std::vector<uint8_t>> inputs;
  std::vector<uint32_t> capacity;
  std::vector<size_t> src_off, dst_off;
  size_t src_total = 0, dst_total = 0;
  DeviceBuffer src, dst, jobs, sizes, crcs, status;

  void layout(std::mt19937_64& rng, bool misalign) {
    for (size_t i = 0; i < inputs.size(); ++i) {
      src_total = (src_total + 15) / 16 * 16 + (misalign ? rng() % 16 : 0);
      src_off.push_back(src_total);
      src_total += inputs[i].size();
      dst_total = (dst_total + 15) / 16 * 16 + (misalign ? rng() % 16 : 0);
      dst_off.push_back(dst_total);
      dst_total += capacity[i] + kGuardBytes;
    }
  }
  // Uploads, poisons dst, and enqueues the encoder on `stream`.
  cudaError_t upload_and_launch(cudaStream_t stream) {
    if (!src.reserve(src_total + 1).is_ok() || !dst.reserve(dst_total + 1).is_ok() ||
        !jobs.reserve(sizeof(DeflateEncodeJob) * inputs.size() + 1).is_ok() ||
        !sizes.reserve(4 * inputs.size() + 4).is_ok() || !crcs.reserve(4 * inputs.size() + 4).is_ok() ||
        !status.reserve(4 * inputs.size() + 4).is_ok())
      return cudaErrorMemoryAllocation;
    std::vector<uint8_t> src_host(src_total + 1);
    std::vector<DeflateEncodeJob> job_host(inputs.size());
    for (size_t i = 0; i < inputs.size(); ++i) {
      std::copy(inputs[i].begin(), inputs[i].end(), src_host.begin() + long(src_off[i]));
      job_host[i] = {src.as<uint8_t>() + src_off[i], dst.as<uint8_t>() + dst_off[i], uint32_t(inputs[i].size()), capacity[i]};
    }
    cudaError_t e = cudaMemcpy(src.get(), src_host.data(), src_total + 1, cudaMemcpyHostToDevice);
    if (e == cudaSuccess) e = cudaMemcpy(jobs.get(), job_host.data(), sizeof(DeflateEncodeJob) * inputs.size(), cudaMemcpyHostToDevice);
    if (e == cudaSuccess) e = cudaMemset(dst.get(), kPoison, dst_total + 1);
    if (e == cudaSuccess) e = cudaMemset(status.get(), 0xff, 4 * inputs.size());
    if (e != cudaSuccess) return e;
    return launch(stream);
  }
  cudaError_t launch(cudaStream_t stream = nullptr) {
    return launch_deflate_encode(jobs.as<DeflateEncodeJob>(), int(inputs.size()), sizes.as<uint32_t>(),
                                 crcs.as<uint32_t>(), status.as<uint32_t>(), stream);
  }
};

TEST(CudaDeflateEncode, MatchesHostMirrorAndInflates) {
  SKIP_WITHOUT_DEVICE();
  std::mt19937_64 rng(11);
  const size_t fixed_sizes[] = {0, 1, 2, 31, 32, 33, 100, 1000, 4095, 4096, 8191, 8192, 8193, 16384, 30000,
                                65535, 65536, 65537, 131072, 200000};
  Batch batch;
  std::vector<std::vector<uint8_t>> want;  // host mirror streams (empty where overflow is expected)
  std::vector<uint32_t> want_status;
  for (int i = 0; i < 640; ++i) {
    const size_t n = i < 240 ? fixed_sizes[i % std::size(fixed_sizes)] : (i % 4 == 0 ? rng() % 200000 : rng() % 70000);
    batch.inputs.push_back(make_input(i / 2 + i % 7, n, rng));
    const auto& in = batch.inputs.back();
    std::vector<uint8_t> z(deflate_encode_bound(n));
    const auto r = deflate_encode_host(in.data(), uint32_t(n), z.data(), uint32_t(z.size()));
    ASSERT_EQ(r.status, kEncodeOk);
    z.resize(r.out_bytes);
    const bool too_small = i % 37 == 5;  // one job in 37 gets one byte too few
    batch.capacity.push_back(too_small ? r.out_bytes - 1 : uint32_t(deflate_encode_bound(n)));
    want_status.push_back(too_small ? kEncodeOverflow : kEncodeOk);
    want.push_back(too_small ? std::vector<uint8_t>() : z);
  }
  const size_t n_jobs = batch.inputs.size();
  batch.layout(rng, /*misalign=*/true);
  ASSERT_CUDA(batch.upload_and_launch(nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  std::vector<uint32_t> sizes(n_jobs), crcs(n_jobs), status(n_jobs);
  std::vector<uint8_t> dst_host(batch.dst_total + 1);
  ASSERT_CUDA(cudaMemcpy(sizes.data(), batch.sizes.get(), 4 * n_jobs, cudaMemcpyDeviceToHost));
  ASSERT_CUDA(cudaMemcpy(crcs.data(), batch.crcs.get(), 4 * n_jobs, cudaMemcpyDeviceToHost));
  ASSERT_CUDA(cudaMemcpy(status.data(), batch.status.get(), 4 * n_jobs, cudaMemcpyDeviceToHost));
  ASSERT_CUDA(cudaMemcpy(dst_host.data(), batch.dst.get(), dst_host.size(), cudaMemcpyDeviceToHost));

  libdeflate_decompressor* d = libdeflate_alloc_decompressor();
  int failures = 0, n_overflow = 0;
  for (size_t i = 0; i < n_jobs && failures < 10; ++i) {
    const auto& in = batch.inputs[i];
    const std::string label = "job " + std::to_string(i) + " (" + std::to_string(in.size()) + " bytes)";
    const uint8_t* out = dst_host.data() + batch.dst_off[i];
    // Nothing past the stream: the rest of the capacity and the guard keep their poison.
    const size_t end = batch.capacity[i] + kGuardBytes;
    if (status[i] != want_status[i] || sizes[i] != want[i].size() ||
        !std::all_of(out + sizes[i], out + end, [](uint8_t x) { return x == kPoison; })) {
      ADD_FAILURE() << label << ": status " << status[i] << " size " << sizes[i] << ", host mirror " << want[i].size();
      ++failures;
      continue;
    }
    if (status[i] == kEncodeOverflow) {
      ++n_overflow;
      EXPECT_EQ(crcs[i], 0u) << label;
      continue;
    }
    if (!std::equal(want[i].begin(), want[i].end(), out)) {
      ADD_FAILURE() << label << ": bytes differ from the host mirror";
      ++failures;
      continue;
    }
    EXPECT_EQ(crcs[i], uint32_t(crc32(0, out, uInt(sizes[i])))) << label;
    std::vector<uint8_t> back(in.size());
    size_t in_used = 0, out_got = 0;
    EXPECT_EQ(libdeflate_deflate_decompress_ex(d, out, sizes[i], back.data(), back.size(), &in_used, &out_got),
              LIBDEFLATE_SUCCESS) << label;
    EXPECT_EQ(in_used, sizes[i]) << label;
    EXPECT_EQ(back, in) << label;
  }
  libdeflate_free_decompressor(d);
  EXPECT_GT(n_overflow, 0);

  // Round trip on the device: the encoder's streams, where they lie, into the GPU inflate kernel.
  std::vector<InflateJob> inflate_jobs;
  std::vector<size_t> raw_off, which;
  size_t raw_total = 0;
  for (size_t i = 0; i < n_jobs; ++i) {
    if (status[i] != kEncodeOk) continue;
    InflateJob j;
    j.src = batch.dst.as<uint8_t>() + batch.dst_off[i];
    j.src_bytes = sizes[i];
    j.dst_bytes = uint32_t(batch.inputs[i].size());
    j.crc32 = crcs[i];
    raw_off.push_back(raw_total);
    which.push_back(i);
    raw_total += batch.inputs[i].size();
    inflate_jobs.push_back(j);
  }
  DeviceBuffer raw, ijobs, istatus;
  ASSERT_TRUE(raw.reserve(raw_total + 1).is_ok());
  ASSERT_TRUE(ijobs.reserve(sizeof(InflateJob) * inflate_jobs.size()).is_ok());
  ASSERT_TRUE(istatus.reserve(4 * inflate_jobs.size()).is_ok());
  for (size_t k = 0; k < inflate_jobs.size(); ++k) inflate_jobs[k].dst = raw.as<uint8_t>() + raw_off[k];
  ASSERT_CUDA(cudaMemcpy(ijobs.get(), inflate_jobs.data(), sizeof(InflateJob) * inflate_jobs.size(), cudaMemcpyHostToDevice));
  ASSERT_CUDA(launch_inflate(ijobs.as<InflateJob>(), int(inflate_jobs.size()), /*verify_crc=*/true, istatus.as<uint32_t>(), nullptr));
  std::vector<uint32_t> inflate_status(inflate_jobs.size());
  std::vector<uint8_t> raw_host(raw_total + 1);
  ASSERT_CUDA(cudaMemcpy(inflate_status.data(), istatus.get(), 4 * inflate_jobs.size(), cudaMemcpyDeviceToHost));
  ASSERT_CUDA(cudaMemcpy(raw_host.data(), raw.get(), raw_host.size(), cudaMemcpyDeviceToHost));
  failures = 0;
  for (size_t k = 0; k < inflate_jobs.size() && failures < 10; ++k) {
    const auto& in = batch.inputs[which[k]];
    if (inflate_status[k] != kInflateOk || !std::equal(in.begin(), in.end(), raw_host.begin() + long(raw_off[k]))) {
      ADD_FAILURE() << "job " << which[k] << ": GPU inflate status " << inflate_status[k] << " ("
                    << inflate_status_name(inflate_status[k]) << ")";
      ++failures;
    }
  }
  std::printf("%zu jobs encoded on the GPU (%d overflow checks), %zu round-tripped through the GPU inflater\n", n_jobs,
              n_overflow, inflate_jobs.size());
}

TEST(CudaDeflateEncode, EmptyBatchAndTooLargeInput) {
  SKIP_WITHOUT_DEVICE();
  EXPECT_EQ(launch_deflate_encode(nullptr, 0, nullptr, nullptr, nullptr, nullptr), cudaSuccess);
  EXPECT_EQ(launch_deflate_encode(nullptr, -1, nullptr, nullptr, nullptr, nullptr), cudaErrorInvalidValue);
  DeviceBuffer jobs, out;
  ASSERT_TRUE(jobs.reserve(sizeof(DeflateEncodeJob)).is_ok());
  ASSERT_TRUE(out.reserve(64).is_ok());
  // The kernel rejects the size before reading src: a one-byte buffer stands in for 2^28 + 1 bytes.
  const DeflateEncodeJob job = {out.as<uint8_t>(), out.as<uint8_t>() + 32, kMaxEncodeInputBytes + 1, 16};
  ASSERT_CUDA(cudaMemcpy(jobs.get(), &job, sizeof(job), cudaMemcpyHostToDevice));
  ASSERT_CUDA(launch_deflate_encode(jobs.as<DeflateEncodeJob>(), 1, out.as<uint32_t>(), out.as<uint32_t>() + 1,
                                    out.as<uint32_t>() + 2, nullptr));
  uint32_t res[3] = {};
  ASSERT_CUDA(cudaMemcpy(res, out.get(), sizeof(res), cudaMemcpyDeviceToHost));
  EXPECT_EQ(res[0], 0u);
  EXPECT_EQ(res[2], kEncodeInputTooLarge);
}

// Informational: encode throughput on 4-bit-like chunks (two centred 4-bit codes per byte).
TEST(CudaDeflateEncode, ThroughputOn4BitChunks) {
  SKIP_WITHOUT_DEVICE();
  std::mt19937_64 rng(12);
  for (size_t chunk_bytes : {size_t(16384), size_t(65536)}) {
    Batch batch;
    const size_t n_jobs = (size_t(64) << 20) / chunk_bytes;  // 64 MiB of input per launch
    for (size_t i = 0; i < n_jobs; ++i) {
      batch.inputs.push_back(make_input(2, chunk_bytes, rng));
      batch.capacity.push_back(uint32_t(deflate_encode_bound(chunk_bytes)));
    }
    batch.layout(rng, /*misalign=*/false);
    ASSERT_CUDA(batch.upload_and_launch(nullptr));
    ASSERT_CUDA(cudaDeviceSynchronize());
    cudaEvent_t e0, e1;
    ASSERT_CUDA(cudaEventCreate(&e0));
    ASSERT_CUDA(cudaEventCreate(&e1));
    const int n_repeats = 10;
    ASSERT_CUDA(cudaEventRecord(e0, nullptr));
    for (int r = 0; r < n_repeats; ++r) ASSERT_CUDA(batch.launch());
    ASSERT_CUDA(cudaEventRecord(e1, nullptr));
    ASSERT_CUDA(cudaEventSynchronize(e1));
    float ms = 0;
    ASSERT_CUDA(cudaEventElapsedTime(&ms, e0, e1));
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    std::vector<uint32_t> status(n_jobs), sizes(n_jobs);
    ASSERT_CUDA(cudaMemcpy(status.data(), batch.status.get(), 4 * n_jobs, cudaMemcpyDeviceToHost));
    ASSERT_CUDA(cudaMemcpy(sizes.data(), batch.sizes.get(), 4 * n_jobs, cudaMemcpyDeviceToHost));
    EXPECT_TRUE(std::all_of(status.begin(), status.end(), [](uint32_t s) { return s == kEncodeOk; }));
    double out_bytes = 0;
    for (uint32_t s : sizes) out_bytes += s;
    const double in_bytes = double(n_jobs * chunk_bytes);
    std::printf("encode throughput (informational): %zu KiB chunks x %zu: %.3f ms per launch, %.1f GB/s of input, "
                "ratio %.3f\n", chunk_bytes / 1024, n_jobs, ms / n_repeats, in_bytes * n_repeats / (ms * 1e-3) / 1e9,
                out_bytes / in_bytes);
  }
}

}  // namespace
}  // namespace kvtc::cuda
