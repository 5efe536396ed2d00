// FP8 reconstruction on the GPU (BatchDecodeOptions::fp8_reconstruction). The pieces: the E4M3
// conversion (scale, rounding, padding, transposition) and the cuBLASLt FP8 GEMM against host
// arithmetic on the same E4M3 values, aligned and not. The whole: the error FP8 adds to a restored
// layer must be a small fraction of the codec's own error, in every layer of both streams, for codec 2
// and codec 3 containers of a real cache; fp32 restores of the same batch stay exact; the paged layout
// gives what the contiguous one gives; and misuse gets a clear error.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/backend.hpp"
#include "cuda/cuda_backend.hpp"
#include "cuda/fp8_convert.cuh"
#include "cuda/fp8_gemm.hpp"
#include "cuda/gpu_decoder.hpp"
#include "cuda_test_util.hpp"
#include "kvtc/kvtc_cuda.hpp"
#include "test_util.hpp"
#include "util/half.hpp"

namespace kvtc {
namespace {

using testing::max_rel_diff;

// The FP8 path's budget: at most a tenth of the codec's error energy in any layer and stream.
constexpr double kMaxFp8Share = 0.10;

double sq_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double e = 0;
  for (size_t i = 0; i < a.size(); ++i) e += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
  return e;
}

std::vector<uint8_t> encode_with(const CalibrationData& cal, const KVCache& cache, int codec, double ratio) {
  EncodeOptions eo;
  eo.codec = codec;
  eo.target_ratio = ratio;
  eo.measure_error = false;
  auto enc = make_cpu_backend()->encode(cal, cache, eo, nullptr);
  EXPECT_TRUE(enc.is_ok()) << enc.status().to_string();
  return enc.is_ok() ? enc->bytes : std::vector<uint8_t>{};
}

// E4M3 (OCP FP8: 1 sign, 4 exponent bits of bias 7, 3 mantissa bits; no infinities) to float.
float e4m3_to_float(uint8_t b) {
  const int sign = b >> 7, exp = (b >> 3) & 15, man = b & 7;
  const float v = exp == 0 ? std::ldexp(float(man) / 8.0f, -6) : std::ldexp(1.0f + float(man) / 8.0f, exp - 7);
  return sign ? -v : v;
}

struct DevBytes {
  void* p = nullptr;
  explicit DevBytes(size_t n) { EXPECT_EQ(cudaMalloc(&p, n), cudaSuccess); }
  ~DevBytes() { cudaFree(p); }
  template <typename T>
  T* as(size_t byte_offset = 0) const { return reinterpret_cast<T*>(static_cast<uint8_t*>(p) + byte_offset); }
};

// The conversion and the GEMM alone: x (rows x comps, given either way round) to E4M3 with its
// scale; then D = A^T B on those copies against host double arithmetic on the same E4M3 values.
TEST(CudaFp8, ConversionAndGemmMatchHostArithmetic) {
  SKIP_WITHOUT_DEVICE();
  const int64_t m = 80, n = 29, comps = 37, k = cuda::fp8_padded(comps);
  ASSERT_EQ(k, 48);
  std::mt19937 rng(7);
  std::normal_distribution<float> g(0.0f, 1.0f);
  // Components of very different spread, as PCA coefficients have, and one outlier.
  std::vector<float> a_src(size_t(comps * m)), b_tok(size_t(n * comps)), b_comp(size_t(comps * n));
  for (int64_t c = 0; c < comps; ++c) {
    for (int64_t r = 0; r < m; ++r) a_src[size_t(c * m + r)] = 0.2f * g(rng);  // [comps][m], as a basis is
    for (int64_t t = 0; t < n; ++t) b_tok[size_t(t * comps + c)] = std::ldexp(g(rng), -int(c / 6));
  }
  b_tok[size_t(3 * comps + 5)] = 60.0f;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t c = 0; c < comps; ++c) b_comp[size_t(c * n + t)] = b_tok[size_t(t * comps + c)];
  DevBytes a_dev(a_src.size() * 4), bt_dev(b_tok.size() * 4), bc_dev(b_comp.size() * 4),
      scales(3 * cuda::kFp8ScaleFloats * 4);
  DevBytes a8(size_t(m * k) + 16), b8(size_t(n * k)), b8c(size_t(n * k)), d(size_t(n * m) * 4 + 16);
  cudaMemcpy(a_dev.p, a_src.data(), a_src.size() * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(bt_dev.p, b_tok.data(), b_tok.size() * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(bc_dev.p, b_comp.data(), b_comp.size() * 4, cudaMemcpyHostToDevice);
  cudaMemset(scales.p, 0, 3 * cuda::kFp8ScaleFloats * 4);
  cuda::Fp8Source sa;  // [comps][m] -> [m][k]
  sa.data = a_dev.p;
  sa.transposed = true;
  sa.ld = m;
  sa.rows = m;
  sa.components = comps;
  cuda::Fp8Source sb;  // token-major [n][comps] -> [n][k]
  sb.data = bt_dev.p;
  sb.ld = comps;
  sb.rows = n;
  sb.components = comps;
  cuda::Fp8Source sbc = sb;  // component-major [comps][n] -> [n][k]
  sbc.data = bc_dev.p;
  sbc.transposed = true;
  sbc.ld = n;
  // Three scale blocks: A, B token-major, B component-major.
  float* sc = scales.as<float>();
  float* sb_tok = sc + cuda::kFp8ScaleFloats;
  float* sb_comp = sc + 2 * cuda::kFp8ScaleFloats;
  // A lands 16 bytes into its buffer: a pointer aligned to 16 bytes only, as a layer's slice may be.
  ASSERT_EQ(cuda::launch_abs_max(sa, sc, nullptr), cudaSuccess);
  ASSERT_EQ(cuda::launch_to_e4m3(sa, sc, a8.as<uint8_t>(16), k, nullptr), cudaSuccess);
  ASSERT_EQ(cuda::launch_abs_max(sb, sb_tok, nullptr), cudaSuccess);
  ASSERT_EQ(cuda::launch_to_e4m3(sb, sb_tok, b8.as<uint8_t>(), k, nullptr), cudaSuccess);
  ASSERT_EQ(cuda::launch_abs_max(sbc, sb_comp, nullptr), cudaSuccess);
  ASSERT_EQ(cuda::launch_to_e4m3(sbc, sb_comp, b8c.as<uint8_t>(), k, nullptr), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<float> scale(size_t(3 * cuda::kFp8ScaleFloats));
  std::vector<uint8_t> a_h(size_t(m * k)), b_h(size_t(n * k)), bc_h(size_t(n * k));
  cudaMemcpy(scale.data(), sc, scale.size() * 4, cudaMemcpyDeviceToHost);
  const int F = cuda::kFp8ScaleFloats, X = cuda::kFp8AmaxIndex;
  cudaMemcpy(a_h.data(), a8.as<uint8_t>(16), a_h.size(), cudaMemcpyDeviceToHost);
  cudaMemcpy(b_h.data(), b8.p, b_h.size(), cudaMemcpyDeviceToHost);
  cudaMemcpy(bc_h.data(), b8c.p, bc_h.size(), cudaMemcpyDeviceToHost);
  float amax_a = 0, amax_b = 0;
  for (float x : a_src) amax_a = std::max(amax_a, std::fabs(x));
  for (float x : b_tok) amax_b = std::max(amax_b, std::fabs(x));
  EXPECT_EQ(scale[X], amax_a);
  EXPECT_EQ(scale[F + X], 60.0f);
  EXPECT_EQ(scale[2 * F + X], 60.0f);
  EXPECT_FLOAT_EQ(scale[0], amax_a / 448.0f);
  EXPECT_FLOAT_EQ(scale[F], amax_b / 448.0f);
  EXPECT_EQ(b_h, bc_h) << "the transposing conversion differs from the direct one";
  // Every value within E4M3's rounding: half a step of 3 mantissa bits, or of the smallest subnormal.
  auto check_values = [&](const std::vector<uint8_t>& q, float s, auto original, int64_t rows) {
    int bad = 0;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < k; ++c) {
        const float got = e4m3_to_float(q[size_t(r * k + c)]) * s;
        const float want = c < comps ? original(r, c) : 0.0f;
        const float tol = std::max(std::fabs(want) / 16.0f, s * std::ldexp(1.0f, -10)) * 1.0001f;
        bad += !(std::fabs(got - want) <= tol);
      }
    return bad;
  };
  EXPECT_EQ(0, check_values(a_h, scale[0], [&](int64_t r, int64_t c) { return a_src[size_t(c * m + r)]; }, m));
  EXPECT_EQ(0, check_values(b_h, scale[F], [&](int64_t r, int64_t c) { return b_tok[size_t(r * comps + c)]; }, n));
  // D [n][ldd] = A^T B, at an aligned and a 16-byte-aligned output, with and without fast accumulation,
  // in fp32 and in bf16 (run_bf16; the restore calls run_any, which takes either).
  cuda::Fp8Gemm gemm;
  struct GemmCase {
    size_t d_off;
    bool fast, bf16;
  };
  for (const GemmCase& gc : {GemmCase{0, false, false}, GemmCase{16, false, false}, GemmCase{0, true, false},
                             GemmCase{0, false, true}, GemmCase{16, true, true}}) {
    const auto [d_off, fast, out_bf16] = gc;
    SCOPED_TRACE("output offset " + std::to_string(d_off) + (fast ? ", fast accumulation" : "") +
                 (out_bf16 ? ", bf16 output" : ""));
    const Status st =
        out_bf16 ? gemm.run_bf16(m, n, k, a8.as<uint8_t>(16), k, sc, b8.as<uint8_t>(), k, sb_tok, d.as<uint16_t>(d_off),
                                 m, fast, nullptr)
                 : gemm.run(m, n, k, a8.as<uint8_t>(16), k, sc, b8.as<uint8_t>(), k, sb_tok, d.as<float>(d_off), m, fast,
                            nullptr);
    ASSERT_TRUE(st.is_ok()) << st.to_string();
    std::vector<float> d_h(size_t(n * m));
    if (out_bf16) {
      std::vector<uint16_t> bits(d_h.size());
      ASSERT_EQ(cudaMemcpy(bits.data(), d.as<uint16_t>(d_off), bits.size() * 2, cudaMemcpyDeviceToHost), cudaSuccess);
      for (size_t i = 0; i < bits.size(); ++i) d_h[i] = bf16_to_f32(bits[i]);
    } else {
      ASSERT_EQ(cudaMemcpy(d_h.data(), d.as<float>(d_off), d_h.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
    }
    // Hopper's FP8 tensor cores accumulate with fewer bits than fp32 (about 14 by DeepSeek-V3's
    // measurement; cuBLASLt promotes partial sums to fp32 along k): each output is held to 2^-10 of
    // the sum of its products' magnitudes (fast accumulation, never promoted: 2^-7). A wrong layout,
    // padding or scale misses by orders more.
    double worst = 0;
    for (int64_t t = 0; t < n; ++t)
      for (int64_t r = 0; r < m; ++r) {
        double want = 0, mag = 0;
        for (int64_t c = 0; c < k; ++c) {
          const double prod = double(e4m3_to_float(a_h[size_t(r * k + c)])) * e4m3_to_float(b_h[size_t(t * k + c)]);
          want += prod;
          mag += std::fabs(prod);
        }
        const double s = double(scale[0]) * scale[F];
        // bf16 output: one more rounding, at most half a step of 8 significant bits of the result.
        const double err = std::fabs(d_h[size_t(t * m + r)] - want * s) -
                           (out_bf16 ? std::ldexp(std::fabs(want * s), -8) * 1.0001 : 0.0);
        worst = std::max(worst, err / std::max(mag * s, 1e-30));
      }
    EXPECT_LE(worst, std::ldexp(1.0, fast ? -7 : -10));
    std::printf("[fp8] GEMM against host arithmetic%s%s: worst error %.2g of the products' magnitude sum\n",
                fast ? " (fast accumulation)" : "", out_bf16 ? " (bf16 output, its rounding excluded)" : "", worst);
  }
  // Bad shapes and misaligned scales are refused before cuBLASLt sees them.
  EXPECT_EQ(gemm.run(m, n, comps, a8.as<uint8_t>(), k, sc, b8.as<uint8_t>(), k, sb_tok, d.as<float>(), m, false, nullptr).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(gemm.run(m, n, k, a8.as<uint8_t>(), k, sc + 1, b8.as<uint8_t>(), k, sb_tok, d.as<float>(), m, false, nullptr).code(),
            StatusCode::kInvalidArgument);
}

struct Restored {
  std::vector<std::vector<float>> k, v;
};

// workspace: decode into caller memory of workspace_bytes (what serving code does).
Restored restore(const cuda::DeviceCalibration& dcal, const std::vector<uint8_t>& blob, bool fp8, bool keep_fp32,
                 cuda::ElementType type, int layers_per_gemm = 1, bool workspace = false, bool fast_accum = false) {
  cuda::BatchDecoder dec;
  cuda::BatchDecodeOptions bo;
  bo.fp8_reconstruction = fp8;
  bo.fp8_fast_accum = fast_accum;
  bo.keep_fp32 = keep_fp32;
  bo.layers_per_gemm = layers_per_gemm;
  Restored r;
  cuda::DeviceBuffer ws;
  if (workspace) {
    auto bytes = cuda::BatchDecoder::workspace_bytes(dcal, {{blob.data(), blob.size()}}, bo);
    EXPECT_TRUE(bytes.is_ok()) << bytes.status().to_string();
    if (!bytes.is_ok() || !ws.reserve(*bytes).is_ok() || !dec.set_workspace(ws.get(), *bytes).is_ok()) {
      ADD_FAILURE() << "workspace";
      return r;
    }
  }
  const Status st = dec.decode(dcal, {{blob.data(), blob.size()}}, bo, nullptr);
  EXPECT_TRUE(st.is_ok()) << st.to_string();
  if (!st.is_ok()) return r;
  const Status rs = cuda_restore_all_to_host(dec, dcal, 0, type, &r.k, &r.v);
  EXPECT_TRUE(rs.is_ok()) << rs.to_string();
  return r;
}

// Per layer and stream: the codec's error energy (CPU fp32 restore against the original cache), and
// what bf16 and FP8 reconstruction add to it (against the CPU restore), FP8 also with fast accumulation.
TEST(CudaFp8, ErrorIsASmallShareOfTheCodecsOnARealCache) {
  SKIP_WITHOUT_DEVICE();
  const auto cal_data = std::make_shared<CalibrationData>(testing::small_calibration_with_ecsq());
  const Calibration cal(cal_data);
  const KVCache& cache = testing::repo_cache("small-test.safetensors");
  cuda::DeviceCalibration::Options o;
  o.fp8 = true;
  auto dcal = cuda::DeviceCalibration::upload(cal, o, nullptr);
  ASSERT_TRUE(dcal.is_ok()) << dcal.status().to_string();
  auto cpu = make_cpu_backend();
  struct Case {
    int codec;
    double ratio;
    bool keep_fp32;
  };
  for (const Case& c : {Case{2, 8, true}, Case{2, 20, true}, Case{2, 32, false}, Case{3, 16, true}, Case{3, 16, false}}) {
    const std::string name = "codec " + std::to_string(c.codec) + " at " + std::to_string(int(c.ratio)) + "x, from " +
                             (c.keep_fp32 ? "fp32" : "bf16") + " coefficients";
    SCOPED_TRACE(name);
    const std::vector<uint8_t> blob = encode_with(*cal_data, cache, c.codec, c.ratio);
    auto cd = cpu->decode_coefficients(*cal_data, blob.data(), blob.size(), DecodeOptions{}, nullptr);
    ASSERT_TRUE(cd.is_ok()) << cd.status().to_string();
    const Restored f8 = restore(*dcal, blob, true, c.keep_fp32, cuda::ElementType::kBF16);
    const Restored f8_fast = restore(*dcal, blob, true, c.keep_fp32, cuda::ElementType::kBF16, 4, false, true);
    const Restored b16 = restore(*dcal, blob, false, true, cuda::ElementType::kBF16);
    const Restored f32 = restore(*dcal, blob, true, true, cuda::ElementType::kF32);
    ASSERT_EQ(f8.k.size(), size_t(cache.shape.n_layers));
    ASSERT_EQ(b16.k.size(), f8.k.size());
    ASSERT_EQ(f8_fast.k.size(), f8.k.size());
    const size_t n = cache.k[0].size();
    std::vector<float> kc(n), vc(n);
    double worst = 0, worst_fast = 0, sum_fp8 = 0, sum_fast = 0, sum_bf16 = 0, sum_codec = 0;
    for (int l = 0; l < cache.shape.n_layers; ++l) {
      ASSERT_TRUE(cpu->restore_layer(*cal_data, *cd, l, kc.data(), vc.data(), 0, nullptr).is_ok());
      // A batch decoded for FP8 still restores fp32 exactly.
      EXPECT_LE(max_rel_diff(f32.k[size_t(l)], kc), 2e-5) << "layer " << l;
      EXPECT_LE(max_rel_diff(f32.v[size_t(l)], vc), 2e-5) << "layer " << l;
      for (int s = 0; s < 2; ++s) {
        const std::vector<float>& orig = s == 0 ? cache.k[size_t(l)] : cache.v[size_t(l)];
        const std::vector<float>& cpu_l = s == 0 ? kc : vc;
        const double codec = sq_diff(cpu_l, orig);
        const double fp8 = sq_diff(s == 0 ? f8.k[size_t(l)] : f8.v[size_t(l)], cpu_l);
        const double bf16 = sq_diff(s == 0 ? b16.k[size_t(l)] : b16.v[size_t(l)], cpu_l);
        const double fast = sq_diff(s == 0 ? f8_fast.k[size_t(l)] : f8_fast.v[size_t(l)], cpu_l);
        ASSERT_GT(codec, 0);
        EXPECT_LE(fp8 / codec, kMaxFp8Share) << "layer " << l << (s ? " values" : " keys");
        EXPECT_LE(fast / codec, kMaxFp8Share) << "fast accumulation, layer " << l << (s ? " values" : " keys");
        worst_fast = std::max(worst_fast, fast / codec);
        sum_fast += fast;
        // The FP8 GEMM ran: its rounding is coarser than bf16's.
        EXPECT_GT(fp8, bf16) << "layer " << l << (s ? " values" : " keys");
        worst = std::max(worst, fp8 / codec);
        sum_fp8 += fp8;
        sum_bf16 += bf16;
        sum_codec += codec;
      }
    }
    // The figures for bench/RESULTS.md.
    std::printf("[fp8] %s: FP8 adds %.2f%% of the codec's error energy (worst layer %.2f%%); with fast accumulation "
                "%.2f%% (worst %.2f%%); bf16 adds %.3f%%\n",
                name.c_str(), 100 * sum_fp8 / sum_codec, 100 * worst, 100 * sum_fast / sum_codec, 100 * worst_fast,
                100 * sum_bf16 / sum_codec);
  }
}

// Codec 3's decode kernel finds each stream's E4M3 amax as it writes the coefficients; the copies it
// leads to are byte for byte those of the separate pass (launch_abs_max, then launch_to_e4m3) over
// the same coefficients, from fp32 coefficients and from bf16 ones alone, in one decoder used twice.
TEST(CudaFp8, Codec3DecodeFindsTheScaleOfItsCopy) {
  SKIP_WITHOUT_DEVICE();
  const CalibrationData& cal = testing::small_calibration_with_ecsq();
  cuda::GpuCalibration gcal;
  ASSERT_TRUE(gcal.upload(cal, true, true, -1, nullptr).is_ok());
  ASSERT_TRUE(gcal.upload_fp8(cal, nullptr).is_ok());
  const std::vector<uint8_t> blob = encode_with(cal, testing::repo_cache("small-test.safetensors"), 3, 16);
  cuda::GpuBatchDecoder dec;
  for (bool keep_f32 : {true, false}) {
    SCOPED_TRACE(keep_f32 ? "from fp32 coefficients" : "from bf16 coefficients");
    cuda::GpuDecodeOptions o;
    o.want_f32 = keep_f32;
    o.want_fp8 = true;
    const Status st = dec.decode(gcal, cal, {{blob.data(), blob.size()}}, o, nullptr, nullptr);
    ASSERT_TRUE(st.is_ok()) << st.to_string();
    const cuda::GpuSequence& seq = dec.sequence(0);
    const int64_t m = int64_t(seq.container.header.n_compressed_tokens());
    const int F = cuda::kFp8ScaleFloats;
    for (int s = 0; s < 2; ++s) {
      SCOPED_TRACE(s == 0 ? "keys" : "values");
      ASSERT_TRUE(seq.coef_by_component[s]);
      ASSERT_GT(seq.n_kept[s], 0);
      cuda::Fp8Source fs;
      fs.data = keep_f32 ? seq.coef_f32[s].get() : seq.coef_bf16[s].get();
      fs.bf16 = !keep_f32;
      fs.transposed = true;
      fs.ld = m;
      fs.rows = m;
      fs.components = seq.n_kept[s];
      const size_t n8 = size_t(m * seq.kept_fp8[s]);
      DevBytes ref_scale(size_t(F) * 4), ref8(n8);
      ASSERT_EQ(cudaMemset(ref_scale.p, 0, size_t(F) * 4), cudaSuccess);
      ASSERT_EQ(cuda::launch_abs_max(fs, ref_scale.as<float>(), nullptr), cudaSuccess);
      ASSERT_EQ(cuda::launch_to_e4m3(fs, ref_scale.as<float>(), ref8.as<uint8_t>(), seq.kept_fp8[s], nullptr), cudaSuccess);
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      std::vector<float> got(static_cast<size_t>(F)), want(static_cast<size_t>(F));
      ASSERT_EQ(cudaMemcpy(got.data(), seq.fp8_scale.as<float>() + F * s, got.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
      ASSERT_EQ(cudaMemcpy(want.data(), ref_scale.p, want.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
      EXPECT_GT(want[cuda::kFp8AmaxIndex], 0.0f);
      EXPECT_EQ(got[cuda::kFp8AmaxIndex], want[cuda::kFp8AmaxIndex]);
      EXPECT_EQ(got[0], want[0]);
      std::vector<uint8_t> got8(n8), want8(n8);
      ASSERT_EQ(cudaMemcpy(got8.data(), seq.coef_fp8[s].get(), n8, cudaMemcpyDeviceToHost), cudaSuccess);
      ASSERT_EQ(cudaMemcpy(want8.data(), ref8.p, n8, cudaMemcpyDeviceToHost), cudaSuccess);
      EXPECT_EQ(got8, want8);
    }
  }
}

// restore_all with several layers per GEMM (BatchDecodeOptions::layers_per_gemm) gives what one layer
// per GEMM gives, up to the GEMM's summation order (one bf16 rounding step of the largest value), in
// bf16 and FP8, for codec 2 and codec 3 (token- and component-major coefficients), groups that divide
// the layers and one that does not, from a workspace sized by workspace_bytes; fp32 restores ignore it.
TEST(CudaFp8, LayersPerGemmMatchesOneLayerPerGemm) {
  SKIP_WITHOUT_DEVICE();
  const auto cal_data = std::make_shared<CalibrationData>(testing::small_calibration_with_ecsq());
  const Calibration cal(cal_data);
  const KVCache& cache = testing::repo_cache("small-test.safetensors");
  cuda::DeviceCalibration::Options o;
  o.fp8 = true;
  auto dcal = cuda::DeviceCalibration::upload(cal, o, nullptr);
  ASSERT_TRUE(dcal.is_ok()) << dcal.status().to_string();
  ASSERT_GT(cache.shape.n_layers, 3);
  for (int codec : {2, 3}) {
    const std::vector<uint8_t> blob = encode_with(*cal_data, cache, codec, 16);
    for (bool fp8 : {false, true}) {
      const Restored one = restore(*dcal, blob, fp8, false, cuda::ElementType::kBF16);
      for (int group : {3, cache.shape.n_layers}) {
        SCOPED_TRACE("codec " + std::to_string(codec) + (fp8 ? " FP8" : " bf16") + ", " + std::to_string(group) +
                     " layers per GEMM");
        const Restored grouped = restore(*dcal, blob, fp8, false, cuda::ElementType::kBF16, group, true);
        ASSERT_EQ(grouped.k.size(), one.k.size());
        for (size_t l = 0; l < one.k.size(); ++l) {
          EXPECT_LE(max_rel_diff(grouped.k[l], one.k[l]), 1.0 / 128) << "layer " << l;
          EXPECT_LE(max_rel_diff(grouped.v[l], one.v[l]), 1.0 / 128) << "layer " << l;
        }
      }
    }
    const Restored f32 = restore(*dcal, blob, false, true, cuda::ElementType::kF32);
    const Restored f32_grouped = restore(*dcal, blob, false, true, cuda::ElementType::kF32, 4);
    for (size_t l = 0; l < f32.k.size(); ++l) EXPECT_EQ(f32.k[l], f32_grouped.k[l]) << "fp32 layer " << l;
  }
}

// Token counts and kept components that are not multiples of 16 (the padding of the E4M3 copies), and
// vLLM's paged layout against the contiguous one, both through FP8.
void padding_and_paged_layout(int head_dim, int n_kv_heads) {
  ModelShape shape;
  shape.n_layers = 3;
  shape.n_kv_heads = n_kv_heads;
  shape.head_dim = head_dim;
  const KVCache base = testing::synthetic_cache(shape, 200, 51, DType::kBF16);
  const auto cal_data = std::make_shared<CalibrationData>(testing::calibration_8_20(base, 120, 4, 16));
  const Calibration cal(cal_data);
  cuda::DeviceCalibration::Options o;
  o.fp8 = true;
  auto dcal = cuda::DeviceCalibration::upload(cal, o, nullptr);
  ASSERT_TRUE(dcal.is_ok()) << dcal.status().to_string();
  const KVCache c = testing::synthetic_cache(shape, 203, 52, DType::kBF16);
  auto cpu = make_cpu_backend();
  for (double ratio : {8.0, 20.0}) {
    const std::vector<uint8_t> blob = encode_with(*cal_data, c, 2, ratio);
    auto cd = cpu->decode_coefficients(*cal_data, blob.data(), blob.size(), DecodeOptions{}, nullptr);
    ASSERT_TRUE(cd.is_ok());
    const Restored f8 = restore(*dcal, blob, true, true, cuda::ElementType::kBF16);
    ASSERT_EQ(f8.k.size(), size_t(shape.n_layers));
    std::vector<float> kc(c.k[0].size()), vc(c.k[0].size());
    for (int l = 0; l < shape.n_layers; ++l) {
      ASSERT_TRUE(cpu->restore_layer(*cal_data, *cd, l, kc.data(), vc.data(), 0, nullptr).is_ok());
      const double codec = sq_diff(kc, c.k[size_t(l)]) + sq_diff(vc, c.v[size_t(l)]);
      const double fp8 = sq_diff(f8.k[size_t(l)], kc) + sq_diff(f8.v[size_t(l)], vc);
      EXPECT_LE(fp8 / codec, kMaxFp8Share) << "ratio " << ratio << " layer " << l;
    }
    // Paged against contiguous, both through FP8: byte for byte.
    cuda::BatchDecoder dec;
    cuda::BatchDecodeOptions bo;
    bo.fp8_reconstruction = true;
    ASSERT_TRUE(dec.decode(*dcal, {{blob.data(), blob.size()}}, bo, nullptr).is_ok());
    testing::expect_paged_equals_contiguous(dec, *dcal, shape, {cuda::ElementType::kBF16});
  }
}

TEST(CudaFp8, PaddingAndPagedLayout) {
  SKIP_WITHOUT_DEVICE();
  // head_dim 64 takes the paired epilogue; 62 (an odd half) the one-pair-per-thread one, on the FP8
  // GEMM's bf16 product (4 heads: 248 features, whole 16-byte rows) and on its fp32 one (2 heads: 124).
  for (const auto& [head_dim, heads] : {std::pair{64, 2}, std::pair{62, 4}, std::pair{62, 2}}) {
    SCOPED_TRACE("head_dim " + std::to_string(head_dim) + ", " + std::to_string(heads) + " heads");
    padding_and_paged_layout(head_dim, heads);
  }
}

// cuda::time_restore (what `kvtc bench --device cuda` prints) runs the batch options it is given:
// FP8 with fast accumulation and 4 layers per GEMM beside overlapped exact chunks times every stage,
// the E4M3 copy included; a restore type whose coefficients the options do not keep is refused.
TEST(CudaFp8, TimeRestoreTakesTheBatchOptions) {
  SKIP_WITHOUT_DEVICE();
  const auto cal_data = std::make_shared<CalibrationData>(testing::small_calibration_with_ecsq());
  const Calibration cal(cal_data);
  cuda::DeviceCalibration::Options o;
  o.fp8 = true;
  auto dcal = cuda::DeviceCalibration::upload(cal, o, nullptr);
  ASSERT_TRUE(dcal.is_ok()) << dcal.status().to_string();
  const std::vector<uint8_t> blob = encode_with(*cal_data, testing::repo_cache("small-test.safetensors"), 3, 16);
  const std::vector<cuda::ContainerView> views(2, {blob.data(), blob.size()});
  cuda::BatchDecodeOptions bo;
  bo.keep_fp32 = false;
  bo.fp8_reconstruction = true;
  bo.fp8_fast_accum = true;
  bo.layers_per_gemm = 4;
  bo.overlap_exact = true;
  auto t = cuda::time_restore(*dcal, views, 2, cuda::ElementType::kBF16, bo);
  ASSERT_TRUE(t.is_ok()) << t.status().to_string();
  EXPECT_EQ(t->repeat, 2);
  EXPECT_EQ(t->file_bytes, 2.0 * double(blob.size()));
  EXPECT_GT(t->dequantize_s, 0);
  EXPECT_GT(t->fp8_s, 0);
  EXPECT_GT(t->exact_s, 0);
  EXPECT_GT(t->restore_s, 0);
  EXPECT_GE(t->total_wall_s, t->restore_s);
  EXPECT_EQ(cuda::time_restore(*dcal, views, 2, cuda::ElementType::kF32, bo).status().code(), StatusCode::kInvalidArgument);
}

TEST(CudaFp8, NeedsTheFp8Basis) {
  SKIP_WITHOUT_DEVICE();
  ModelShape shape;
  shape.n_layers = 2;
  shape.n_kv_heads = 1;
  shape.head_dim = 32;
  const KVCache c = testing::synthetic_cache(shape, 100, 61, DType::kBF16);
  const auto cal_data = std::make_shared<CalibrationData>(testing::calibration_8_20(c, 40, 4, 16));
  auto dcal = cuda::DeviceCalibration::upload(Calibration(cal_data), {}, nullptr);  // no FP8 basis
  ASSERT_TRUE(dcal.is_ok());
  const std::vector<uint8_t> blob = encode_with(*cal_data, c, 2, 8);
  cuda::BatchDecoder dec;
  cuda::BatchDecodeOptions bo;
  bo.fp8_reconstruction = true;
  const Status st = dec.decode(*dcal, {{blob.data(), blob.size()}}, bo, nullptr);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("Options::fp8"), std::string::npos) << st.to_string();
  EXPECT_EQ(cuda::BatchDecoder::workspace_bytes(*dcal, {{blob.data(), blob.size()}}, bo).status().code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvtc
