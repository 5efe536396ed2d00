// The host mirror of the GPU DEFLATE encoder (cuda/huffman_deflate.hpp), on the CPU: its streams
// inflate with zlib and libdeflate to exactly the input; its Huffman codes are length-limited,
// complete and optimal where the limit does not bind; its size is near the empirical entropy on
// skewed data; a too-small destination is reported and never written past; the CRC helpers the
// GPU combines per thread agree with zlib.
#include <gtest/gtest.h>
#include <libdeflate.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <queue>
#include <random>
#include <string>
#include <vector>

#include "cuda/huffman_deflate.hpp"

namespace kvtc::cuda {
namespace {

constexpr size_t kGuardBytes = 64;
constexpr uint8_t kPoison = 0xa5;

// Inputs like the chunks kvtc writes, plus the extremes.
enum class Kind { kRandom, kGeometric, kPacked4Bit, kPacked2Bit, kAllSame, kText };

std::vector<uint8_t> make_input(Kind kind, size_t n, std::mt19937_64& rng) {
  std::vector<uint8_t> v(n);
  switch (kind) {
    case Kind::kRandom:
      for (auto& x : v) x = uint8_t(rng());
      break;
    case Kind::kGeometric: {
      std::geometric_distribution<int> g(0.3);
      for (auto& x : v) x = uint8_t(std::min(g(rng), 255));
      break;
    }
    case Kind::kPacked4Bit: {  // two 4-bit codes per byte, centred like quantised coefficients
      std::normal_distribution<double> g(7.5, 1.6);
      auto code = [&] { return uint8_t(std::clamp(int(std::lround(g(rng))), 0, 15)); };
      for (auto& x : v) x = uint8_t(code() | code() << 4);
      break;
    }
    case Kind::kPacked2Bit: {  // four 2-bit codes per byte, the middle two values most frequent
      const uint8_t table[8] = {1, 1, 1, 2, 2, 2, 0, 3};
      for (auto& x : v) x = uint8_t(table[rng() % 8] | table[rng() % 8] << 2 | table[rng() % 8] << 4 | table[rng() % 8] << 6);
      break;
    }
    case Kind::kAllSame: {
      const uint8_t b = uint8_t(rng());
      std::fill(v.begin(), v.end(), b);
      break;
    }
    case Kind::kText: {
      const char* words[] = {"key ", "value ", "cache ", "transform ", "coding ", "deflate ", "\n"};
      size_t i = 0;
      while (i < n)
        for (const char* w = words[rng() % 7]; *w && i < n; ++w) v[i++] = uint8_t(*w);
      break;
    }
  }
  return v;
}

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::kRandom: return "random";
    case Kind::kGeometric: return "geometric";
    case Kind::kPacked4Bit: return "packed-4bit";
    case Kind::kPacked2Bit: return "packed-2bit";
    case Kind::kAllSame: return "all-same";
    case Kind::kText: return "text";
  }
  return "?";
}

// Empirical order-0 entropy of the bytes, in bytes.
double entropy_bytes(const std::vector<uint8_t>& in) {
  double counts[256] = {};
  for (uint8_t b : in) counts[b] += 1;
  double bits = 0;
  for (double c : counts)
    if (c > 0) bits -= c * std::log2(c / double(in.size()));
  return bits / 8;
}

std::vector<uint8_t> encode(const std::vector<uint8_t>& in, DeflatePlan* plan = nullptr) {
  const size_t bound = deflate_encode_bound(in.size());
  std::vector<uint8_t> out(bound + kGuardBytes, kPoison);
  const DeflateEncodeResult r = deflate_encode_host(in.data(), uint32_t(in.size()), out.data(), uint32_t(bound), plan);
  EXPECT_EQ(r.status, kEncodeOk);
  EXPECT_LE(r.out_bytes, bound);
  for (size_t i = bound; i < out.size(); ++i) EXPECT_EQ(out[i], kPoison) << "guard byte " << i - bound << " written";
  out.resize(r.out_bytes);
  EXPECT_EQ(r.crc32, uint32_t(crc32(0, out.data(), uInt(out.size()))));
  return out;
}

// Inflates with zlib (raw, windowBits -15); the stream must end exactly at its last byte.
std::vector<uint8_t> zlib_inflate(const std::vector<uint8_t>& z, size_t raw_bytes) {
  z_stream s{};
  EXPECT_EQ(inflateInit2(&s, -15), Z_OK);
  std::vector<uint8_t> out(raw_bytes + 1);
  s.next_in = const_cast<uint8_t*>(z.data());
  s.avail_in = uInt(z.size());
  s.next_out = out.data();
  s.avail_out = uInt(out.size());
  EXPECT_EQ(inflate(&s, Z_FINISH), Z_STREAM_END) << (s.msg ? s.msg : "");
  EXPECT_EQ(s.avail_in, 0u);
  out.resize(s.total_out);
  inflateEnd(&s);
  return out;
}

