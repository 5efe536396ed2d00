// The GPU encoder's per-element rules (format/quant_rules.hpp) compiled for the host, against the CPU
// code they mirror: fp16 / bf16 conversions against util/half, quantize_group against quantize_token
// (codes and parameters bit for bit, on bell-shaped, heavy-tailed, constant, zero, subnormal, huge,
// NaN and infinite groups of every size class, every kind and width, strided like the GPU reads them),
// and pack_job_byte against chunk_codec's pack_side / pack_codes (aligned and dense) and the CPU
// encoder's exact byte planes. The kernels run the same functions, so a pass here means the GPU writes
// the CPU's bytes from the same coefficients (tests/test_cuda_encode.cpp checks that on a device).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "core/chunk_codec.hpp"
#include "core/quant.hpp"
#include "format/quant_rules.hpp"
#include "test_util.hpp"
#include "util/half.hpp"

namespace kvtc::cuda {
namespace {

TEST(EncodeQuantHost, HalfConversionsMatchUtil) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float a = f16_bits_to_f32(uint16_t(h)), b = f16_to_f32(uint16_t(h));
    ASSERT_EQ(f32_bits(a), f32_bits(b)) << "f16 " << h;
  }
  std::mt19937_64 rng(1);
  std::vector<uint32_t> patterns = {0u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u, 0x00000001u,
                                    0x38800000u, 0x387fffffu, 0x477ff000u, 0x477fefffu, 0x33000000u, 0x33000001u};
  // Every exponent, with mantissas near the rounding points of fp16 and bf16.
  for (uint32_t e = 0; e < 256; ++e)
    for (uint32_t low : {0u, 0xfffu, 0x1000u, 0x1001u, 0x7fffu, 0x8000u, 0x8001u, 0x17ffu})
      for (uint32_t sign : {0u, 0x80000000u})
        patterns.push_back(sign | (e << 23) | (uint32_t(rng()) & 0x7f0000u) | low);
  for (int i = 0; i < 200000; ++i) patterns.push_back(uint32_t(rng()));
  for (uint32_t u : patterns) {
    const float f = bits_f32(u);
    ASSERT_EQ(f32_to_f16_bits(f), f32_to_f16(f)) << std::hex << u;
    ASSERT_EQ(f32_to_bf16_bits(f), f32_to_bf16(f)) << std::hex << u;
  }
}

enum class Dist { kGauss, kHeavy, kUniform, kZeros, kConstant, kSignedZeros, kOutlier, kSubnormal, kHuge, kNaN,
                  kInf, kGrid, kCount };

std::vector<float> make_group(Dist d, int n, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uni(-3.0f, 3.0f);
  std::vector<float> x(static_cast<size_t>(n));
  const float scale = std::exp2(float(int(rng() % 24) - 12));
  for (int i = 0; i < n; ++i) {
    switch (d) {
      case Dist::kGauss: x[i] = scale * normal(rng) + 0.1f * scale; break;
      case Dist::kHeavy: x[i] = scale * normal(rng) / std::max(0.05f, std::fabs(normal(rng))); break;
      case Dist::kUniform: x[i] = scale * uni(rng); break;
      case Dist::kZeros: x[i] = 0.0f; break;
      case Dist::kConstant: x[i] = 1.25f * scale; break;
      case Dist::kSignedZeros: x[i] = (rng() & 1) ? -0.0f : 0.0f; break;
      case Dist::kOutlier: x[i] = i == n / 2 ? 100.0f * scale : scale * normal(rng); break;
      case Dist::kSubnormal: x[i] = 1e-41f * float(int(rng() % 200) - 100); break;
      case Dist::kHuge: x[i] = 3e37f * normal(rng); break;
      case Dist::kNaN: x[i] = i == n / 3 ? std::numeric_limits<float>::quiet_NaN() : normal(rng); break;
      case Dist::kInf: x[i] = i == n - 1 ? -std::numeric_limits<float>::infinity() : normal(rng); break;
      default: x[i] = 0.25f * float(int(rng() % 17) - 8); break;  // exact grid: ties in codes and errors
    }
  }
  return x;
}

