// Bad codec 3 input never crashes (docs/FORMAT.md sections 7 and 9), in the style of test_robustness.cpp:
// every truncation and every header bit flip of a small format 3 container is rejected, every bit flip
// of its rANS chunks fails the chunk checksum, and with checksums off (or recomputed, for the reference
// decoder) every such flip is rejected or decodes to the same coefficients in both decoders. Run under
// ASan too (KVTC_SANITIZE): the fast decoder must never read outside a chunk.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <memory>
#include <random>

#include "core/reference_decoder.hpp"
#include "cpu/cpu_backend.hpp"
#include "format/container.hpp"
#include "kvtc/kvtc.hpp"
#include "test_util.hpp"

namespace kvtc {
namespace {

struct Fixture {
  Calibration cal{nullptr};
  std::vector<uint8_t> container;
  ParsedContainer parsed;
};

// 2 x 2 x 16, 96 compressed tokens in blocks of 32 between 2 exact tokens at each end, at ratio 8; one
// token made huge, so that the rANS chunks carry escapes and buckets in their raw bits.
const Fixture& fixture() {
  static const Fixture f = [] {
    ModelShape shape;
    shape.n_layers = 2;
    shape.n_kv_heads = 2;
    shape.head_dim = 16;
    shape.rope.theta = 10000;
    KVCache calib = testing::synthetic_cache(shape, 300, 1, DType::kBF16);
    auto data = std::make_shared<CalibrationData>(testing::calibration_8_20(calib, 64, 2, 2));
    testing::add_synthetic_ecsq_models(*data, calib, 2000, 7);
    Fixture fx;
    fx.cal = Calibration(data);
    KVCache cache = testing::synthetic_cache(shape, 100, 2, DType::kBF16);
    for (int l = 0; l < 2; ++l)
      for (int h = 0; h < 2; ++h)
        for (int d = 0; d < 16; ++d) {
          cache.k_row(l, h, 30)[d] *= 1000.0f;
          cache.v_row(l, h, 30)[d] *= 1000.0f;
        }
    EncodeOptions eo;
    eo.codec = 3;
    eo.target_ratio = 8;
    eo.chunk_tokens = 32;
    eo.rans_lanes = 4;
    eo.measure_error = false;
    auto enc = encode(fx.cal, cache, eo);
    EXPECT_TRUE(enc.is_ok()) << enc.status().to_string();
    fx.container = enc->bytes;
    auto pc = parse_container(fx.container.data(), fx.container.size());
    EXPECT_TRUE(pc.is_ok());
    fx.parsed = pc.value();
    return fx;
  }();
  return f;
}

// Both decoders' status on the input; they must agree on whether it is acceptable.
StatusCode decode_code(const std::vector<uint8_t>& bytes) {
  DecodeOptions o;
  o.n_threads = 1;
  return testing::decode_code_both(fixture().cal, bytes, o);
}

// Bits between flipped bits in the payload tests: every bit in an optimised build; every third under the
// sanitizers (-O0 and ASan make each decode ~20 times slower; a stride coprime to 8 still flips every byte
// and every bit position), unless KVTC_EVERY_BIT=1 asks for all of them.
uint64_t flip_stride() {
#if defined(__SANITIZE_ADDRESS__)
  const char* every = std::getenv("KVTC_EVERY_BIT");
  return every != nullptr && std::string(every) == "1" ? 1 : 3;
#else
  return 1;
#endif
}

bool rejected(StatusCode c) { return c == StatusCode::kCorrupt || c == StatusCode::kChecksumMismatch; }

TEST(RobustnessV3, ValidContainerIsFormatThreeAndDecodes) {
  const ContainerHeader& h = fixture().parsed.header;
  EXPECT_EQ(h.format_version, 3u);
  int rans = 0;
  for (const ChunkEntry& c : h.chunks) rans += c.coder == ChunkCoder::kEcsqRans;
  EXPECT_GE(rans, 6);  // 3 blocks x 2 streams at least
  std::printf("container: %zu bytes, header %llu bytes, %d rANS chunks\n", fixture().container.size(),
              (unsigned long long)fixture().parsed.payload_offset, rans);
  EXPECT_EQ(decode_code(fixture().container), StatusCode::kOk);
}

TEST(RobustnessV3, EveryTruncationIsRejected) {
  testing::expect_truncations_rejected(fixture().container, decode_code);
}

TEST(RobustnessV3, EveryHeaderBitFlipIsRejected) {
  const auto& full = fixture().container;
  for (size_t bit = 0; bit < fixture().parsed.payload_offset * 8; ++bit) {
    auto bytes = full;
    bytes[bit / 8] ^= uint8_t(1u << (bit % 8));
    const StatusCode c = decode_code(bytes);
    ASSERT_TRUE(rejected(c) || c == StatusCode::kUnsupported) << "bit " << bit << ": " << status_code_name(c);
  }
}

// Every third bit of every rANS chunk (every byte, every bit position), and every 7th bit of the rest of
// the payload (exact chunks, coded as in version 2, which test_robustness.cpp covers): the chunk checksum
// catches each.
TEST(RobustnessV3, PayloadBitFlipsFailTheChunkChecksum) {
  const auto& full = fixture().container;
  const ParsedContainer& pc = fixture().parsed;
  for (const ChunkEntry& c : pc.header.chunks) {
    const uint64_t step = c.coder == ChunkCoder::kEcsqRans ? 3 * flip_stride() : 7 * flip_stride();
    for (uint64_t bit = 0; bit < uint64_t(c.stored_bytes) * 8; bit += step) {
      auto bytes = full;
      bytes[pc.payload_offset + c.offset + bit / 8] ^= uint8_t(1u << (bit % 8));
      ASSERT_EQ(decode_code(bytes), StatusCode::kChecksumMismatch) << "chunk at " << c.offset << " bit " << bit;
    }
  }
}

// Without the checksum, every bit flip in a rANS chunk is caught by section 9's and the rANS chunk's
// checks or decodes to some coefficients; the fast decoder (checksums off) and the reference decoder
// (given the recomputed CRC, since it always verifies) agree on which, and on the coefficients.
TEST(RobustnessV3, RansChunkBitFlipsWithoutChecksumsAgreeOrAreCaught) {
  const auto& full = fixture().container;
  const ParsedContainer& pc = fixture().parsed;
  CpuBackend cpu;
  DecodeOptions no_crc;
  no_crc.verify_checksums = false;
  no_crc.n_threads = 1;
  int caught = 0, decoded = 0;
  for (size_t ci = 0; ci < pc.header.chunks.size(); ++ci) {
    const ChunkEntry& c = pc.header.chunks[ci];
    if (c.coder != ChunkCoder::kEcsqRans) continue;
    for (uint64_t bit = 0; bit < uint64_t(c.stored_bytes) * 8; bit += flip_stride()) {
      auto bytes = full;
      bytes[pc.payload_offset + c.offset + bit / 8] ^= uint8_t(1u << (bit % 8));
      auto fast = cpu.decode_coefficients(fixture().cal.data(), bytes.data(), bytes.size(), no_crc, nullptr);
      // The same bytes with the chunk's CRC made right, for the reference decoder.
      ContainerHeader h = pc.header;
      h.chunks[ci].crc32 = crc32_of(bytes.data() + pc.payload_offset + c.offset, c.stored_bytes);
      const std::vector<uint8_t> header = serialize_container_header(h);
      ASSERT_EQ(header.size(), pc.payload_offset);
      std::copy(header.begin(), header.end(), bytes.begin());
      ReferenceCoefficients rc;
      auto ref = reference_decode(fixture().cal.data(), bytes.data(), bytes.size(), &rc);
      ASSERT_EQ(fast.is_ok(), ref.is_ok()) << "chunk " << ci << " bit " << bit << ": " << fast.status().to_string()
                                           << " vs " << ref.status().to_string();
      if (!fast.is_ok()) {
        ASSERT_EQ(fast.status().code(), StatusCode::kCorrupt) << fast.status().to_string();
        ++caught;
        continue;
      }
      ++decoded;
      const int64_t m = int64_t(h.n_compressed_tokens());
      for (int s = 0; s < 2; ++s) {
        const int64_t kept = h.streams[s].n_kept(), rank = h.streams[s].basis_rank;
        for (int64_t t = 0; t < m; ++t)
          for (int64_t j = 0; j < kept; ++j)
            ASSERT_EQ(rc.coef[s][size_t(t * rank + j)], double(fast->coef[s][size_t(t * kept + j)]))
                << "chunk " << ci << " bit " << bit;
      }
    }
  }
  EXPECT_GT(caught, 0);
  std::printf("rANS chunk bit flips without checksums: %d caught, %d decoded\n", caught, decoded);
}

TEST(RobustnessV3, StructuralLiesAreCaught) {
  const auto& full = fixture().container;
  const ParsedContainer& pc = fixture().parsed;
  auto rewrite = [&](auto mutate) {
    ContainerHeader h = pc.header;
    mutate(h);
    return decode_code(testing::with_header(full, pc.payload_offset, h));
  };
  const uint32_t n_levels = uint32_t(fixture().cal.data().key.ecsq.levels.size());
  auto first_rans = [](ContainerHeader& h) -> ChunkEntry& {
    for (ChunkEntry& c : h.chunks)
      if (c.coder == ChunkCoder::kEcsqRans) return c;
    return h.chunks[0];
  };
  EXPECT_EQ(rewrite([&](ContainerHeader& h) { h.streams[0].ecsq_level = n_levels; }), StatusCode::kCorrupt);
  EXPECT_EQ(rewrite([](ContainerHeader& h) { h.streams[0].ecsq_n_kept -= 1; }), StatusCode::kCorrupt);
  EXPECT_EQ(rewrite([](ContainerHeader& h) { h.streams[1].ecsq_fingerprint ^= 1; }), StatusCode::kMismatch);
  EXPECT_EQ(rewrite([&](ContainerHeader& h) { first_rans(h).raw_bytes += first_rans(h).n_tokens; }), StatusCode::kCorrupt);
  EXPECT_EQ(rewrite([&](ContainerHeader& h) { first_rans(h).raw_bytes -= 1; }), StatusCode::kCorrupt);
  // Another level of the same model: its n_kept or symbol counts usually disagree with the chunks; where
  // they agree, the chunks decode under other tables, which the rANS checks mostly catch (never a crash,
  // and both decoders agree: decode_code checks that).
  const StatusCode other = rewrite([](ContainerHeader& h) { h.streams[0].ecsq_level = h.streams[0].ecsq_level == 0 ? 1 : 0; });
  EXPECT_TRUE(other == StatusCode::kCorrupt || other == StatusCode::kOk) << status_code_name(other);
}

TEST(RobustnessV3, CalibrationWithoutEcsqModelsIsMismatch) {
  auto data = std::make_shared<CalibrationData>(fixture().cal.data());
  data->value.ecsq = EcsqModel{};
  const auto& bytes = fixture().container;
  auto fast = decode(Calibration(data), bytes.data(), bytes.size());
  auto ref = reference_decode(*data, bytes.data(), bytes.size());
  EXPECT_EQ(fast.status().code(), StatusCode::kMismatch);
  EXPECT_EQ(ref.status().code(), StatusCode::kMismatch);
}

}  // namespace
}  // namespace kvtc