std::vector<uint8_t> libdeflate_inflate(const std::vector<uint8_t>& z, size_t raw_bytes) {
  libdeflate_decompressor* d = libdeflate_alloc_decompressor();
  std::vector<uint8_t> out(raw_bytes);
  size_t in_used = 0, out_got = 0;
  const auto r = libdeflate_deflate_decompress_ex(d, z.data(), z.size(), out.data(), out.size(), &in_used, &out_got);
  libdeflate_free_decompressor(d);
  EXPECT_EQ(r, LIBDEFLATE_SUCCESS);
  EXPECT_EQ(in_used, z.size());
  out.resize(out_got);
  return out;
}

void expect_round_trip(const std::vector<uint8_t>& in, const std::string& label) {
  SCOPED_TRACE(label);
  const auto z = encode(in);
  EXPECT_EQ(zlib_inflate(z, in.size()), in);
  EXPECT_EQ(libdeflate_inflate(z, in.size()), in);
}

// Kraft sum in units of 2^-max_bits.
uint64_t kraft_units(const uint8_t* lengths, int n, int max_bits) {
  uint64_t sum = 0;
  for (int s = 0; s < n; ++s)
    if (lengths[s]) sum += uint64_t(1) << (max_bits - lengths[s]);
  return sum;
}

// Cost in bits of an unlimited optimal (Huffman) code, by the textbook priority-queue merge.
uint64_t huffman_cost(const std::vector<uint32_t>& counts) {
  std::priority_queue<uint64_t, std::vector<uint64_t>, std::greater<uint64_t>> q;
  for (uint32_t c : counts)
    if (c) q.push(c);
  if (q.size() < 2) return q.empty() ? 0 : q.top();
  uint64_t cost = 0;
  while (q.size() > 1) {
    const uint64_t a = q.top();
    q.pop();
    const uint64_t b = q.top();
    q.pop();
    cost += a + b;
    q.push(a + b);
  }
  return cost;
}

TEST(HuffmanDeflate, EmptyAndOneByte) {
  const auto z = encode({});
  EXPECT_EQ(z, (std::vector<uint8_t>{1, 0, 0, 0xff, 0xff}));  // one empty final stored block
  expect_round_trip({}, "empty");
  for (int b = 0; b < 256; ++b) expect_round_trip({uint8_t(b)}, "one byte " + std::to_string(b));
}

TEST(HuffmanDeflate, RoundTripsAllKindsAndSizes) {
  std::mt19937_64 rng(1);
  std::vector<size_t> sizes;
  for (size_t n = 1; n <= 300; ++n) sizes.push_back(n);
  for (size_t n : {1000, 4095, 4096, 16384, 65534, 65535, 65536, 65537, 131069, 131070, 131071, 131072, 200000})
    sizes.push_back(n);
  for (int i = 0; i < 40; ++i) sizes.push_back(1 + rng() % 200000);
  const Kind kinds[] = {Kind::kRandom, Kind::kGeometric, Kind::kPacked4Bit, Kind::kPacked2Bit, Kind::kAllSame, Kind::kText};
  int n_stored = 0, n_dynamic = 0;
  for (size_t i = 0; i < sizes.size(); ++i)
    for (Kind kind : kinds) {
      if (sizes[i] <= 300 && (i % 6) != size_t(kind)) continue;  // small sizes: one kind each, rotating
      const auto in = make_input(kind, sizes[i], rng);
      DeflatePlan plan;
      const auto z = encode(in, &plan);
      (plan.use_stored ? n_stored : n_dynamic)++;
      const std::string label = std::string(kind_name(kind)) + " size " + std::to_string(in.size());
      SCOPED_TRACE(label);
      EXPECT_EQ(zlib_inflate(z, in.size()), in);
      EXPECT_EQ(libdeflate_inflate(z, in.size()), in);
      EXPECT_EQ(z, encode(in)) << "not deterministic";
    }
  std::printf("%d stored and %d dynamic streams round-tripped\n", n_stored, n_dynamic);
  EXPECT_GT(n_stored, 0);
  EXPECT_GT(n_dynamic, 0);
}

