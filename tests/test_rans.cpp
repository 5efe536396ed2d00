// The static-table interleaved rANS coder (src/entropy, docs/FORMAT.md "rANS chunk"): tables
// (normalisation, serialisation, parser), round trips through the encoder and both decoders, coded
// size against the empirical entropy, and corruption of tables and chunks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "entropy/rans_decode.hpp"
#include "entropy/rans_decode_avx2.hpp"
#include "entropy/rans_encode.hpp"
#include "entropy/rans_reference.hpp"
#include "entropy/rans_table.hpp"
#include "util/crc32.hpp"

namespace kvtc {
namespace {

std::vector<uint64_t> histogram(const std::vector<uint8_t>& x, int alphabet) {
  std::vector<uint64_t> h(size_t(alphabet), 0);
  for (uint8_t s : x) ++h[s];
  return h;
}

double entropy_bits(const std::vector<uint8_t>& x) {
  const std::vector<uint64_t> h = histogram(x, 256);
  double bits = 0;
  for (uint64_t c : h)
    if (c > 0) bits -= double(c) * std::log2(double(c) / double(x.size()));
  return bits;
}

// Symbols of a named distribution over [0, alphabet).
std::vector<uint8_t> draw(const std::string& dist, size_t n, int alphabet, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> x(n);
  if (dist == "uniform") {
    std::uniform_int_distribution<int> d(0, alphabet - 1);
    for (auto& s : x) s = uint8_t(d(rng));
  } else if (dist == "geometric") {
    std::geometric_distribution<int> d(0.3);
    for (auto& s : x) s = uint8_t(std::min(d(rng), alphabet - 1));
  } else if (dist == "gaussian") {  // what kInt codes look like: centred, bell-shaped
    std::normal_distribution<double> d(alphabet / 2.0, alphabet / 6.0);
    for (auto& s : x) s = uint8_t(std::clamp(int(std::lround(d(rng))), 0, alphabet - 1));
  } else if (dist == "one") {
    for (auto& s : x) s = uint8_t(alphabet - 1);
  } else if (dist == "all256") {  // every byte at least once, then uniform
    std::uniform_int_distribution<int> d(0, 255);
    for (size_t i = 0; i < n; ++i) x[i] = uint8_t(i < 256 ? i : size_t(d(rng)));
  } else {
    ADD_FAILURE() << "unknown distribution " << dist;
  }
  return x;
}

RansTable table_for(const std::vector<uint8_t>& x, int alphabet, int prob_bits, bool cover = false) {
  auto t = build_rans_table(histogram(x, alphabet), prob_bits, cover || x.empty());
  EXPECT_TRUE(t.is_ok()) << t.status().to_string();
  return t.value();
}

// Encodes, decodes with both decoders, checks both give x back; returns the chunk.
std::vector<uint8_t> round_trip(const std::vector<uint8_t>& x, const RansTable& t, int lanes) {
  std::vector<uint8_t> chunk;
  Status s = rans_encode(x.data(), x.size(), t, lanes, chunk);
  EXPECT_TRUE(s.is_ok()) << s.to_string();
  auto d = RansDecodeTable::build(t);
  EXPECT_TRUE(d.is_ok());
  std::vector<uint8_t> fast(x.size() + 1, 0xee), ref(x.size() + 1, 0xee);
  s = rans_decode(chunk.data(), chunk.size(), *d, fast.data(), x.size());
  EXPECT_TRUE(s.is_ok()) << s.to_string();
  const RansRun run{uint32_t(x.size()), &t};
  s = rans_decode_reference(chunk.data(), chunk.size(), &run, 1, ref.data(), x.size());
  EXPECT_TRUE(s.is_ok()) << s.to_string();
  EXPECT_EQ(fast.back(), 0xee) << "wrote past the output";
  fast.pop_back();
  ref.pop_back();
  EXPECT_EQ(fast, x);
  EXPECT_EQ(ref, x);
  return chunk;
}

// ---- tables ----

TEST(RansTable, NormalisesToTheTotalAndKeepsOccurringSymbols) {
  const std::vector<uint64_t> counts = {1000000, 1, 0, 3, 0, 77, 1};
  for (int pb : {4, 8, 12, 15}) {
    auto t = build_rans_table(counts, pb, false);
    ASSERT_TRUE(t.is_ok()) << t.status().to_string();
    EXPECT_TRUE(validate_rans_table(*t).is_ok());
    for (size_t s = 0; s < counts.size(); ++s) EXPECT_EQ(counts[s] > 0, t->freq[s] > 0) << "pb " << pb << " s " << s;
    auto covered = build_rans_table(counts, pb, true);
    ASSERT_TRUE(covered.is_ok());
    for (uint16_t f : covered->freq) EXPECT_GE(f, 1);
  }
  EXPECT_FALSE(build_rans_table(std::vector<uint64_t>(17, 1), 4, false).is_ok());  // 17 symbols > 2^4
  EXPECT_FALSE(build_rans_table({}, 12, false).is_ok());
  EXPECT_FALSE(build_rans_table(std::vector<uint64_t>(257, 1), 12, false).is_ok());
  EXPECT_FALSE(build_rans_table({0, 0}, 12, false).is_ok());
  EXPECT_FALSE(build_rans_table({1}, 16, false).is_ok());
  auto uniform = build_rans_table(std::vector<uint64_t>(3, 0), 12, true);  // no counts: uniform
  ASSERT_TRUE(uniform.is_ok());
  EXPECT_LE(*std::max_element(uniform->freq.begin(), uniform->freq.end()) -
                *std::min_element(uniform->freq.begin(), uniform->freq.end()),
            1);
}

// The exchange condition of rans_table.cpp: no unit move between two symbols lowers the code length.
TEST(RansTable, NormalisationIsExchangeOptimal) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 40; ++trial) {
    const int alphabet = 1 + int(rng() % 256);
    std::vector<uint64_t> counts(static_cast<size_t>(alphabet));
    for (auto& c : counts) c = rng() % 3 == 0 ? 0 : uint64_t(std::exp(double(rng() % 1200) / 100.0));
    counts[0] += 1;
    const int pb = alphabet > 128 ? 12 : 8 + int(rng() % 8);
    auto t = build_rans_table(counts, pb, trial % 2 == 0);
    ASSERT_TRUE(t.is_ok()) << t.status().to_string();
    double best_gain = 0, least_cost = INFINITY;
    for (int s = 0; s < alphabet; ++s) {
      const double c = double(counts[size_t(s)]), f = t->freq[size_t(s)];
      if (f == 0) continue;
      if (c > 0) best_gain = std::max(best_gain, c * std::log2((f + 1) / f));
      if (f > 1) least_cost = std::min(least_cost, c == 0 ? 0.0 : c * std::log2(f / (f - 1)));
    }
    EXPECT_LE(best_gain, least_cost * (1 + 1e-9) + 1e-9) << "trial " << trial;
  }
}