TEST(EncodeQuantHost, QuantizeGroupMatchesQuantizeToken) {
  std::mt19937_64 rng(7);
  const int sizes[] = {1, 2, 3, 4, 5, 7, 8, 9, 12, 15, 16, 17, 31, 32, 33, 64, 100, 256, 1024};
  int64_t checked = 0, searched = 0;
  for (int di = 0; di < int(Dist::kCount); ++di)
    for (int n : sizes)
      for (int rep = 0; rep < 3; ++rep) {
        const std::vector<float> x = make_group(Dist(di), n, rng);
        // The GPU reads a group with a stride (component-major coefficients): lay it out that way.
        const int64_t stride = 5;
        std::vector<float> strided(size_t(n) * stride, 7.0f);
        for (int i = 0; i < n; ++i) strided[size_t(i) * stride] = x[size_t(i)];
        for (GroupKind kind : {GroupKind::kInt, GroupKind::kIntAffine})
          for (int w = 1; w <= 8; ++w) {
            std::vector<uint8_t> cpu_codes(static_cast<size_t>(n));
            const TokenQuantParams cp = quantize_token(x.data(), n, kind, w, cpu_codes.data());
            std::vector<uint16_t> gpu_codes(size_t(n) * 3, 0xbeef);
            const QuantParams gp = quantize_group(strided.data(), stride, n, int(kind), w, gpu_codes.data(), 3);
            ASSERT_EQ(gp.scale_f16, cp.scale_f16) << "dist " << di << " n " << n << " kind " << int(kind) << " w " << w;
            ASSERT_EQ(gp.shift_f16, cp.shift_f16) << "dist " << di << " n " << n << " kind " << int(kind) << " w " << w;
            for (int i = 0; i < n; ++i)
              ASSERT_EQ(gpu_codes[size_t(i) * 3], cpu_codes[size_t(i)])
                  << "dist " << di << " n " << n << " kind " << int(kind) << " w " << w << " i " << i;
            ++checked;
            searched += n >= 3;
          }
        // fp16 groups: the stored symbol of each value.
        for (int i = 0; i < n; ++i) {
          const float c = std::clamp(x[size_t(i)], -65504.0f, 65504.0f);
          ASSERT_EQ(f16_symbol(x[size_t(i)]), f32_to_f16(std::isnan(c) ? 0.0f : c));
        }
      }
  EXPECT_GT(searched, checked / 2);
  // Dropped and fp16 kinds write nothing and return zero parameters, like quantize_token.
  float v[4] = {1, 2, 3, 4};
  uint16_t codes[4] = {9, 9, 9, 9};
  const QuantParams none = quantize_group(v, 1, 4, 3, 16, codes, 1);
  EXPECT_EQ(none.scale_f16, 0);
  EXPECT_EQ(codes[0], 9);
}

// Volume: many bell-shaped and heavy-tailed groups, where near-ties between candidates occur.
TEST(EncodeQuantHost, ManyRandomGroupsMatch) {
  std::mt19937_64 rng(99);
  std::vector<uint8_t> cpu(1024);
  std::vector<uint16_t> gpu(1024);
  for (int rep = 0; rep < 20000; ++rep) {
    const int n = 1 + int(rng() % (rep % 10 == 0 ? 1024 : 64));
    const std::vector<float> x = make_group(rng() & 1 ? Dist::kGauss : Dist::kHeavy, n, rng);
    const GroupKind kind = rng() & 1 ? GroupKind::kInt : GroupKind::kIntAffine;
    const int w = 1 + int(rng() % 8);
    const TokenQuantParams cp = quantize_token(x.data(), n, kind, w, cpu.data());
    const QuantParams gp = quantize_group(x.data(), 1, n, int(kind), w, gpu.data(), 1);
    ASSERT_EQ(gp.scale_f16, cp.scale_f16) << "rep " << rep;
    ASSERT_EQ(gp.shift_f16, cp.shift_f16) << "rep " << rep;
    for (int i = 0; i < n; ++i) ASSERT_EQ(gpu[size_t(i)], cpu[size_t(i)]) << "rep " << rep << " i " << i;
  }
}