TEST(HuffmanDeflate, UniformRandomFallsBackToStored) {
  std::mt19937_64 rng(2);
  for (size_t n : {100, 16384, 65535, 65536, 200000}) {
    const auto in = make_input(Kind::kRandom, n, rng);
    DeflatePlan plan;
    const auto z = encode(in, &plan);
    EXPECT_TRUE(plan.use_stored || z.size() * 8.0 <= n * 8.02 + 400) << n;
    EXPECT_LE(z.size(), deflate_stored_bytes(n));
    if (plan.use_stored) {
      EXPECT_EQ(z.size(), n + 5 * ((n + 65534) / 65535));
    }
  }
}

// Quantised-coefficient-like data of 16 KiB is coded within 1% + 64 bytes of its order-0 entropy.
// Text is printed for comparison only: an order-0 Huffman code loses more where one byte is common.
TEST(HuffmanDeflate, NearEntropyOnSkewedData) {
  std::mt19937_64 rng(3);
  for (Kind kind : {Kind::kGeometric, Kind::kPacked4Bit, Kind::kPacked2Bit, Kind::kText}) {
    const auto in = make_input(kind, 16384, rng);
    DeflatePlan plan;
    const auto z = encode(in, &plan);
    const double h = entropy_bytes(in);
    std::printf("%-12s 16 KiB: %zu bytes (header %llu bits), entropy %.1f bytes, +%.2f%%\n", kind_name(kind), z.size(),
                static_cast<unsigned long long>(plan.header_bits), h, 100.0 * (double(z.size()) / h - 1));
    EXPECT_FALSE(plan.use_stored) << kind_name(kind);
    if (kind != Kind::kText) {
      EXPECT_LE(double(z.size()), h * 1.01 + 64) << kind_name(kind);
    }
  }
}

TEST(HuffmanDeflate, RankMatchesSortedOrder) {
  std::mt19937_64 rng(4);
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<uint32_t> counts(kLitSymbols);
    for (auto& c : counts) c = (rng() % 3 == 0) ? 0 : uint32_t(rng() % 20);  // many ties
    std::vector<int> order;
    for (int s = 0; s < kLitSymbols; ++s)
      if (counts[s]) order.push_back(s);
    std::sort(order.begin(), order.end(), [&](int a, int b) { return counts[a] != counts[b] ? counts[a] < counts[b] : a < b; });
    for (size_t r = 0; r < order.size(); ++r) EXPECT_EQ(huffman_rank(counts.data(), kLitSymbols, order[r]), int(r));
    for (int s = 0; s < kLitSymbols; ++s)
      if (!counts[s]) {
        EXPECT_EQ(huffman_rank(counts.data(), kLitSymbols, s), -1);
      }
  }
}

TEST(HuffmanDeflate, CodeLengthsAreLimitedCompleteAndOptimal) {
  std::mt19937_64 rng(5);
  std::vector<std::vector<uint32_t>> histograms;
  for (int trial = 0; trial < 300; ++trial) {  // random alphabets of 0..256 used literals
    std::vector<uint32_t> h(kLitSymbols);
    const int n_used = int(rng() % 257);
    for (int i = 0; i < n_used; ++i) h[rng() % 256] = uint32_t(1 + (rng() % 4 == 0 ? rng() % 100000 : rng() % 50));
    histograms.push_back(h);
  }
  {  // Fibonacci counts: the unlimited code is 30 levels deep
    std::vector<uint32_t> h(kLitSymbols);
    uint32_t a = 1, b = 1;
    for (int s = 0; s < 30; ++s, std::swap(a, b), b += a) h[s] = a;
    histograms.push_back(h);
  }
  {  // powers of two up to 2^27
    std::vector<uint32_t> h(kLitSymbols);
    for (int s = 0; s < 28; ++s) h[100 + s] = 1u << s;
    histograms.push_back(h);
  }
  histograms.push_back(std::vector<uint32_t>(kLitSymbols, 7));  // all equal
  histograms.push_back(std::vector<uint32_t>(kLitSymbols));     // end-of-block only
  int n_limited = 0;
  for (auto& h : histograms) {
    h[kEndOfBlock] = 1;
    uint64_t src_bytes = 0;
    for (int s = 0; s < 256; ++s) src_bytes += h[s];
    DeflatePlan plan;
    deflate_plan_build(h.data(), src_bytes, &plan);
    int n_used = 0, max_len = 0;
    for (int s = 0; s < kLitSymbols; ++s) {
      n_used += h[s] != 0;
      max_len = std::max(max_len, int(plan.lit_lengths[s]));
      if (h[s]) {
        EXPECT_GT(plan.lit_lengths[s], 0) << "used symbol " << s << " has no code";
      }
    }
    EXPECT_LE(max_len, kMaxLitBits);
    EXPECT_EQ(kraft_units(plan.lit_lengths, kLitSymbols, kMaxLitBits), uint64_t(1) << kMaxLitBits);
    EXPECT_EQ(kraft_units(plan.cl_lengths, kCodeLenSymbols, kMaxCodeLenBits), uint64_t(1) << kMaxCodeLenBits);
    for (int s = 0; s < kCodeLenSymbols; ++s) EXPECT_LE(plan.cl_lengths[s], kMaxCodeLenBits);
    // Where the limit does not bind, the lengths cost exactly what Huffman's algorithm costs.
    uint64_t cost = 0;
    for (int s = 0; s < kLitSymbols; ++s) cost += uint64_t(h[s]) * plan.lit_lengths[s];
    const uint64_t optimal = huffman_cost(h);
    if (n_used >= 2 && cost == optimal) continue;
    if (n_used < 2) continue;
    ++n_limited;
    EXPECT_GT(cost, optimal);
    EXPECT_EQ(max_len, kMaxLitBits) << "costlier than Huffman although no code reached the limit";
  }
  EXPECT_GE(n_limited, 2);  // the Fibonacci and power-of-two cases
}