TEST(RansTable, SerialisesAndParses) {
  auto t = build_rans_table({5, 0, 9, 200, 1}, 12, true);
  ASSERT_TRUE(t.is_ok());
  std::vector<uint8_t> bytes = {0xab};  // appends after what is there
  serialize_rans_table(*t, bytes);
  ASSERT_EQ(bytes.size(), 1 + rans_table_serialized_bytes(5));
  auto back = parse_rans_table(bytes.data() + 1, bytes.size() - 1);
  ASSERT_TRUE(back.is_ok()) << back.status().to_string();
  EXPECT_EQ(back->freq, t->freq);
  EXPECT_EQ(back->cum, t->cum);
  EXPECT_EQ(back->prob_bits, 12);
  bytes.push_back(0);  // a prefix parse reports its length; an exact parse refuses the extra byte
  size_t used = 0;
  EXPECT_TRUE(parse_rans_table(bytes.data() + 1, bytes.size() - 1, &used).is_ok());
  EXPECT_EQ(used, rans_table_serialized_bytes(5));
  EXPECT_EQ(parse_rans_table(bytes.data() + 1, bytes.size() - 1).status().code(), StatusCode::kCorrupt);
}

// Every bit flip and truncation, and each field made wrong under a valid CRC, is refused with a message.
TEST(RansTable, ParserRejectsEachCorruption) {
  auto t = build_rans_table({50, 20, 10, 5, 1}, 10, false);
  ASSERT_TRUE(t.is_ok());
  std::vector<uint8_t> good;
  serialize_rans_table(*t, good);
  for (size_t bit = 0; bit < good.size() * 8; ++bit) {
    std::vector<uint8_t> m = good;
    m[bit / 8] ^= uint8_t(1u << (bit % 8));
    auto r = parse_rans_table(m.data(), m.size());
    EXPECT_FALSE(r.is_ok()) << "flip of bit " << bit << " accepted";
    if (!r.is_ok()) {
      EXPECT_FALSE(r.status().message().empty());
    }
  }
  for (size_t cut = 0; cut < good.size(); ++cut)
    EXPECT_FALSE(parse_rans_table(good.data(), cut).is_ok()) << "truncation to " << cut << " accepted";
  EXPECT_FALSE(parse_rans_table(nullptr, 0).is_ok());

  // Field edits with the CRC recomputed: each must fail for its own reason.
  auto edit = [&](auto fn) {
    std::vector<uint8_t> m = good;
    fn(m);
    const uint32_t crc = crc32_update(0, m.data(), m.size() - 4);
    std::memcpy(m.data() + m.size() - 4, &crc, 4);
    return parse_rans_table(m.data(), m.size()).status();
  };
  Status s = edit([](std::vector<uint8_t>& m) { m[0] = 2; });
  EXPECT_EQ(s.code(), StatusCode::kUnsupported) << s.to_string();
  s = edit([](std::vector<uint8_t>& m) { m[1] = 0; });
  EXPECT_EQ(s.code(), StatusCode::kCorrupt);
  EXPECT_NE(s.message().find("prob_bits"), std::string::npos) << s.message();
  s = edit([](std::vector<uint8_t>& m) { m[1] = 16; });
  EXPECT_EQ(s.code(), StatusCode::kCorrupt);
  s = edit([](std::vector<uint8_t>& m) { m[4] += 1; });  // the sum is off by one
  EXPECT_EQ(s.code(), StatusCode::kCorrupt);
  EXPECT_NE(s.message().find("sum"), std::string::npos) << s.message();
  s = edit([](std::vector<uint8_t>& m) {  // one frequency above the total, the sum wrapped back
    const uint16_t big = 0x8000, rest = uint16_t(1024 - 0x8000);
    std::memcpy(m.data() + 4, &big, 2);
    std::memcpy(m.data() + 6, &rest, 2);
  });
  EXPECT_EQ(s.code(), StatusCode::kCorrupt);
  // Alphabet of 0 or 257 (the length then disagrees too; the alphabet is named first).
  for (uint16_t a : {uint16_t(0), uint16_t(257)}) {
    std::vector<uint8_t> m = good;
    std::memcpy(m.data() + 2, &a, 2);
    s = parse_rans_table(m.data(), m.size()).status();
    EXPECT_EQ(s.code(), StatusCode::kCorrupt);
    EXPECT_NE(s.message().find("alphabet"), std::string::npos) << s.message();
  }
  s = parse_rans_table(good.data(), good.size() - 1).status();
  EXPECT_NE(s.message().find("truncated"), std::string::npos) << s.message();
  std::vector<uint8_t> flipped = good;
  flipped[5] ^= 1;
  EXPECT_EQ(parse_rans_table(flipped.data(), flipped.size()).status().code(), StatusCode::kChecksumMismatch);
}

