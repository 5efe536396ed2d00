// The GPU encoder against the CPU encoder: the same chunk table, chunks that plain zlib inflates,
// containers that the reference and fast CPU decoders restore, and (the strongest oracle) side and
// codes chunks byte-identical to what the CPU quantiser and packer make of the GPU's own
// coefficients. Restored caches agree with a CPU-encoded file's: exact tokens bit for bit, per-layer
// relative MSE within 1% (+1e-6) of the CPU container's. Bad inputs give statuses. A large synthetic
// cache prints the encode throughput with per-stage device times.
//
// Synthetic calibrations are made here (mean + random orthonormal basis + hand-made allocations that use
// every group kind and width 1..8), as in test_cuda_decode.cpp; the real cache uses a calibration of
// data/small-calib.safetensors.
#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/backend.hpp"
#include "core/chunk_codec.hpp"
#include "core/reference_decoder.hpp"
#include "core/token_vectors.hpp"
#include "cpu/cpu_backend.hpp"
#include "cuda/cuda_backend.hpp"
#include "cuda_test_util.hpp"
#include "format/container.hpp"
#include "kvtc/kvtc_cuda.hpp"
#include "test_util.hpp"
#include "util/half.hpp"

namespace kvtc {
namespace {

using testing::fixed_allocation;
using testing::group;

// Plain zlib, as FORMAT.md promises: the stream inflates to exactly raw_bytes and ends there.
bool zlib_inflate(const uint8_t* src, size_t n, size_t raw_bytes, std::vector<uint8_t>* out) {
  z_stream s{};
  if (inflateInit2(&s, -15) != Z_OK) return false;
  out->assign(raw_bytes + 1, 0);
  s.next_in = const_cast<uint8_t*>(src);
  s.avail_in = uInt(n);
  s.next_out = out->data();
  s.avail_out = uInt(out->size());
  const int r = inflate(&s, Z_FINISH);
  const bool ok = r == Z_STREAM_END && s.total_out == raw_bytes && s.avail_in == 0;
  inflateEnd(&s);
  out->resize(raw_bytes);
  return ok;
}

// What the CPU encoder writes for chunk e given coefficients coef ([n_kept][m], component-major):
// its quantize_block (quantize_token per token and group) and chunk_codec's packers.
std::vector<uint8_t> cpu_chunk_raw(const StreamAllocation& a, const std::vector<float>& coef, int64_t m,
                                   const ChunkEntry& e, int64_t t0) {
  const int64_t n = e.n_tokens, b0 = int64_t(e.token_begin) - t0;
  BlockSymbols b;
  b.n_tokens = n;
  b.sym.assign(size_t(a.n_kept()) * n, 0);
  b.side.assign(a.groups.size(), {});
  std::vector<float> x;
  std::vector<uint8_t> codes;
  for (size_t gi = 0; gi < a.groups.size(); ++gi) {
    const Group& g = a.groups[gi];
    if (g.kind == GroupKind::kDropped) continue;
    const int gn = int(g.n_components);
    const bool affine = g.kind == GroupKind::kIntAffine;
    if (g.kind != GroupKind::kFloat16) b.side[gi].assign(size_t(affine ? 2 * n : n), 0);
    x.resize(size_t(gn));
    codes.resize(size_t(gn));
    for (int64_t i = 0; i < n; ++i) {
      for (int j = 0; j < gn; ++j) x[size_t(j)] = coef[size_t(g.first_component + j) * m + b0 + i];
      if (g.kind == GroupKind::kFloat16) {
        for (int j = 0; j < gn; ++j) {
          const float c = std::clamp(x[size_t(j)], -65504.0f, 65504.0f);
          b.sym[size_t(g.first_component + j) * n + i] = f32_to_f16(std::isnan(c) ? 0.0f : c);
        }
        continue;
      }
      const TokenQuantParams q = quantize_token(x.data(), gn, g.kind, g.width_bits, codes.data());
      b.side[gi][size_t(i)] = q.scale_f16;
      if (affine) b.side[gi][size_t(n + i)] = q.shift_f16;
      for (int j = 0; j < gn; ++j) b.sym[size_t(g.first_component + j) * n + i] = codes[size_t(j)];
    }
  }
  std::vector<uint8_t> raw;
  if (e.kind == ChunkKind::kSide) pack_side(a, b, raw);
  else pack_codes(a, b, e.item_begin, e.item_begin + e.n_items, e.layout, raw);
  return raw;
}

double relative_mse(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return den > 0 ? num / den : num;
}

// All checks of one input: GPU container against the CPU's (see the file comment).
void check_against_cpu(const CalibrationData& cal, const KVCache& cache, const EncodeOptions& eo) {
  auto cpu_enc = make_cpu_backend()->encode(cal, cache, eo, nullptr);
  ASSERT_TRUE(cpu_enc.is_ok()) << cpu_enc.status().to_string();
  auto gpu_backend = make_cuda_backend();
  CudaEncodeProbe probe;
  probe.keep_outputs = true;
  auto gpu_enc = cuda_encode_probe(*gpu_backend, cal, cache, eo, &probe);
  ASSERT_TRUE(gpu_enc.is_ok()) << gpu_enc.status().to_string();
  const std::vector<uint8_t>& cb = cpu_enc->bytes;
  const std::vector<uint8_t>& gb = gpu_enc->bytes;

  // 1. Same header and chunk table, up to stored sizes (and the layout where the dense rule differs).
  auto cp = parse_container(cb.data(), cb.size());
  auto gp = parse_container(gb.data(), gb.size());
  ASSERT_TRUE(cp.is_ok()) << cp.status().to_string();
  ASSERT_TRUE(gp.is_ok()) << gp.status().to_string();
  const ContainerHeader &ch = cp->header, &gh = gp->header;
  EXPECT_EQ(gh.n_tokens, ch.n_tokens);
  EXPECT_EQ(gh.n_head_exact, ch.n_head_exact);
  EXPECT_EQ(gh.n_tail_exact, ch.n_tail_exact);
  EXPECT_EQ(gh.position_offset, ch.position_offset);
  EXPECT_EQ(gh.dtype, ch.dtype);
  EXPECT_EQ(gh.metadata, ch.metadata);
  for (int s = 0; s < 2; ++s) {
    EXPECT_EQ(gh.streams[s].groups, ch.streams[s].groups);
    EXPECT_EQ(gh.streams[s].basis_rank, ch.streams[s].basis_rank);
  }
  ASSERT_EQ(gh.chunks.size(), ch.chunks.size());
  int layout_differs = 0;
  for (size_t i = 0; i < gh.chunks.size(); ++i) {
    const ChunkEntry &g = gh.chunks[i], &c = ch.chunks[i];
    ASSERT_EQ(g.kind, c.kind) << "chunk " << i;
    ASSERT_EQ(g.stream, c.stream) << "chunk " << i;
    ASSERT_EQ(g.token_begin, c.token_begin) << "chunk " << i;
    ASSERT_EQ(g.n_tokens, c.n_tokens) << "chunk " << i;
    ASSERT_EQ(g.item_begin, c.item_begin) << "chunk " << i;
    ASSERT_EQ(g.n_items, c.n_items) << "chunk " << i;
    if (g.layout == c.layout) {
      EXPECT_EQ(g.raw_bytes, c.raw_bytes) << "chunk " << i;
    } else {
      ++layout_differs;
      EXPECT_EQ(uint64_t(g.raw_bytes), expected_chunk_raw_bytes(gh, g).value()) << "chunk " << i;
    }
  }

  // 2. Every chunk inflates with plain zlib to raw_bytes: the bytes the GPU packed.
  ASSERT_EQ(probe.raw.size(), gh.chunks.size());
  std::vector<std::vector<uint8_t>> g_raw(gh.chunks.size()), c_raw(ch.chunks.size());
  for (size_t i = 0; i < gh.chunks.size(); ++i) {
    const ChunkEntry& g = gh.chunks[i];
    const uint8_t* stored = gb.data() + gp->payload_offset + g.offset;
    EXPECT_EQ(crc32_of(stored, g.stored_bytes), g.crc32) << "chunk " << i;
    ASSERT_TRUE(zlib_inflate(stored, g.stored_bytes, g.raw_bytes, &g_raw[i])) << "chunk " << i;
    EXPECT_EQ(g_raw[i], probe.raw[i]) << "chunk " << i;
    const ChunkEntry& c = ch.chunks[i];
    ASSERT_TRUE(zlib_inflate(cb.data() + cp->payload_offset + c.offset, c.stored_bytes, c.raw_bytes, &c_raw[i]));
  }

  // 3. Bit-exactness: side and codes chunks are what the CPU makes of the GPU's coefficients; exact
  // chunks equal the CPU encoder's.
  const int64_t m = int64_t(gh.n_compressed_tokens());
  size_t n_coef_chunks = 0;
  for (size_t i = 0; i < gh.chunks.size(); ++i) {
    const ChunkEntry& g = gh.chunks[i];
    if (g.kind == ChunkKind::kExact) {
      EXPECT_EQ(g_raw[i], c_raw[i]) << "exact chunk " << i;
      continue;
    }
    ++n_coef_chunks;
    EXPECT_EQ(g_raw[i], cpu_chunk_raw(gh.streams[g.stream], probe.coef[g.stream], m, g, gh.n_head_exact))
        << "chunk " << i << " (kind " << int(g.kind) << ", stream " << int(g.stream) << ")";
  }

  // The GPU's coefficients against a double-precision projection of the CPU's gathered vectors, on
  // sampled (token, component) pairs: fp32 rounding of the GEMM only.
  {
    const int64_t p = cache.shape.n_features();
    RopeTable rope(cache.shape.rope, cache.shape.head_dim, cache.position_offset, std::max<int64_t>(cache.n_tokens, 1));
    std::vector<float> x(static_cast<size_t>(p));
    std::mt19937_64 rng(1);
    for (int s = 0; s < 2 && m > 0; ++s) {
      const PcaBasis& pca = s == 0 ? cal.key.pca : cal.value.pca;
      const int64_t k = gh.streams[s].n_kept();
      ASSERT_EQ(probe.coef[s].size(), size_t(k * m));
      for (int sample = 0; sample < 64 && k > 0; ++sample) {
        const int64_t t = int64_t(rng() % uint64_t(m)), j = int64_t(rng() % uint64_t(k));
        gather_token_vectors(cache, Stream(s), gh.n_head_exact + t, 1, s == 0 ? &rope : nullptr, x.data());
        double dot = 0, mag = 0;
        for (int64_t f = 0; f < p; ++f) {
          const double v = double(x[size_t(f)] - pca.mean[size_t(f)]) * pca.components[size_t(j * p + f)];
          dot += v;
          mag += std::fabs(v);
        }
        EXPECT_NEAR(probe.coef[s][size_t(j * m + t)], dot, 1e-4 * mag + 1e-30)
            << "stream " << s << " token " << t << " component " << j;
      }
    }
  }

  // 4. Both CPU decoders accept the GPU container.
  auto ref = reference_decode(cal, gb.data(), gb.size());
  ASSERT_TRUE(ref.is_ok()) << ref.status().to_string();
  const Calibration calib(std::make_shared<CalibrationData>(cal));
  auto g_dec = decode(calib, gb.data(), gb.size());
  ASSERT_TRUE(g_dec.is_ok()) << g_dec.status().to_string();
  auto c_dec = decode(calib, cb.data(), cb.size());
  ASSERT_TRUE(c_dec.is_ok()) << c_dec.status().to_string();

  // 5. Restored caches: exact tokens bit for bit; per-layer errors within 1% of the CPU container's.
  const int64_t T = cache.n_tokens, t0 = gh.n_head_exact, t1 = T - gh.n_tail_exact;
  const int H = cache.shape.n_kv_heads, D = cache.shape.head_dim;
  for (int l = 0; l < cache.shape.n_layers; ++l) {
    for (int s = 0; s < 2; ++s) {
      const auto& orig = (s == 0 ? cache.k : cache.v)[size_t(l)];
      const auto& gr = (s == 0 ? g_dec->k : g_dec->v)[size_t(l)];
      const auto& cr = (s == 0 ? c_dec->k : c_dec->v)[size_t(l)];
      const auto& rr = (s == 0 ? ref->k : ref->v)[size_t(l)];
      std::vector<float> o_c, g_c, c_c;
      for (int h = 0; h < H; ++h)
        for (int64_t t = 0; t < T; ++t) {
          const size_t at = (size_t(h) * T + t) * D;
          if (t < t0 || t >= t1) {
            ASSERT_EQ(0, std::memcmp(&gr[at], &orig[at], D * sizeof(float))) << "exact token " << t << " layer " << l;
            continue;
          }
          o_c.insert(o_c.end(), &orig[at], &orig[at] + D);
          g_c.insert(g_c.end(), &gr[at], &gr[at] + D);
          c_c.insert(c_c.end(), &cr[at], &cr[at] + D);
        }
      double max_diff = 0, max_abs = 1;
      for (size_t i = 0; i < gr.size(); ++i) {
        max_diff = std::max(max_diff, std::fabs(double(gr[i]) - rr[i]));
        max_abs = std::max(max_abs, std::fabs(double(rr[i])));
      }
      EXPECT_LE(max_diff / max_abs, 2e-5) << "fast and reference decoders disagree, layer " << l << " stream " << s;
      const double eg = relative_mse(g_c, o_c), ec = relative_mse(c_c, o_c);
      EXPECT_LE(std::fabs(eg - ec), 0.01 * ec + 1e-6)
          << "layer " << l << " stream " << s << ": GPU " << eg << " CPU " << ec;
    }
  }
  // How many codes differ from the CPU container's (projection rounding near quantisation boundaries).
  auto cc = make_cpu_backend()->decode_coefficients(cal, cb.data(), cb.size(), DecodeOptions{}, nullptr);
  auto gc = make_cpu_backend()->decode_coefficients(cal, gb.data(), gb.size(), DecodeOptions{}, nullptr);
  ASSERT_TRUE(cc.is_ok() && gc.is_ok());
  size_t differ = 0, total = 0;
  for (int s = 0; s < 2; ++s) {
    total += cc->coef[s].size();
    for (size_t i = 0; i < cc->coef[s].size(); ++i) differ += cc->coef[s][i] != gc->coef[s][i];
  }
  std::printf("  %zu chunks (%zu coefficient chunks, %d dense on the GPU, layouts differing %d); %zu of %zu "
              "dequantised coefficients differ from the CPU container's\n",
              gh.chunks.size(), n_coef_chunks, probe.n_dense_chunks, layout_differs, differ, total);
  EXPECT_LE(double(differ), 0.01 * double(total) + 16) << "GPU codes stray from the CPU's more than rounding explains";
}

struct Case {
  DType dtype;
  RopeStyle style;
  int64_t position_offset;
  int64_t n_tokens;
  int chunk_tokens;
  int64_t chunk_max_bytes;
  double ratio;
};

std::string case_name(const Case& c) {
  return std::string(c.dtype == DType::kF32 ? "f32" : c.dtype == DType::kBF16 ? "bf16" : "f16") +
         (c.style == RopeStyle::kHalf ? "_half" : "_interleaved") + "_pos" + std::to_string(c.position_offset) + "_t" +
         std::to_string(c.n_tokens) + "_c" + std::to_string(c.chunk_tokens) + "_b" + std::to_string(c.chunk_max_bytes) +
         "_r" + std::to_string(int(c.ratio));
}
void PrintTo(const Case& c, std::ostream* os) { *os << case_name(c); }

class CudaEncode : public ::testing::TestWithParam<Case> {};

KVCache small_cache(const Case& c) {
  ModelShape shape;
  shape.n_layers = 4;
  shape.n_kv_heads = 2;
  shape.head_dim = 32;
  shape.rope.theta = 10000.0;
  shape.rope.style = c.style;
  return testing::synthetic_cache(shape, c.n_tokens, 5, c.dtype, c.position_offset);
}

TEST_P(CudaEncode, MatchesCpuEncoder) {
  SKIP_WITHOUT_DEVICE();
  const Case c = GetParam();
  const KVCache cache = small_cache(c);
  const CalibrationData cal = testing::calibration_8_20(cache, 96, 4, 32);
  EncodeOptions eo;
  eo.target_ratio = c.ratio;
  eo.chunk_tokens = c.chunk_tokens;
  eo.chunk_max_bytes = c.chunk_max_bytes;
  eo.measure_error = false;
  check_against_cpu(cal, cache, eo);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, CudaEncode,
    ::testing::Values(Case{DType::kF32, RopeStyle::kHalf, 0, 300, 48, 256, 20},
                      Case{DType::kBF16, RopeStyle::kHalf, 0, 301, 64, 16384, 8},
                      Case{DType::kF16, RopeStyle::kInterleaved, 1000, 333, 50, 300, 20},
                      Case{DType::kBF16, RopeStyle::kInterleaved, 77, 290, 256, 256, 8},
                      Case{DType::kF32, RopeStyle::kInterleaved, 5, 41, 7, 256, 20},   // few compressed tokens
                      Case{DType::kBF16, RopeStyle::kHalf, 3, 20, 16, 256, 20}),       // none: all exact
    [](const ::testing::TestParamInfo<Case>& param_info) { return case_name(param_info.param); });

const CalibrationData& real_calibration() {
  static const Calibration cal = [] {
    CalibrateOptions o;
    o.ratios = {8, 20};
    auto c = calibrate({testing::repo_data("small-calib.safetensors")}, o);
    EXPECT_TRUE(c.is_ok()) << c.status().to_string();
    return c.value();
  }();
  return cal.data();
}

// A real cache of the reference model (repo data/) at ratios 8 and 20.
TEST(CudaEncodeReal, SmallTestCacheMatchesCpu) {
  SKIP_WITHOUT_DEVICE();
  auto cache = read_cache(testing::repo_data("small-test.safetensors"));
  ASSERT_TRUE(cache.is_ok()) << cache.status().to_string();
  for (double ratio : {8.0, 20.0}) {
    SCOPED_TRACE("ratio " + std::to_string(ratio));
    EncodeOptions eo;
    eo.target_ratio = ratio;
    eo.measure_error = false;
    check_against_cpu(real_calibration(), *cache, eo);
  }
}

// The public helper: its report agrees with kvtc::encode's (same nominal sizes; errors within 1%).
TEST(CudaEncodeReal, EncodeOnGpuReport) {
  SKIP_WITHOUT_DEVICE();
  auto cache = read_cache(testing::repo_data("small-test.safetensors"));
  ASSERT_TRUE(cache.is_ok());
  const Calibration cal(std::make_shared<CalibrationData>(real_calibration()));
  EncodeOptions eo;
  eo.target_ratio = 20;
  auto g = cuda::encode_on_gpu(cal, *cache, eo);
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
  auto c = encode(cal, *cache, eo);
  ASSERT_TRUE(c.is_ok());
  EXPECT_EQ(g->report.n_compressed_tokens, c->report.n_compressed_tokens);
  EXPECT_EQ(g->report.nominal_payload_bytes, c->report.nominal_payload_bytes);
  EXPECT_EQ(g->report.file_bytes, int64_t(g->bytes.size()));
  ASSERT_EQ(g->report.layers.size(), c->report.layers.size());
  EXPECT_NEAR(g->report.k_relative_mse, c->report.k_relative_mse, 0.01 * c->report.k_relative_mse + 1e-6);
  EXPECT_NEAR(g->report.v_relative_mse, c->report.v_relative_mse, 0.01 * c->report.v_relative_mse + 1e-6);
  std::printf("  ratio 20: GPU file %lld bytes (%.2fx compressed tokens), CPU file %lld bytes (%.2fx)\n",
              static_cast<long long>(g->report.file_bytes), g->report.ratio_compressed_tokens,
              static_cast<long long>(c->report.file_bytes), c->report.ratio_compressed_tokens);
}

// The TF32 projection: the same chunk sizes before DEFLATE, the same restored error (within 1% of the
// CPU container's), exact tokens bit for bit, and a file both CPU decoders accept.
TEST(CudaEncodeReal, Tf32ProjectionKeepsTheError) {
  SKIP_WITHOUT_DEVICE();
  auto cache = read_cache(testing::repo_data("small-test.safetensors"));
  ASSERT_TRUE(cache.is_ok());
  const Calibration cal(std::make_shared<CalibrationData>(real_calibration()));
  for (double ratio : {8.0, 20.0}) {
    SCOPED_TRACE("ratio " + std::to_string(ratio));
    EncodeOptions eo;
    eo.target_ratio = ratio;
    auto g = cuda::encode_on_gpu(cal, *cache, eo, cuda::EncodeProjection::kTf32);
    ASSERT_TRUE(g.is_ok()) << g.status().to_string();
    auto c = encode(cal, *cache, eo);
    ASSERT_TRUE(c.is_ok());
    EXPECT_EQ(g->report.nominal_payload_bytes, c->report.nominal_payload_bytes);
    EXPECT_NEAR(g->report.k_relative_mse, c->report.k_relative_mse, 0.01 * c->report.k_relative_mse + 1e-6);
    EXPECT_NEAR(g->report.v_relative_mse, c->report.v_relative_mse, 0.01 * c->report.v_relative_mse + 1e-6);
    auto fast = decode(cal, g->bytes.data(), g->bytes.size());
    ASSERT_TRUE(fast.is_ok()) << fast.status().to_string();
    auto ref = reference_decode(cal.data(), g->bytes.data(), g->bytes.size());
    ASSERT_TRUE(ref.is_ok()) << ref.status().to_string();
    const int64_t T = cache->n_tokens, t1 = T - cal.data().n_window_tokens;
    for (int l = 0; l < cache->shape.n_layers; ++l)
      for (int h = 0; h < cache->shape.n_kv_heads; ++h)
        for (int64_t t = 0; t < T; ++t) {
          if (t >= cal.data().n_sink_tokens && t < t1) continue;
          ASSERT_EQ(0, std::memcmp(cache->k_row(l, h, t), fast->k_row(l, h, t), cache->shape.head_dim * sizeof(float)));
          ASSERT_EQ(0, std::memcmp(cache->v_row(l, h, t), fast->v_row(l, h, t), cache->shape.head_dim * sizeof(float)));
        }
  }
}

// Hostile coefficients (zeros, constants, NaN, infinities, huge and subnormal values) through the GPU
// quantiser and packer: byte-identical to the CPU's, and the container still restores.
TEST(CudaEncodeExtremes, InjectedCoefficientsMatchCpu) {
  SKIP_WITHOUT_DEVICE();
  const Case c{DType::kBF16, RopeStyle::kHalf, 0, 200, 32, 256, 8};
  const KVCache cache = small_cache(c);
  const CalibrationData cal = testing::calibration_8_20(cache, 96, 4, 16);
  EncodeOptions eo;
  eo.target_ratio = 8;
  eo.chunk_tokens = 32;
  eo.chunk_max_bytes = 256;
  eo.measure_error = false;
  const int64_t m = 200 - 4 - 16;
  std::mt19937_64 rng(3);
  std::normal_distribution<float> normal;
  auto gpu = make_cuda_backend();
  CudaEncodeProbe probe;
  probe.keep_outputs = true;
  for (int s = 0; s < 2; ++s) {
    const StreamAllocation a = [&] {
      StreamAllocation x;
      x.groups = (s == 0 ? cal.key : cal.value).allocations[0].groups;
      return x;
    }();
    probe.coef_in[s].assign(size_t(a.n_kept()) * m, 0.0f);
    for (uint32_t j = 0; j < a.n_kept(); ++j)
      for (int64_t t = 0; t < m; ++t) {
        float v = normal(rng) * std::exp2(float(int(rng() % 40) - 20));
        switch (t % 9) {
          case 0: v = 0.0f; break;                                               // zero group
          case 1: v = 2.5f; break;                                               // constant group
          case 2: if (j % 5 == 0) v = std::numeric_limits<float>::quiet_NaN(); break;
          case 3: if (j % 7 == 0) v = (j & 1 ? 1 : -1) * std::numeric_limits<float>::infinity(); break;
          case 4: v *= 1e34f; break;                                             // overflowing steps
          case 5: v *= 1e-40f; break;                                            // subnormal
          default: break;
        }
        probe.coef_in[s][size_t(j) * m + t] = v;
      }
  }
  auto enc = cuda_encode_probe(*gpu, cal, cache, eo, &probe);
  ASSERT_TRUE(enc.is_ok()) << enc.status().to_string();
  auto parsed = parse_container(enc->bytes.data(), enc->bytes.size());
  ASSERT_TRUE(parsed.is_ok()) << parsed.status().to_string();
  const ContainerHeader& h = parsed->header;
  for (size_t i = 0; i < h.chunks.size(); ++i) {
    const ChunkEntry& e = h.chunks[i];
    if (e.kind == ChunkKind::kExact) continue;
    EXPECT_EQ(probe.raw[i], cpu_chunk_raw(h.streams[e.stream], probe.coef_in[e.stream], m, e, h.n_head_exact))
        << "chunk " << i;
  }
  auto ref = reference_decode(cal, enc->bytes.data(), enc->bytes.size());
  EXPECT_TRUE(ref.is_ok()) << ref.status().to_string();
  auto fast = make_cpu_backend()->decode_coefficients(cal, enc->bytes.data(), enc->bytes.size(), {}, nullptr);
  EXPECT_TRUE(fast.is_ok()) << fast.status().to_string();
}

TEST(CudaEncodeErrors, BadInputsGiveStatuses) {
  SKIP_WITHOUT_DEVICE();
  const Case c{DType::kBF16, RopeStyle::kHalf, 0, 100, 32, 256, 20};
  KVCache cache = small_cache(c);
  const CalibrationData cal = testing::calibration_8_20(cache, 96, 4, 16);
  auto gpu = make_cuda_backend();
  EncodeOptions eo;
  eo.measure_error = false;
  // A calibration of another shape.
  KVCache other = cache;
  other.shape.n_layers = 2;
  other.k.resize(2);
  other.v.resize(2);
  other.sync_metadata();
  auto r = gpu->encode(cal, other, eo, nullptr);
  EXPECT_EQ(r.status().code(), StatusCode::kMismatch) << r.status().to_string();
  // An empty cache (no shape, no tensors), a wrong dtype, tensors of the wrong size, bad options.
  r = gpu->encode(cal, KVCache{}, eo, nullptr);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().to_string();
  KVCache bad = cache;
  bad.dtype = DType(7);
  r = gpu->encode(cal, bad, eo, nullptr);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().to_string();
  bad = cache;
  bad.k[1].pop_back();
  r = gpu->encode(cal, bad, eo, nullptr);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().to_string();
  EncodeOptions bad_opt = eo;
  bad_opt.chunk_tokens = 0;
  EXPECT_EQ(gpu->encode(cal, cache, bad_opt, nullptr).status().code(), StatusCode::kInvalidArgument);
  bad_opt = eo;
  bad_opt.target_ratio = std::nan("");
  EXPECT_EQ(gpu->encode(cal, cache, bad_opt, nullptr).status().code(), StatusCode::kInvalidArgument);
  // A cache with no tokens: whatever the CPU encoder does, the same (a valid, empty container).
  KVCache empty = cache;
  empty.n_tokens = 0;
  for (auto& l : empty.k) l.clear();
  for (auto& l : empty.v) l.clear();
  auto ce = make_cpu_backend()->encode(cal, empty, eo, nullptr);
  auto ge = gpu->encode(cal, empty, eo, nullptr);
  ASSERT_EQ(ce.is_ok(), ge.is_ok()) << ce.status().to_string() << " / " << ge.status().to_string();
  if (ge.is_ok()) {
    EXPECT_EQ(ge->bytes, ce->bytes);  // no chunks: the header alone, identical
  }
  // The encoder still works after the failures.
  EXPECT_TRUE(gpu->encode(cal, cache, eo, nullptr).is_ok());
}

// Encode throughput on a large synthetic cache (printed, not asserted): raw 16-bit bytes per second.
TEST(CudaEncodeBench, Throughput) {
  SKIP_WITHOUT_DEVICE();
  size_t free_bytes = 0, total_bytes = 0;
  ASSERT_EQ(cudaMemGetInfo(&free_bytes, &total_bytes), cudaSuccess);
  ModelShape shape;
  const bool large = free_bytes > (size_t(24) << 30);
  shape.n_layers = large ? 40 : 8;
  shape.n_kv_heads = large ? 8 : 2;
  shape.head_dim = 128;
  shape.rope.theta = 500000.0;
  const int64_t T = 8192, p = shape.n_features();
  const int64_t rank = large ? 4096 : 1024;
  KVCache cache;
  cache.shape = shape;
  cache.dtype = DType::kBF16;
  cache.n_tokens = T;
  cache.k.assign(size_t(shape.n_layers), std::vector<float>(size_t(shape.n_kv_heads) * T * shape.head_dim));
  cache.v = cache.k;
  // Fast parallel fill: a per-feature mean plus noise, rounded to bf16.
  std::vector<std::thread> workers;
  for (int l = 0; l < shape.n_layers; ++l)
    workers.emplace_back([&cache, l] {
      uint64_t x = 0x9e3779b97f4a7c15ull * uint64_t(l + 1);
      for (auto* t : {&cache.k[size_t(l)], &cache.v[size_t(l)]})
        for (size_t i = 0; i < t->size(); ++i) {
          x ^= x << 13, x ^= x >> 7, x ^= x << 17;
          const float u = float(x >> 40) * (1.0f / 16777216.0f) - 0.5f;
          (*t)[i] = bf16_to_f32(f32_to_bf16(float(i % 128) * 0.01f + 2.0f * u));
        }
    });
  for (auto& w : workers) w.join();
  cache.sync_metadata();
  CalibrationData cal;
  cal.shape = shape;
  cal.ratios = {20};
  cal.n_sink_tokens = 4;
  cal.n_window_tokens = 128;
  for (int s = 0; s < 2; ++s) {
    StreamCalibration& sc = s == 0 ? cal.key : cal.value;
    sc.pca.n_features = p;
    sc.pca.rank = rank;
    sc.pca.mean.assign(size_t(p), 0.0f);
    sc.pca.components.resize(size_t(rank * p));
    uint64_t x = 12345 + s;
    for (float& f : sc.pca.components) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      f = (float(x >> 40) * (1.0f / 16777216.0f) - 0.5f) * 3.46f / std::sqrt(float(p));
    }
    const uint32_t r = uint32_t(rank);
    sc.allocations = {fixed_allocation(20, {group(0, 32, GroupKind::kFloat16, 16), group(32, 96, GroupKind::kInt, 8),
                                            group(128, r / 4 - 128, GroupKind::kInt, 5),
                                            group(r / 4, r / 4, GroupKind::kIntAffine, 4),
                                            group(r / 2, r / 2, GroupKind::kIntAffine, 2)})};
  }
  cal.fingerprint = 42;
  auto gpu = make_cuda_backend();
  EncodeOptions eo;
  eo.target_ratio = 20;
  eo.measure_error = false;
  CudaEncodeProbe probe;
  auto warm = cuda_encode_probe(*gpu, cal, cache, eo, &probe);
  ASSERT_TRUE(warm.is_ok()) << warm.status().to_string();
  auto enc = cuda_encode_probe(*gpu, cal, cache, eo, &probe);
  ASSERT_TRUE(enc.is_ok()) << enc.status().to_string();
  const double raw = double(T) * double(p) * 2 * 2;
  const double device = probe.upload_s + probe.gather_s + probe.gemm_s + probe.quantize_s + probe.pack_s +
                        probe.deflate_s + probe.d2h_s;
  const double compute = device - probe.upload_s;
  std::printf("{\"bench\": \"cuda_encode\", \"shape\": \"%s\", \"tokens\": %lld, \"rank\": %lld, \"raw_bytes\": %.0f, "
              "\"file_bytes\": %lld, \"ratio_nominal\": %.2f, \"ratio_file\": %.2f, \"dense_chunks\": %d,\n"
              " \"host_s\": %.4f, \"upload_s\": %.4f, \"gather_s\": %.4f, \"gemm_s\": %.4f, \"quantize_s\": %.4f, "
              "\"pack_s\": %.4f, \"deflate_s\": %.4f, \"d2h_s\": %.4f, \"wall_s\": %.4f,\n"
              " \"gbps_device_without_upload\": %.2f, \"gbps_device\": %.2f, \"gbps_wall\": %.2f}\n",
              shape.to_string().c_str(), static_cast<long long>(T), static_cast<long long>(rank), raw,
              static_cast<long long>(enc->bytes.size()), enc->report.ratio_nominal, enc->report.ratio_file,
              probe.n_dense_chunks, probe.host_s,
              probe.upload_s, probe.gather_s, probe.gemm_s, probe.quantize_s, probe.pack_s, probe.deflate_s,
              probe.d2h_s, probe.total_s, raw / compute * 1e-9, raw / device * 1e-9, raw / probe.total_s * 1e-9);
  // The container is well formed and its coverage complete (decoding it fully is the tests' job above).
  EXPECT_TRUE(parse_container(enc->bytes.data(), enc->bytes.size()).is_ok());
}

}  // namespace
}  // namespace kvtc