TEST(HuffmanDeflate, LimitedCodeRoundTrips) {
  // Literal s occurs 2^s times (s < 18, 256 KiB in all): every optimal code is a chain 18 deep, so
  // the 15-bit limit binds.
  std::vector<uint8_t> in;
  for (int s = 0; s < 18; ++s) in.insert(in.end(), size_t(1) << s, uint8_t(s * 13));
  std::shuffle(in.begin(), in.end(), std::mt19937_64(6));
  DeflatePlan plan;
  const auto z = encode(in, &plan);
  EXPECT_FALSE(plan.use_stored);
  EXPECT_EQ(*std::max_element(plan.lit_lengths, plan.lit_lengths + kLitSymbols), kMaxLitBits);
  std::vector<uint32_t> counts(kLitSymbols);
  for (uint8_t b : in) ++counts[b];
  counts[kEndOfBlock] = 1;
  EXPECT_GT(plan.body_bits, huffman_cost(counts));
  EXPECT_EQ(zlib_inflate(z, in.size()), in);
  EXPECT_EQ(libdeflate_inflate(z, in.size()), in);
}

// Cost in bits of an optimal code limited to max_bits, by package-merge (Larmore & Hirschberg).
uint64_t package_merge_cost(std::vector<uint64_t> w, int max_bits) {
  std::sort(w.begin(), w.end());
  const size_t n = w.size();
  if (n < 2) return n == 0 ? 0 : w[0];
  struct Item {
    uint64_t weight;
    std::vector<uint32_t> leaves;  // how often each symbol occurs in this package
  };
  std::vector<Item> singles, current;
  for (size_t i = 0; i < n; ++i) {
    Item it{w[i], std::vector<uint32_t>(n)};
    it.leaves[i] = 1;
    singles.push_back(it);
  }
  current = singles;
  for (int level = 1; level < max_bits; ++level) {
    std::vector<Item> merged = singles;
    for (size_t i = 0; i + 1 < current.size(); i += 2) {
      Item p{current[i].weight + current[i + 1].weight, current[i].leaves};
      for (size_t k = 0; k < n; ++k) p.leaves[k] += current[i + 1].leaves[k];
      merged.push_back(p);
    }
    std::stable_sort(merged.begin(), merged.end(), [](const Item& a, const Item& b) { return a.weight < b.weight; });
    current = merged;
  }
  uint64_t cost = 0;
  for (size_t i = 0; i < 2 * n - 2; ++i)
    for (size_t k = 0; k < n; ++k) cost += w[k] * current[i].leaves[k];
  return cost;
}

TEST(HuffmanDeflate, LimitHeuristicIsNearOptimal) {
  std::mt19937_64 rng(9);
  for (double p : {0.3, 0.4, 0.5})
    for (uint32_t n : {65536u, 1u << 20}) {
      std::vector<uint32_t> counts(kLitSymbols);
      std::geometric_distribution<int> g(p);
      for (uint32_t i = 0; i < n; ++i) ++counts[std::min(g(rng), 255)];
      counts[kEndOfBlock] = 1;
      DeflatePlan plan;
      deflate_plan_build(counts.data(), n, &plan);
      std::vector<uint64_t> used;
      for (uint32_t c : counts)
        if (c) used.push_back(c);
      const uint64_t optimal = package_merge_cost(used, kMaxLitBits);
      std::printf("geometric p=%.1f, %u bytes: limited code %llu bits, optimal %llu (+%.3f%%), unlimited %llu\n", p, n,
                  static_cast<unsigned long long>(plan.body_bits), static_cast<unsigned long long>(optimal),
                  100.0 * (double(plan.body_bits) / double(optimal) - 1),
                  static_cast<unsigned long long>(huffman_cost(counts)));
      EXPECT_GE(plan.body_bits, optimal);
      EXPECT_LE(double(plan.body_bits), double(optimal) * 1.005);
    }
}

