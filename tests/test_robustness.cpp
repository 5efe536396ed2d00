// Bad input never crashes: truncated, corrupted and hostile containers and calibration files get a
// clear status with the right code, from both the fast and the reference decoder.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "format/container.hpp"
#include "kvtc/kvtc.hpp"
#include "test_util.hpp"

namespace kvtc {
namespace {

struct Fixture {
  Calibration cal;
  std::vector<uint8_t> container;
};

const Fixture& fixture() {
  static const Fixture f = [] {
    ModelShape shape;
    shape.n_layers = 2;
    shape.n_kv_heads = 2;
    shape.head_dim = 16;
    shape.rope.theta = 10000;
    KVCache calib = testing::synthetic_cache(shape, 500, 1, DType::kBF16);
    CalibrateOptions o;
    o.ratios = {8};
    auto b = CalibrationBuilder::create(shape, "synthetic", o);
    EXPECT_TRUE(b->add(calib).is_ok());
    auto cal = b->finish();
    EXPECT_TRUE(cal.is_ok());
    EncodeOptions eo;
    eo.target_ratio = 8;
    eo.chunk_tokens = 64;
    eo.measure_error = false;
    auto enc = encode(*cal, testing::synthetic_cache(shape, 300, 2, DType::kBF16), eo);
    EXPECT_TRUE(enc.is_ok());
    return Fixture{cal.value(), enc->bytes};
  }();
  return f;
}

// Both decoders agree on whether the input is acceptable.
StatusCode decode_code(const std::vector<uint8_t>& bytes) { return testing::decode_code_both(fixture().cal, bytes); }

TEST(Robustness, ValidContainerDecodes) { EXPECT_EQ(decode_code(fixture().container), StatusCode::kOk); }

TEST(Robustness, EveryTruncationIsRejected) {
  // Every length up to 4 KiB, then every 97th.
  testing::expect_truncations_rejected(fixture().container, decode_code, 4096, 97);
}

TEST(Robustness, TrailingBytesAreRejected) {
  auto bytes = fixture().container;
  bytes.push_back(0);
  EXPECT_EQ(decode_code(bytes), StatusCode::kCorrupt);
}

TEST(Robustness, HeaderBitFlipsFailTheChecksum) {
  const auto& full = fixture().container;
  auto pc = parse_container(full.data(), full.size());
  ASSERT_TRUE(pc.is_ok());
  for (size_t i = 0; i < pc->payload_offset; ++i) {
    auto bytes = full;
    bytes[i] ^= 0x10;
    const StatusCode c = decode_code(bytes);
    // The magic and sizes fail first as CORRUPT/UNSUPPORTED; everything else trips the header CRC.
    ASSERT_TRUE(c == StatusCode::kChecksumMismatch || c == StatusCode::kCorrupt || c == StatusCode::kUnsupported)
        << "byte " << i << ": " << status_code_name(c);
  }
}

TEST(Robustness, PayloadBitFlipsFailTheChunkChecksum) {
  const auto& full = fixture().container;
  auto pc = parse_container(full.data(), full.size());
  ASSERT_TRUE(pc.is_ok());
  std::mt19937 rng(5);
  for (int trial = 0; trial < 200; ++trial) {
    auto bytes = full;
    const size_t i = pc->payload_offset + rng() % (full.size() - pc->payload_offset);
    bytes[i] ^= uint8_t(1u << (rng() % 8));
    ASSERT_EQ(decode_code(bytes), StatusCode::kChecksumMismatch) << "byte " << i;
  }
}

// A hostile file: payload corrupted and every checksum recomputed, so only structure checks stand.
TEST(Robustness, HostileChunksWithValidChecksumsNeverCrash) {
  const auto& full = fixture().container;
  auto pc = parse_container(full.data(), full.size());
  ASSERT_TRUE(pc.is_ok());
  std::mt19937 rng(9);
  int rejected = 0;
  for (int trial = 0; trial < 300; ++trial) {
    auto bytes = full;
    ContainerHeader h = pc->header;
    const size_t ci = rng() % h.chunks.size();
    ChunkEntry& c = h.chunks[ci];
    for (int k = 0; k < 3; ++k) bytes[pc->payload_offset + c.offset + rng() % c.stored_bytes] ^= uint8_t(rng());
    c.crc32 = crc32_of(bytes.data() + pc->payload_offset + c.offset, c.stored_bytes);
    std::vector<uint8_t> header = serialize_container_header(h);
    ASSERT_EQ(header.size(), pc->payload_offset);
    std::copy(header.begin(), header.end(), bytes.begin());
    const StatusCode code = decode_code(bytes);
    ASSERT_TRUE(code == StatusCode::kOk || code == StatusCode::kCorrupt) << status_code_name(code);
    rejected += code == StatusCode::kCorrupt;
  }
  EXPECT_GT(rejected, 0);
}

TEST(Robustness, StructuralLiesAreCorrupt) {
  const auto& full = fixture().container;
  auto pc = parse_container(full.data(), full.size());
  ASSERT_TRUE(pc.is_ok());
  auto rewrite = [&](auto mutate) {
    ContainerHeader h = pc->header;
    mutate(h);
    return decode_code(testing::with_header(full, pc->payload_offset, h));
  };
  EXPECT_EQ(rewrite([](ContainerHeader& h) { h.chunks.pop_back(); }), StatusCode::kCorrupt);
  EXPECT_EQ(rewrite([](ContainerHeader& h) { h.chunks[0].raw_bytes += 1; }), StatusCode::kCorrupt);
  EXPECT_EQ(rewrite([](ContainerHeader& h) { h.chunks[0].n_tokens += 1; }), StatusCode::kCorrupt);
  EXPECT_EQ(rewrite([](ContainerHeader& h) { h.n_tokens += 1; }), StatusCode::kCorrupt);
  EXPECT_EQ(rewrite([](ContainerHeader& h) { h.streams[0].groups[0].width_bits = 9; }), StatusCode::kCorrupt);
  EXPECT_EQ(rewrite([](ContainerHeader& h) { h.streams[1].basis_rank = 1u << 30; }), StatusCode::kCorrupt);
  EXPECT_EQ(rewrite([](ContainerHeader& h) { h.shape.head_dim = 3; }), StatusCode::kCorrupt);
  EXPECT_EQ(rewrite([](ContainerHeader& h) { h.calibration_fingerprint ^= 1; }), StatusCode::kMismatch);
  EXPECT_EQ(rewrite([](ContainerHeader& h) { h.shape.rope.theta = 5000; }), StatusCode::kMismatch);
}

TEST(Robustness, FutureVersionIsUnsupported) {
  auto bytes = fixture().container;
  bytes[8] = uint8_t(kContainerVersion + 1);
  EXPECT_EQ(decode_code(bytes), StatusCode::kUnsupported);
  bytes[8] = 0;
  EXPECT_EQ(decode_code(bytes), StatusCode::kUnsupported);
}

// The container with its preamble's version replaced and the header CRC recomputed.
std::vector<uint8_t> with_version(std::vector<uint8_t> bytes, uint32_t version) {
  std::memcpy(bytes.data() + 8, &version, 4);
  uint32_t header_bytes;
  std::memcpy(&header_bytes, bytes.data() + 12, 4);
  const size_t crc_at = kPreambleBytes + header_bytes - 4;
  const uint32_t crc = crc32_of(bytes.data(), crc_at);
  std::memcpy(bytes.data() + crc_at, &crc, 4);
  return bytes;
}

TEST(Robustness, VersionOneReadsOnlyWithOneExactChunkPerSegment) {
  // The fixture's exact segments fit one chunk each: the file is also a valid version 1 file.
  EXPECT_EQ(decode_code(with_version(fixture().container, 1)), StatusCode::kOk);
  // Split exact segments are version 2 only.
  EncodeOptions eo;
  eo.target_ratio = 8;
  eo.chunk_max_bytes = 512;  // 8 tokens of 2 x 16 bf16 per exact chunk
  eo.measure_error = false;
  ModelShape shape = fixture().cal.shape();
  auto enc = encode(fixture().cal, testing::synthetic_cache(shape, 300, 2, DType::kBF16), eo);
  ASSERT_TRUE(enc.is_ok());
  EXPECT_EQ(decode_code(enc->bytes), StatusCode::kOk);
  EXPECT_EQ(decode_code(with_version(enc->bytes, 1)), StatusCode::kCorrupt);
}

TEST(Robustness, ExactChunksMustPartitionTheirSegment) {
  auto rewrite_exact = [](auto edit) {
    auto pc = parse_container(fixture().container.data(), fixture().container.size());
    EXPECT_TRUE(pc.is_ok());
    ContainerHeader h = pc->header;
    for (ChunkEntry& c : h.chunks)
      if (c.kind == ChunkKind::kExact && c.token_begin > 0) {
        edit(c);
        break;
      }
    return decode_code(testing::with_header(fixture().container, pc->payload_offset, h));
  };
  EXPECT_EQ(rewrite_exact([](ChunkEntry& c) { c.token_begin -= 1; }), StatusCode::kCorrupt);  // into the compressed tokens
  EXPECT_EQ(rewrite_exact([](ChunkEntry& c) { c.n_tokens -= 1; }), StatusCode::kCorrupt);     // a gap at the end
}

TEST(Robustness, SameShapeOtherCalibrationIsMismatch) {
  ModelShape shape = fixture().cal.shape();
  CalibrateOptions o;
  o.ratios = {8};
  auto b = CalibrationBuilder::create(shape, "other", o);
  ASSERT_TRUE(b->add(testing::synthetic_cache(shape, 500, 77, DType::kBF16)).is_ok());
  auto other = b->finish();
  ASSERT_TRUE(other.is_ok());
  ASSERT_NE(other->fingerprint(), fixture().cal.fingerprint());
  auto dec = decode(*other, fixture().container.data(), fixture().container.size());
  EXPECT_EQ(dec.status().code(), StatusCode::kMismatch);
  EXPECT_NE(dec.status().message().find("calibration"), std::string::npos) << dec.status().message();
}

TEST(Robustness, InspectRejectsGarbage) {
  std::vector<uint8_t> junk(100, 0x41);
  auto r = inspect_json(junk.data(), junk.size());
  EXPECT_FALSE(r.is_ok());
  auto ok = inspect_json(fixture().container.data(), fixture().container.size());
  ASSERT_TRUE(ok.is_ok()) << ok.status().to_string();
  EXPECT_NE(ok->find("\"chunks\""), std::string::npos);
}

}  // namespace
}  // namespace kvtc