// ---- round trips ----

struct Case {
  std::string dist;
  size_t n;
  int alphabet;
  int prob_bits;
};

TEST(RansCoder, RoundTripsOverDistributionsLengthsAndLanes) {
  const std::vector<Case> cases = {
      {"uniform", 10000, 256, 12}, {"uniform", 777, 16, 12},    {"geometric", 5000, 64, 12},
      {"geometric", 65536, 256, 15}, {"gaussian", 3001, 256, 12}, {"gaussian", 4097, 4, 8},
      {"one", 1000, 256, 12},      {"one", 31, 2, 1},           {"all256", 4096, 256, 12},
      {"all256", 256, 256, 8},     {"uniform", 0, 256, 12},     {"uniform", 1, 256, 12},
      {"geometric", 33, 16, 12},   {"geometric", 65535, 256, 11}, {"uniform", 65536, 2, 15},
  };
  uint32_t seed = 1;
  for (const Case& c : cases)
    for (int lanes : {1, 2, 4, 7, 8, 32, 64}) {
      SCOPED_TRACE(c.dist + " n=" + std::to_string(c.n) + " alphabet=" + std::to_string(c.alphabet) +
                   " prob_bits=" + std::to_string(c.prob_bits) + " lanes=" + std::to_string(lanes));
      const std::vector<uint8_t> x = draw(c.dist, c.n, c.alphabet, seed++);
      const RansTable t = table_for(x, c.alphabet, c.prob_bits);
      const std::vector<uint8_t> chunk = round_trip(x, t, lanes);
      auto info = parse_rans_chunk_header(chunk.data(), chunk.size());
      ASSERT_TRUE(info.is_ok());
      EXPECT_EQ(info->n_lanes, lanes);
      EXPECT_EQ(info->n_symbols, c.n);
    }
}