using ::kvtc::testing::group;

// Random valid symbols of a token block, component-major with row stride ld (as on the GPU), starting
// at column col0.
struct Block {
  StreamAllocation a;
  BlockSymbols b;
  std::vector<uint16_t> sym, side;  // [k][ld], [rows][ld]
  uint64_t ld = 0, col0 = 0;
  uint32_t rows = 0;
};

Block make_block(int64_t n, std::mt19937_64& rng) {
  Block blk;
  uint32_t c = 0;
  blk.a.groups.push_back(group(c, 3, GroupKind::kFloat16, 16)), c += 3;
  for (int w = 8; w >= 1; --w) {
    blk.a.groups.push_back(group(c, 3, GroupKind::kInt, w)), c += 3;
    blk.a.groups.push_back(group(c, 2, GroupKind::kIntAffine, w)), c += 2;
  }
  blk.a.groups.push_back(group(c, 5, GroupKind::kDropped, 0)), c += 5;
  blk.a.groups.push_back(group(c, 9, GroupKind::kInt, 3)), c += 9;
  const uint32_t k = blk.a.n_kept();
  blk.col0 = 3;
  blk.ld = uint64_t(n) + 11;
  blk.b.n_tokens = n;
  blk.b.sym.assign(size_t(k) * n, 0);
  blk.b.side.assign(blk.a.groups.size(), {});
  blk.sym.assign(size_t(k) * blk.ld, 0xdead);
  for (const Group& g : blk.a.groups) blk.rows += uint32_t(side_bits_per_token(g.kind) / 16);
  blk.side.assign(size_t(blk.rows) * blk.ld, 0xdead);
  uint32_t row = 0;
  for (size_t gi = 0; gi < blk.a.groups.size(); ++gi) {
    const Group& g = blk.a.groups[gi];
    for (uint32_t j = g.first_component; j < g.first_component + g.n_components; ++j)
      for (int64_t i = 0; i < n; ++i) {
        uint16_t s = 0;
        if (g.kind == GroupKind::kFloat16) s = f32_to_f16(float(std::normal_distribution<float>(0, 10)(rng)));
        else if (g.kind != GroupKind::kDropped) s = uint16_t(rng() % (1u << g.width_bits));
        blk.b.sym[size_t(j) * n + i] = s;
        if (g.kind != GroupKind::kDropped) blk.sym[size_t(j) * blk.ld + blk.col0 + i] = s;
      }
    const int per = side_bits_per_token(g.kind) / 16;
    blk.b.side[gi].resize(size_t(per) * n);
    for (int r = 0; r < per; ++r, ++row)
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t v = uint16_t(rng());
        blk.b.side[gi][size_t(r) * n + i] = v;
        blk.side[size_t(row) * blk.ld + blk.col0 + i] = v;
      }
  }
  return blk;
}

std::vector<uint8_t> run_job(const PackJob& j, const CodesSpan* spans) {
  std::vector<uint8_t> out(j.raw_bytes);
  for (uint64_t i = 0; i < out.size(); ++i) out[i] = pack_job_byte(j, spans, i);
  return out;
}