TEST(HuffmanDeflate, OverflowIsReportedAndNothingWritten) {
  std::mt19937_64 rng(7);
  for (Kind kind : {Kind::kGeometric, Kind::kRandom, Kind::kAllSame}) {
    const auto in = make_input(kind, 5000, rng);
    const auto z = encode(in);
    for (size_t capacity : {size_t(0), size_t(1), size_t(5), z.size() / 2, z.size() - 1}) {
      std::vector<uint8_t> out(capacity + kGuardBytes, kPoison);
      const auto r = deflate_encode_host(in.data(), uint32_t(in.size()), out.data(), uint32_t(capacity));
      EXPECT_EQ(r.status, kEncodeOverflow) << kind_name(kind) << " capacity " << capacity;
      EXPECT_EQ(r.out_bytes, 0u);
      EXPECT_TRUE(std::all_of(out.begin(), out.end(), [](uint8_t x) { return x == kPoison; }));
    }
    std::vector<uint8_t> exact(z.size() + kGuardBytes, kPoison);
    const auto r = deflate_encode_host(in.data(), uint32_t(in.size()), exact.data(), uint32_t(z.size()));
    EXPECT_EQ(r.status, kEncodeOk);
    EXPECT_TRUE(std::equal(z.begin(), z.end(), exact.begin()));
    EXPECT_TRUE(std::all_of(exact.begin() + long(z.size()), exact.end(), [](uint8_t x) { return x == kPoison; }));
  }
  uint8_t dummy = 0;
  EXPECT_EQ(deflate_encode_host(&dummy, kMaxEncodeInputBytes + 1, &dummy, 1).status, kEncodeInputTooLarge);
}

TEST(HuffmanDeflate, BitWriterStopsAtCapacity) {
  std::vector<uint8_t> buf(3 + kGuardBytes, kPoison);
  BitWriter bw = make_bit_writer(buf.data(), 3);
  bw.put(0x12345, 20);
  EXPECT_FALSE(bw.overflow);
  bw.put(0xfffff, 20);
  bw.align_to_byte();
  EXPECT_TRUE(bw.overflow);
  EXPECT_EQ(bw.pos_bytes, 5u);  // the size it needed
  EXPECT_EQ(buf[0], 0x45);
  EXPECT_EQ(buf[1], 0x23);
  EXPECT_EQ(buf[2], 0xf1);
  EXPECT_TRUE(std::all_of(buf.begin() + 3, buf.end(), [](uint8_t x) { return x == kPoison; }));
}

// The GPU splits the output into one segment per thread and combines raw CRCs with the shift
// operator; emulate that here with the same helpers.
TEST(HuffmanDeflate, Crc32HelpersMatchZlib) {
  std::mt19937_64 rng(8);
  uint32_t table[256];
  for (uint32_t i = 0; i < 256; ++i) table[i] = crc32_table_entry(i);
  for (size_t n : {0, 1, 3, 255, 256, 257, 1000, 65540, 200000}) {
    std::vector<uint8_t> v(n);
    for (auto& x : v) x = uint8_t(rng());
    const uint32_t want = uint32_t(crc32(0, v.data(), uInt(n)));
    EXPECT_EQ(crc32_host(v.data(), n), want) << n;
    for (size_t n_segments : {1, 7, 256}) {
      const size_t seg = (n + n_segments - 1) / n_segments;
      uint32_t raw = 0;
      for (size_t t = 0; t < n_segments; ++t) {
        const size_t a = std::min(n, t * seg), b = std::min(n, a + seg);
        if (b > a) raw ^= crc32_mul_mod(crc32_x_pow_8n(n - b), crc32_raw_update(table, 0, v.data() + a, b - a));
      }
      EXPECT_EQ(crc32_finish(raw, n), want) << n << " bytes in " << n_segments << " segments";
    }
    const size_t cut = n / 3;
    const uint32_t crc_a = uint32_t(crc32(0, v.data(), uInt(cut)));
    const uint32_t crc_b = uint32_t(crc32(0, v.data() + cut, uInt(n - cut)));
    EXPECT_EQ(crc32_combine_bytes(crc_a, crc_b, n - cut), want);
  }
}

}  // namespace
}  // namespace kvtc::cuda