// A table learnt elsewhere (calibration) that covers its alphabet codes symbols it never saw.
TEST(RansCoder, CoveredTableCodesUnseenSymbols) {
  const std::vector<uint8_t> train = draw("gaussian", 20000, 16, 3);
  const RansTable t = table_for(train, 16, 12, true);
  std::vector<uint8_t> x = draw("uniform", 3000, 16, 4);
  round_trip(x, t, 32);
  const RansTable narrow = table_for(std::vector<uint8_t>{1, 2, 3}, 16, 12, false);
  std::vector<uint8_t> chunk;
  EXPECT_EQ(rans_encode(x.data(), x.size(), narrow, 4, chunk).code(), StatusCode::kInvalidArgument);
}

// Runs with different tables (and totals) in one chunk, the way a codes chunk has one table per
// component; the runs do not align with the lanes.
TEST(RansCoder, RunsOfDifferentTablesShareOneChunk) {
  std::vector<uint8_t> x;
  std::vector<RansTable> tables;
  std::vector<uint32_t> lengths = {37, 1, 0, 500, 4096, 3};
  const char* dists[] = {"gaussian", "one", "uniform", "geometric", "uniform", "gaussian"};
  const int alphabets[] = {16, 256, 8, 256, 2, 4};
  const int pbs[] = {12, 8, 12, 15, 3, 10};
  for (size_t r = 0; r < lengths.size(); ++r) {
    std::vector<uint8_t> part = draw(dists[r], lengths[r], alphabets[r], uint32_t(10 + r));
    tables.push_back(table_for(part, alphabets[r], pbs[r], true));
    x.insert(x.end(), part.begin(), part.end());
  }
  std::vector<RansRun> runs;
  std::vector<RansDecodeTable> dec;
  for (size_t r = 0; r < lengths.size(); ++r) dec.push_back(*RansDecodeTable::build(tables[r]));
  std::vector<RansDecodeRun> dec_runs;
  for (size_t r = 0; r < lengths.size(); ++r) {
    runs.push_back({lengths[r], &tables[r]});
    dec_runs.push_back({lengths[r], &dec[r]});
  }
  for (int lanes : {1, 5, 32}) {
    std::vector<uint8_t> chunk, fast(x.size()), ref(x.size());
    ASSERT_TRUE(rans_encode(x.data(), x.size(), runs.data(), runs.size(), lanes, chunk).is_ok());
    ASSERT_TRUE(rans_decode(chunk.data(), chunk.size(), dec_runs.data(), dec_runs.size(), fast.data(), x.size()).is_ok());
    ASSERT_TRUE(rans_decode_reference(chunk.data(), chunk.size(), runs.data(), runs.size(), ref.data(), x.size()).is_ok());
    EXPECT_EQ(fast, x);
    EXPECT_EQ(ref, x);
  }
  // Runs that do not cover the symbols are the caller's mistake.
  std::vector<uint8_t> chunk, out(x.size());
  ASSERT_TRUE(rans_encode(x.data(), x.size(), runs.data(), runs.size(), 4, chunk).is_ok());
  dec_runs.back().n_symbols -= 1;
  EXPECT_EQ(rans_decode(chunk.data(), chunk.size(), dec_runs.data(), dec_runs.size(), out.data(), x.size()).code(),
            StatusCode::kInvalidArgument);
  runs.back().n_symbols += 1;
  EXPECT_EQ(rans_encode(x.data(), x.size(), runs.data(), runs.size(), 4, chunk).code(), StatusCode::kInvalidArgument);
}

TEST(RansCoder, EncoderRefusesBadArguments) {
  const RansTable t = table_for(draw("uniform", 100, 16, 5), 16, 12, true);
  std::vector<uint8_t> x(kRansMaxChunkSymbols + 1, 1), chunk;
  EXPECT_EQ(rans_encode(x.data(), x.size(), t, 4, chunk).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(rans_encode(x.data(), 10, t, 0, chunk).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(rans_encode(x.data(), 10, t, 65, chunk).code(), StatusCode::kInvalidArgument);
  x[3] = 16;  // outside the alphabet
  EXPECT_EQ(rans_encode(x.data(), 10, t, 4, chunk).code(), StatusCode::kInvalidArgument);
  RansTable broken = t;
  broken.freq[0] += 1;
  EXPECT_EQ(rans_encode(x.data(), 2, broken, 4, chunk).code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(RansDecodeTable::build(broken).is_ok());
}

// With the table learnt from the data itself, the chunk is within 1% of the empirical entropy plus
// the header, the final states and a few bytes.
TEST(RansCoder, SizeIsNearTheEmpiricalEntropy) {
  for (const char* dist : {"uniform", "geometric", "gaussian", "all256"})
    for (int lanes : {4, 32}) {
      const std::vector<uint8_t> x = draw(dist, kRansMaxChunkSymbols, 256, 99);
      const RansTable t = table_for(x, 256, 12);
      const std::vector<uint8_t> chunk = round_trip(x, t, lanes);
      const double h_bytes = entropy_bits(x) / 8;
      const double limit = 1.01 * h_bytes + double(kRansChunkHeaderBytes + 4 * lanes) + 16;
      EXPECT_LE(double(chunk.size()), limit) << dist << " lanes " << lanes << ": entropy " << h_bytes << " B";
    }
}

// A chunk written out byte for byte (docs/FORMAT.md, "rANS chunk"): the layout is a contract with
// decoders elsewhere (the GPU), so any change to it must show here. Table {2048, 1024, 1024} of total
// 2^12, two lanes. First step by hand: lane 0 starts at 0x002174ee; slot = x mod 4096 = 1262 < 2048,
// so symbol 0, and x = 2048 * (x >> 12) + 1262 = 1096942, no word read; lane 1 starts at 0x0004088b,
// slot 2187 lies in [2048, 3072): symbol 1.
TEST(RansCoder, GoldenChunk) {
  auto t = build_rans_table({2, 1, 1}, 12, false);
  ASSERT_TRUE(t.is_ok());
  ASSERT_EQ(t->freq, (std::vector<uint16_t>{2048, 1024, 1024}));
  const std::vector<uint8_t> x = {0, 1, 2, 0, 2, 2, 1, 0, 0, 0, 1, 2, 2, 2, 0, 1, 1, 0, 2, 0, 1, 1, 2, 0};
  const std::vector<uint8_t> golden = {
      0x18, 0x00, 0x00, 0x00,  // n_symbols 24
      0x02, 0x00, 0x00, 0x00,  // 2 lanes, reserved
      0x04, 0x00, 0x00, 0x00,  // 4 stream bytes
      0xee, 0x74, 0x21, 0x00,  // lane 0 state
      0x8b, 0x08, 0x04, 0x00,  // lane 1 state
      0x00, 0x9c, 0x00, 0x70,  // words 0x9c00, 0x7000
  };
  EXPECT_EQ(round_trip(x, *t, 2), golden);
  std::vector<uint8_t> table_bytes;
  serialize_rans_table(*t, table_bytes);
  ASSERT_EQ(table_bytes.size(), 14u);
  EXPECT_EQ(std::vector<uint8_t>(table_bytes.begin(), table_bytes.begin() + 10),
            (std::vector<uint8_t>{0x01, 0x0c, 0x03, 0x00, 0x00, 0x08, 0x00, 0x04, 0x00, 0x04}));
}

// The AVX2 rounds (lane counts that are multiples of 8, where the CPU has AVX2) and the scalar loop
// give the same status and the same symbols, on good chunks and on corrupt ones.
TEST(RansCoder, Avx2AndScalarRoundsAgree) {
  if (!rans_have_avx2()) GTEST_SKIP() << "no AVX2 on this CPU: only the scalar loop runs";
  std::mt19937 rng(31);
  for (int lanes : {8, 16, 32, 64})
    for (const char* dist : {"uniform", "geometric", "gaussian", "one"}) {
      const std::vector<uint8_t> x = draw(dist, 5000 + size_t(lanes) * 3, 256, uint32_t(lanes));
      const RansTable t = table_for(x, 256, lanes == 16 ? 15 : 12, true);
      auto d = RansDecodeTable::build(t);
      ASSERT_TRUE(d.is_ok());
      const std::vector<uint8_t> good = round_trip(x, t, lanes);
      for (int trial = 0; trial < 40; ++trial) {
        std::vector<uint8_t> m = good;
        if (trial > 0) m[rng() % m.size()] ^= uint8_t(1u << (rng() % 8));
        std::vector<uint8_t> simd(x.size()), scalar(x.size());
        const Status a = rans_decode(m.data(), m.size(), *d, simd.data(), x.size());
        rans_enable_avx2(false);
        const Status b = rans_decode(m.data(), m.size(), *d, scalar.data(), x.size());
        rans_enable_avx2(true);
        ASSERT_EQ(a.code(), b.code()) << dist << " lanes " << lanes << " trial " << trial << ": " << a.to_string()
                                      << " / " << b.to_string();
        EXPECT_EQ(a.message(), b.message());
        if (a.is_ok()) {
          EXPECT_EQ(simd, scalar);
        }
        if (trial == 0) {
          EXPECT_EQ(simd, x);
        }
      }
    }
}

// ---- corruption ----

// Flips every bit of chunks over small inputs. Integrity of a chunk is the container's CRC-32 of the
// stored bytes (every flip changes it); beyond that, the decoders must never read or write out of
// bounds, must agree with each other on accepting and on the symbols, and an accepted chunk must be
// exactly what the encoder makes of those symbols (the chunk is the unique code of its symbols). Most
// flips are caught by the structure alone (lengths, states, the final-state check).
TEST(RansCoder, EveryBitFlipIsRejectedOrCaughtByTheCrc) {
  for (int lanes : {1, 4, 32}) {
    const std::vector<uint8_t> x = draw("gaussian", 150, 16, uint32_t(20 + lanes));
    const RansTable t = table_for(x, 16, 12, true);
    auto d = RansDecodeTable::build(t);
    ASSERT_TRUE(d.is_ok());
    const RansRun run{uint32_t(x.size()), &t};
    const std::vector<uint8_t> good = round_trip(x, t, lanes);
    const uint32_t good_crc = crc32_update(0, good.data(), good.size());
    size_t rejected = 0, flips = 0;
    for (size_t bit = 0; bit < good.size() * 8; ++bit, ++flips) {
      std::vector<uint8_t> m = good, fast(x.size()), ref(x.size());
      m[bit / 8] ^= uint8_t(1u << (bit % 8));
      const bool fast_ok = rans_decode(m.data(), m.size(), *d, fast.data(), x.size()).is_ok();
      const bool ref_ok = rans_decode_reference(m.data(), m.size(), &run, 1, ref.data(), x.size()).is_ok();
      ASSERT_EQ(fast_ok, ref_ok) << "lanes " << lanes << " bit " << bit;
      if (!fast_ok) {
        ++rejected;
        continue;
      }
      EXPECT_EQ(fast, ref) << "bit " << bit;
      EXPECT_NE(crc32_update(0, m.data(), m.size()), good_crc);
      std::vector<uint8_t> again;
      ASSERT_TRUE(rans_encode(fast.data(), fast.size(), t, lanes, again).is_ok());
      EXPECT_EQ(again, m) << "an accepted chunk is not the code of its symbols, bit " << bit;
    }
    std::printf("lanes %d: %zu of %zu single-bit flips rejected by the decoders alone\n", lanes, rejected, flips);
    EXPECT_GE(double(rejected), 0.75 * double(flips)) << "lanes " << lanes;
  }
}

TEST(RansCoder, EveryTruncationAndExtensionIsRejected) {
  const std::vector<uint8_t> x = draw("geometric", 300, 32, 8);
  const RansTable t = table_for(x, 32, 12, true);
  auto d = RansDecodeTable::build(t);
  ASSERT_TRUE(d.is_ok());
  const RansRun run{uint32_t(x.size()), &t};
  for (int lanes : {1, 8, 32}) {
    const std::vector<uint8_t> good = round_trip(x, t, lanes);
    std::vector<uint8_t> out(x.size());
    for (size_t cut = 0; cut < good.size(); ++cut) {
      // A copy of exactly `cut` bytes, so that ASan sees any read past the end.
      std::vector<uint8_t> m(good.begin(), good.begin() + long(cut));
      EXPECT_FALSE(rans_decode(m.data(), m.size(), *d, out.data(), x.size()).is_ok()) << cut;
      EXPECT_FALSE(rans_decode_reference(m.data(), m.size(), &run, 1, out.data(), x.size()).is_ok()) << cut;
    }
    std::vector<uint8_t> longer = good;
    longer.push_back(0);
    longer.push_back(0);
    EXPECT_FALSE(rans_decode(longer.data(), longer.size(), *d, out.data(), x.size()).is_ok());
    // The count the chunk declares must be the one the context expects.
    const RansDecodeRun shorter{uint32_t(x.size() - 1), &*d};
    EXPECT_EQ(rans_decode(good.data(), good.size(), &shorter, 1, out.data(), x.size() - 1).code(),
              StatusCode::kCorrupt);
  }
}

// Header fields one at a time: each is refused by both decoders.
TEST(RansCoder, HeaderFieldsAreChecked) {
  const std::vector<uint8_t> x = draw("uniform", 64, 8, 9);
  const RansTable t = table_for(x, 8, 12, true);
  auto d = RansDecodeTable::build(t);
  const RansRun run{uint32_t(x.size()), &t};
  const std::vector<uint8_t> good = round_trip(x, t, 4);
  auto refused = [&](auto fn, const char* what) {
    std::vector<uint8_t> m = good, out(x.size());
    fn(m);
    const Status fast = rans_decode(m.data(), m.size(), *d, out.data(), x.size());
    EXPECT_EQ(fast.code(), StatusCode::kCorrupt) << what;
    EXPECT_FALSE(rans_decode_reference(m.data(), m.size(), &run, 1, out.data(), x.size()).is_ok()) << what;
  };
  refused([](std::vector<uint8_t>& m) { m[4] = 0; }, "zero lanes");
  refused([](std::vector<uint8_t>& m) { m[4] = 65; }, "65 lanes");
  refused([](std::vector<uint8_t>& m) { m[5] = 1; }, "reserved byte");
  refused([](std::vector<uint8_t>& m) { m[7] = 1; }, "reserved u16");
  refused([](std::vector<uint8_t>& m) { m[8] |= 1; }, "odd stream length");
  refused([](std::vector<uint8_t>& m) { m[2] = 1; }, "symbol count above the bound");
  refused([](std::vector<uint8_t>& m) { std::memset(m.data() + 12, 0, 4); }, "lane state below 2^16");
}

}  // namespace
}  // namespace kvtc