TEST(EncodeQuantHost, PackBytesMatchChunkCodec) {
  std::mt19937_64 rng(11);
  for (int64_t n : {1, 2, 7, 8, 9, 48, 255}) {
    const Block blk = make_block(n, rng);
    std::vector<uint8_t> want;
    pack_side(blk.a, blk.b, want);
    PackJob side;
    side.kind = kPackSide;
    side.sym = blk.side.data();
    side.ld = blk.ld;
    side.col0 = blk.col0;
    side.n_tokens = uint32_t(n);
    side.n_rows = blk.rows;
    side.raw_bytes = uint32_t(want.size());
    EXPECT_EQ(run_job(side, nullptr), want) << "side, n " << n;
    for (uint64_t max_bytes : {1u, 40u, 100000u}) {
      for (const auto& [c0, c1] : split_components(blk.a, uint64_t(n), max_bytes)) {
        uint64_t bytes = 0, bits = 0;
        std::vector<CodesSpan> spans(codes_spans(blk.a.groups.data(), blk.a.groups.size(), c0, c1, uint64_t(n), nullptr,
                                                 &bytes, &bits));
        codes_spans(blk.a.groups.data(), blk.a.groups.size(), c0, c1, uint64_t(n), spans.data(), &bytes, &bits);
        ASSERT_EQ(bytes, codes_raw_bytes(blk.a, uint64_t(n), c0, c1, CodesLayout::kAligned));
        ASSERT_EQ((bits + 7) / 8, codes_raw_bytes(blk.a, uint64_t(n), c0, c1, CodesLayout::kDense));
        for (CodesLayout layout : {CodesLayout::kAligned, CodesLayout::kDense}) {
          pack_codes(blk.a, blk.b, c0, c1, layout, want);
          PackJob j;
          j.kind = layout == CodesLayout::kAligned ? kPackAligned : kPackDense;
          j.sym = blk.sym.data();
          j.ld = blk.ld;
          j.col0 = blk.col0;
          j.n_tokens = uint32_t(n);
          j.span_begin = 0;
          j.span_end = uint32_t(spans.size());
          j.raw_bytes = uint32_t(want.size());
          EXPECT_EQ(run_job(j, spans.data()), want)
              << "codes [" << c0 << ", " << c1 << ") n " << n << " layout " << int(layout);
        }
      }
    }
  }
}

TEST(EncodeQuantHost, ExactBytePlanesMatchCpuLayout) {
  std::mt19937_64 rng(5);
  const uint32_t L = 3, H = 2, D = 6, T = 10, layer = 1, t0 = 4, n = 5;
  std::vector<float> cache(size_t(L) * H * T * D);
  for (float& x : cache) x = std::normal_distribution<float>(0, 3)(rng);
  cache[7] = std::numeric_limits<float>::quiet_NaN();
  for (DType dtype : {DType::kBF16, DType::kF16, DType::kF32}) {
    const int eb = dtype_size_bytes(dtype);
    std::vector<uint8_t> elems;
    for (uint32_t h = 0; h < H; ++h)
      for (uint32_t t = t0; t < t0 + n; ++t)
        for (uint32_t d = 0; d < D; ++d) {
          const float x = cache[((size_t(layer) * H + h) * T + t) * D + d];
          uint32_t bits = 0;
          if (dtype == DType::kF32) std::memcpy(&bits, &x, 4);
          else bits = dtype == DType::kBF16 ? f32_to_bf16(x) : f32_to_f16(x);
          for (int b = 0; b < eb; ++b) elems.push_back(uint8_t(bits >> (8 * b)));
        }
    std::vector<uint8_t> want(elems.size());
    to_byte_planes(elems.data(), int64_t(elems.size() / eb), eb, want.data());
    PackJob j;
    j.kind = kPackExact;
    j.cache = cache.data();
    j.cache_tokens = T;
    j.token0 = t0;
    j.n_tokens = n;
    j.layer = layer;
    j.n_heads = H;
    j.head_dim = D;
    j.dtype = uint32_t(dtype);
    j.raw_bytes = uint32_t(want.size());
    EXPECT_EQ(run_job(j, nullptr), want) << dtype_name(dtype);
  }
}

}  // namespace
}  // namespace kvtc::cuda
