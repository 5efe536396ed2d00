// BatchEncoder (kvtc/kvtc_cuda.hpp): device caches in, complete containers assembled on the device.
// Oracle: encode_on_gpu of the same cache (same chunks, same GPU DEFLATE) gives identical bytes. Every
// container parses, decodes with kvtc::decode and the reference decoder (exact tokens bit for bit);
// paged and contiguous views of one cache give identical containers; workspace_bytes is exact enough
// (one byte less: OUT_OF_MEMORY); bad views and calibrations give statuses; the bf16 projection keeps the
// fp32 projection's error on a real cache. Skips without a GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/reference_decoder.hpp"
#include "core/token_vectors.hpp"
#include "cuda/cuda_backend.hpp"
#include "cuda_test_util.hpp"
#include "format/container.hpp"
#include "format/quant_rules.hpp"
#include "kvtc/kvtc_cuda.hpp"
#include "test_util.hpp"

namespace kvtc {
namespace {

using cuda::DeviceCacheView;

#define CUDA_OK(expr) ASSERT_EQ((expr), cudaSuccess) << #expr

uint32_t to_bits(float x, DType t) {
  if (t == DType::kF32) return f32_bits(x);
  return t == DType::kF16 ? f32_to_f16_bits(x) : f32_to_bf16_bits(x);
}
float from_bits(uint32_t b, DType t) {
  if (t == DType::kF32) return bits_f32(b);
  return t == DType::kF16 ? f16_bits_to_f32(uint16_t(b)) : bits_f32(b << 16);
}

// Device memory freed at scope exit.
struct Dev {
  std::vector<void*> ptrs;
  ~Dev() {
    for (void* p : ptrs) cudaFree(p);
  }
  void* alloc(size_t n) {
    void* p = nullptr;
    if (cudaMalloc(&p, std::max<size_t>(n, 1)) != cudaSuccess) return nullptr;
    ptrs.push_back(p);
    return p;
  }
  void* upload(const void* src, size_t n) {
    void* p = alloc(n);
    if (p && n) cudaMemcpy(p, src, n, cudaMemcpyHostToDevice);
    return p;
  }
};

// The cache's values rounded to its dtype (so host and device see the same numbers), and its element
// bits per layer, [H][T][D].
std::vector<std::vector<uint8_t>> layer_bytes(KVCache& c, int s) {
  const size_t es = dtype_size_bytes(c.dtype);
  std::vector<std::vector<uint8_t>> out;
  for (auto& layer : (s == 0 ? c.k : c.v)) {
    std::vector<uint8_t> b(layer.size() * es);
    for (size_t i = 0; i < layer.size(); ++i) {
      const uint32_t bits = to_bits(layer[i], c.dtype);
      layer[i] = from_bits(bits, c.dtype);
      std::memcpy(b.data() + i * es, &bits, es);  // little-endian low bytes
    }
    out.push_back(std::move(b));
  }
  return out;
}

DeviceCacheView contiguous_view(KVCache& c, Dev& dev) {
  DeviceCacheView v;
  v.shape = c.shape;
  v.dtype = c.dtype;
  v.n_tokens = c.n_tokens;
  v.position_offset = c.position_offset;
  v.metadata = c.metadata;
  for (int s = 0; s < 2; ++s)
    for (const auto& b : layer_bytes(c, s)) (s == 0 ? v.k_layers : v.v_layers).push_back(dev.upload(b.data(), b.size()));
  return v;
}

// vLLM's paged layout with a shuffled block table (and one spare block).
DeviceCacheView paged_view(KVCache& c, Dev& dev, int block_size, uint64_t seed) {
  DeviceCacheView v;
  v.shape = c.shape;
  v.dtype = c.dtype;
  v.n_tokens = c.n_tokens;
  v.position_offset = c.position_offset;
  v.metadata = c.metadata;
  const int64_t H = c.shape.n_kv_heads, D = c.shape.head_dim, T = c.n_tokens;
  const size_t es = dtype_size_bytes(c.dtype);
  const int64_t n_blocks = (T + block_size - 1) / block_size + 1;
  std::vector<int32_t> btable(static_cast<size_t>(n_blocks));
  std::iota(btable.begin(), btable.end(), 0);
  std::shuffle(btable.begin(), btable.end(), std::mt19937_64(seed));
  const auto kb = layer_bytes(c, 0), vb = layer_bytes(c, 1);
  for (int l = 0; l < c.shape.n_layers; ++l) {
    std::vector<uint8_t> cache(size_t(n_blocks) * 2 * block_size * H * D * es, 0xAB);
    for (int s = 0; s < 2; ++s)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t t = 0; t < T; ++t) {
          const int64_t blk = btable[size_t(t / block_size)], slot = t % block_size;
          const size_t dst = size_t((((blk * 2 + s) * block_size + slot) * H + h) * D) * es;
          const size_t src = size_t((h * T + t) * D) * es;
          std::memcpy(cache.data() + dst, (s == 0 ? kb : vb)[size_t(l)].data() + src, size_t(D) * es);
        }
    v.paged_layers.push_back(dev.upload(cache.data(), cache.size()));
  }
  v.block_table_dev = static_cast<const int32_t*>(dev.upload(btable.data(), btable.size() * 4));
  v.block_size = block_size;
  return v;
}

struct BatchCase {
  DType dtype;
  RopeStyle style;
};

class CudaBatchEncode : public ::testing::TestWithParam<BatchCase> {};

TEST_P(CudaBatchEncode, MatchesEncodeOnGpuAndDecodes) {
  SKIP_WITHOUT_DEVICE();
  const BatchCase bc = GetParam();
  ModelShape shape;
  shape.n_layers = 3;
  shape.n_kv_heads = 2;
  shape.head_dim = 32;
  shape.rope.theta = 10000.0;
  shape.rope.style = bc.style;
  // Lengths: many compressed tokens, a few, none (all exact); not multiples of the block size.
  const int64_t lengths[] = {301, 57, 20};
  const int64_t positions[] = {0, 1000, 7};
  std::vector<KVCache> caches;
  for (int i = 0; i < 3; ++i) caches.push_back(testing::synthetic_cache(shape, lengths[i], 5 + i, bc.dtype, positions[i]));
  caches[0].metadata["note"] = "batch";
  for (auto& c : caches)
    for (int s = 0; s < 2; ++s) layer_bytes(c, s);  // round to the dtype
  const CalibrationData cald = testing::calibration_8_20(caches[0], 96, 4, 16);
  const Calibration cal(std::make_shared<CalibrationData>(cald));
  auto dcal = cuda::DeviceCalibration::upload(cal, {}, nullptr);
  ASSERT_TRUE(dcal.is_ok()) << dcal.status().to_string();
  EncodeOptions eo;
  eo.target_ratio = 8;
  eo.chunk_tokens = 64;
  eo.chunk_max_bytes = 600;  // several exact chunks per segment
  eo.measure_error = false;

  Dev dev;
  std::vector<DeviceCacheView> views;
  views.push_back(contiguous_view(caches[0], dev));
  views.push_back(paged_view(caches[0], dev, 16, 1));  // the same cache, paged
  views.push_back(paged_view(caches[1], dev, 16, 2));
  views.push_back(contiguous_view(caches[2], dev));
  const int owner[] = {0, 0, 1, 2};

  auto ws = cuda::BatchEncoder::workspace_bytes(*dcal, views, eo);
  ASSERT_TRUE(ws.is_ok()) << ws.status().to_string();
  auto bounds = cuda::BatchEncoder::container_bound_bytes(*dcal, views, eo);
  ASSERT_TRUE(bounds.is_ok()) << bounds.status().to_string();
  std::vector<uint64_t> offsets;
  uint64_t total = 0;
  for (uint64_t b : *bounds) offsets.push_back(total), total += b + 3;  // odd offsets on purpose
  auto* out = static_cast<uint8_t*>(dev.alloc(total));
  auto* sizes = static_cast<uint64_t*>(dev.alloc(views.size() * 8));
  void* wsp = dev.alloc(*ws);
  ASSERT_TRUE(out && sizes && wsp);
  cudaStream_t stream;
  CUDA_OK(cudaStreamCreate(&stream));

  cuda::BatchEncoder enc;
  // (4) One byte too few: OUT_OF_MEMORY, before anything is queued.
  ASSERT_TRUE(enc.set_workspace(wsp, *ws - 1).is_ok());
  EXPECT_EQ(enc.encode(*dcal, views, eo, out, offsets, sizes, stream).code(), StatusCode::kOutOfMemory);
  ASSERT_TRUE(enc.set_workspace(wsp, *ws).is_ok());
  const Status st = enc.encode(*dcal, views, eo, out, offsets, sizes, stream);
  ASSERT_TRUE(st.is_ok()) << st.to_string();
  const Status done = enc.status();
  ASSERT_TRUE(done.is_ok()) << done.to_string();
  // The stage times a bench reads: every stage measured, and together no more than the whole.
  const cuda::BatchEncodeTimes tm = enc.last_times();
  EXPECT_GT(tm.host_s, 0.0);
  EXPECT_GT(tm.project_s, 0.0);
  EXPECT_GT(tm.entropy_s, 0.0);
  EXPECT_GT(tm.assemble_s, 0.0);
  EXPECT_GE(tm.upload_s, 0.0);
  EXPECT_GE(tm.exact_s, 0.0);
  EXPECT_NEAR(tm.upload_s + tm.project_s + tm.exact_s + tm.entropy_s + tm.assemble_s, tm.total_s, 1e-4);

  std::vector<uint8_t> all(total);
  std::vector<uint64_t> sz(views.size());
  CUDA_OK(cudaMemcpy(all.data(), out, total, cudaMemcpyDeviceToHost));
  CUDA_OK(cudaMemcpy(sz.data(), sizes, sz.size() * 8, cudaMemcpyDeviceToHost));
  std::vector<std::vector<uint8_t>> got(views.size());
  for (size_t i = 0; i < views.size(); ++i) {
    ASSERT_GT(sz[i], 0u);
    ASSERT_LE(sz[i], (*bounds)[i]);
    got[i].assign(all.begin() + long(offsets[i]), all.begin() + long(offsets[i] + sz[i]));
    const KVCache& c = caches[size_t(owner[i])];
    // (1) + (3): encode_on_gpu's bytes exactly, and the size in device memory is their length.
    auto ref = cuda::encode_on_gpu(cal, c, eo);
    ASSERT_TRUE(ref.is_ok()) << ref.status().to_string();
    EXPECT_EQ(sz[i], ref->bytes.size()) << "sequence " << i;
    EXPECT_TRUE(got[i] == ref->bytes) << "sequence " << i << " differs from encode_on_gpu";
    // (2) Parses and decodes; exact tokens bit for bit.
    auto parsed = parse_container(got[i].data(), got[i].size());
    ASSERT_TRUE(parsed.is_ok()) << parsed.status().to_string();
    auto dec = decode(cal, got[i].data(), got[i].size());
    ASSERT_TRUE(dec.is_ok()) << dec.status().to_string();
    auto rdec = reference_decode(cald, got[i].data(), got[i].size());
    ASSERT_TRUE(rdec.is_ok()) << rdec.status().to_string();
    const int64_t T = c.n_tokens, H = c.shape.n_kv_heads, D = c.shape.head_dim;
    const int64_t n_head = parsed->header.n_head_exact, n_tail = parsed->header.n_tail_exact;
    for (int l = 0; l < c.shape.n_layers; ++l)
      for (int s = 0; s < 2; ++s) {
        const auto& want = (s == 0 ? c.k : c.v)[size_t(l)];
        const auto& a = (s == 0 ? dec->k : dec->v)[size_t(l)];
        const auto& b = (s == 0 ? rdec->k : rdec->v)[size_t(l)];
        for (int64_t h = 0; h < H; ++h)
          for (int64_t t = 0; t < T; ++t) {
            if (t >= n_head && t < T - n_tail) continue;
            for (int64_t d = 0; d < D; ++d) {
              const size_t e = size_t((h * T + t) * D + d);
              ASSERT_EQ(f32_bits(a[e]), f32_bits(want[e])) << i << " " << l << " " << s << " " << t;
              ASSERT_EQ(f32_bits(b[e]), f32_bits(want[e])) << i << " " << l << " " << s << " " << t;
            }
          }
      }
  }
  // (6) Paged and contiguous views of one cache: the same container.
  EXPECT_TRUE(got[0] == got[1]);
  // The TF32 projection: BatchEncoder and encode_on_gpu still give the same bytes.
  enc.set_projection(cuda::EncodeProjection::kTf32);
  ASSERT_TRUE(enc.encode(*dcal, views, eo, out, offsets, sizes, stream).is_ok());
  ASSERT_TRUE(enc.status().is_ok());
  CUDA_OK(cudaMemcpy(all.data(), out, total, cudaMemcpyDeviceToHost));
  CUDA_OK(cudaMemcpy(sz.data(), sizes, sz.size() * 8, cudaMemcpyDeviceToHost));
  for (size_t i = 0; i < views.size(); ++i) {
    auto ref = cuda::encode_on_gpu(cal, caches[size_t(owner[i])], eo, cuda::EncodeProjection::kTf32);
    ASSERT_TRUE(ref.is_ok()) << ref.status().to_string();
    ASSERT_EQ(sz[i], ref->bytes.size()) << "sequence " << i;
    EXPECT_TRUE(std::equal(ref->bytes.begin(), ref->bytes.end(), all.begin() + long(offsets[i])))
        << "TF32: sequence " << i << " differs from encode_on_gpu";
    EXPECT_TRUE(decode(cal, ref->bytes.data(), ref->bytes.size()).is_ok());
  }
  cudaStreamDestroy(stream);
}

INSTANTIATE_TEST_SUITE_P(Cases, CudaBatchEncode,
                         ::testing::Values(BatchCase{DType::kBF16, RopeStyle::kHalf},
                                           BatchCase{DType::kF16, RopeStyle::kInterleaved},
                                           BatchCase{DType::kF32, RopeStyle::kHalf},
                                           BatchCase{DType::kBF16, RopeStyle::kInterleaved}),
                         [](const ::testing::TestParamInfo<BatchCase>& p) {
                           return std::string(p.param.dtype == DType::kBF16   ? "bf16"
                                              : p.param.dtype == DType::kF16 ? "f16"
                                                                             : "f32") +
                                  (p.param.style == RopeStyle::kHalf ? "_half" : "_interleaved");
                         });

TEST(CudaBatchEncodeErrors, BadViewsAndCalibrations) {
  SKIP_WITHOUT_DEVICE();
  ModelShape shape;
  shape.n_layers = 2;
  shape.n_kv_heads = 2;
  shape.head_dim = 16;
  shape.rope.theta = 10000.0;
  KVCache cache = testing::synthetic_cache(shape, 100, 3, DType::kBF16, 0);
  const CalibrationData cald = testing::calibration_8_20(cache, 64, 4, 16);
  const Calibration cal(std::make_shared<CalibrationData>(cald));
  ModelShape other = shape;
  other.n_kv_heads = 4;
  KVCache other_cache = testing::synthetic_cache(other, 100, 3, DType::kBF16, 0);
  const Calibration other_cal(std::make_shared<CalibrationData>(testing::calibration_8_20(other_cache, 64, 4, 16)));
  auto dcal = cuda::DeviceCalibration::upload(cal, {}, nullptr);
  auto dother = cuda::DeviceCalibration::upload(other_cal, {}, nullptr);
  ASSERT_TRUE(dcal.is_ok() && dother.is_ok());
  EncodeOptions eo;
  eo.target_ratio = 8;
  eo.measure_error = false;
  Dev dev;
  std::vector<DeviceCacheView> views = {contiguous_view(cache, dev)};
  auto ws = cuda::BatchEncoder::workspace_bytes(*dcal, views, eo);
  auto bounds = cuda::BatchEncoder::container_bound_bytes(*dcal, views, eo);
  ASSERT_TRUE(ws.is_ok()) << ws.status().to_string();
  ASSERT_TRUE(bounds.is_ok()) << bounds.status().to_string();
  void* wsp = dev.alloc(*ws);
  auto* out = static_cast<uint8_t*>(dev.alloc((*bounds)[0]));
  auto* sizes = static_cast<uint64_t*>(dev.alloc(8));
  cuda::BatchEncoder enc;
  ASSERT_TRUE(enc.set_workspace(wsp, *ws).is_ok());
  // (5) A calibration of another shape.
  EXPECT_EQ(enc.encode(*dother, views, eo, out, {0}, sizes, nullptr).code(), StatusCode::kMismatch);
  EXPECT_EQ(cuda::BatchEncoder::workspace_bytes(*dother, views, eo).status().code(), StatusCode::kMismatch);
  // Bad views.
  auto bad = views;
  bad[0].k_layers.pop_back();
  EXPECT_EQ(enc.encode(*dcal, bad, eo, out, {0}, sizes, nullptr).code(), StatusCode::kInvalidArgument);
  bad = views;
  bad[0].v_layers[1] = nullptr;
  EXPECT_EQ(enc.encode(*dcal, bad, eo, out, {0}, sizes, nullptr).code(), StatusCode::kInvalidArgument);
  bad = views;
  bad[0].paged_layers = bad[0].k_layers;
  EXPECT_EQ(enc.encode(*dcal, bad, eo, out, {0}, sizes, nullptr).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(enc.encode(*dcal, views, eo, out, {}, sizes, nullptr).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(enc.encode(*dcal, views, eo, nullptr, {0}, sizes, nullptr).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(enc.encode(*dcal, {}, eo, out, {}, sizes, nullptr).code(), StatusCode::kInvalidArgument);
  // And the good batch still encodes.
  ASSERT_TRUE(enc.encode(*dcal, views, eo, out, {0}, sizes, nullptr).is_ok());
  EXPECT_TRUE(enc.status().is_ok());
}

// The bf16 projection (BatchEncoder only) on a real cache of the reference model at 8x and 20x: a
// restored error within 2% of the fp32 projection's in each stream, exact tokens bit for bit, paged
// equal to contiguous, every container decodable by the CPU decoder; encode_on_gpu, and a calibration
// uploaded without its bf16 basis, refuse it.
TEST(CudaBatchEncodeBf16, RealCacheKeepsTheError) {
  SKIP_WITHOUT_DEVICE();
  auto cache = read_cache(testing::repo_data("small-test.safetensors"));
  ASSERT_TRUE(cache.is_ok()) << cache.status().to_string();
  CalibrateOptions co;
  co.ratios = {8, 20};
  auto cal = calibrate({testing::repo_data("small-calib.safetensors")}, co);
  ASSERT_TRUE(cal.is_ok()) << cal.status().to_string();
  auto dcal = cuda::DeviceCalibration::upload(*cal, {}, nullptr);
  ASSERT_TRUE(dcal.is_ok()) << dcal.status().to_string();
  Dev dev;
  const std::vector<DeviceCacheView> views = {contiguous_view(*cache, dev), paged_view(*cache, dev, 16, 3)};
  const int64_t T = cache->n_tokens, n_sink = cal->data().n_sink_tokens, t1 = T - cal->data().n_window_tokens;
  for (double ratio : {8.0, 20.0}) {
    SCOPED_TRACE("ratio " + std::to_string(ratio));
    EncodeOptions eo;
    eo.target_ratio = ratio;
    eo.measure_error = false;
    auto ws = cuda::BatchEncoder::workspace_bytes(*dcal, views, eo);
    auto bounds = cuda::BatchEncoder::container_bound_bytes(*dcal, views, eo);
    ASSERT_TRUE(ws.is_ok() && bounds.is_ok());
    const std::vector<uint64_t> offsets = {0, (*bounds)[0]};
    auto* out = static_cast<uint8_t*>(dev.alloc((*bounds)[0] + (*bounds)[1]));
    auto* sizes = static_cast<uint64_t*>(dev.alloc(16));
    void* wsp = dev.alloc(*ws);
    ASSERT_TRUE(out && sizes && wsp);
    cuda::BatchEncoder enc;
    ASSERT_TRUE(enc.set_workspace(wsp, *ws).is_ok());
    auto run = [&](cuda::EncodeProjection projection) {
      enc.set_projection(projection);
      std::vector<std::vector<uint8_t>> got(2);
      const Status st = enc.encode(*dcal, views, eo, out, offsets, sizes, nullptr);
      EXPECT_TRUE(st.is_ok()) << st.to_string();
      EXPECT_TRUE(enc.status().is_ok());
      uint64_t sz[2] = {0, 0};
      EXPECT_EQ(cudaMemcpy(sz, sizes, 16, cudaMemcpyDeviceToHost), cudaSuccess);
      for (int i = 0; i < 2; ++i) {
        got[size_t(i)].resize(sz[i]);
        EXPECT_EQ(cudaMemcpy(got[size_t(i)].data(), out + offsets[size_t(i)], sz[i], cudaMemcpyDeviceToHost), cudaSuccess);
      }
      return got;
    };
    const auto f32 = run(cuda::EncodeProjection::kFp32);
    const auto bf = run(cuda::EncodeProjection::kBf16);
    ASSERT_FALSE(bf[0].empty());
    EXPECT_TRUE(bf[0] == bf[1]) << "paged and contiguous views differ under the bf16 projection";
    auto df = decode(*cal, f32[0].data(), f32[0].size());
    auto db = decode(*cal, bf[0].data(), bf[0].size());
    ASSERT_TRUE(df.is_ok() && db.is_ok()) << db.status().to_string();
    double err_f[2] = {0, 0}, err_b[2] = {0, 0}, energy[2] = {0, 0};
    for (int l = 0; l < cache->shape.n_layers; ++l)
      for (int h = 0; h < cache->shape.n_kv_heads; ++h)
        for (int64_t t = 0; t < T; ++t)
          for (int s = 0; s < 2; ++s) {
            const float* want = s == 0 ? cache->k_row(l, h, t) : cache->v_row(l, h, t);
            const float* a = s == 0 ? df->k_row(l, h, t) : df->v_row(l, h, t);
            const float* b = s == 0 ? db->k_row(l, h, t) : db->v_row(l, h, t);
            if (t < n_sink || t >= t1) {  // exact tokens: the input's bits
              ASSERT_EQ(0, std::memcmp(want, b, cache->shape.head_dim * sizeof(float))) << l << " " << t;
              continue;
            }
            for (int d = 0; d < cache->shape.head_dim; ++d) {
              err_f[s] += (double(a[d]) - want[d]) * (double(a[d]) - want[d]);
              err_b[s] += (double(b[d]) - want[d]) * (double(b[d]) - want[d]);
              energy[s] += double(want[d]) * want[d];
            }
          }
    for (int s = 0; s < 2; ++s) {
      std::printf("  ratio %.0f %s: relative MSE fp32 projection %.5f, bf16 %.5f (x%.4f); files %zu / %zu bytes\n", ratio,
                  s == 0 ? "keys" : "values", err_f[s] / energy[s], err_b[s] / energy[s], err_b[s] / err_f[s],
                  f32[0].size(), bf[0].size());
      EXPECT_GT(err_b[s], 0.0);
      EXPECT_LE(err_b[s], 1.02 * err_f[s]) << (s == 0 ? "keys" : "values");
    }
  }
  // encode_on_gpu has no bf16 projection; without the bf16 basis BatchEncoder refuses it.
  EncodeOptions eo;
  eo.measure_error = false;
  EXPECT_EQ(cuda::encode_on_gpu(*cal, *cache, eo, cuda::EncodeProjection::kBf16).status().code(),
            StatusCode::kUnsupported);
  cuda::DeviceCalibration::Options no_bf16;
  no_bf16.bf16 = false;
  auto dcal32 = cuda::DeviceCalibration::upload(*cal, no_bf16, nullptr);
  ASSERT_TRUE(dcal32.is_ok());
  auto ws = cuda::BatchEncoder::workspace_bytes(*dcal32, {views[0]}, eo);
  auto bounds = cuda::BatchEncoder::container_bound_bytes(*dcal32, {views[0]}, eo);
  ASSERT_TRUE(ws.is_ok() && bounds.is_ok());
  void* wsp = dev.alloc(*ws);
  auto* out = static_cast<uint8_t*>(dev.alloc((*bounds)[0]));
  auto* sizes = static_cast<uint64_t*>(dev.alloc(8));
  cuda::BatchEncoder enc;
  ASSERT_TRUE(enc.set_workspace(wsp, *ws).is_ok());
  enc.set_projection(cuda::EncodeProjection::kBf16);
  EXPECT_EQ(enc.encode(*dcal32, {views[0]}, eo, out, {0}, sizes, nullptr).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvtc
