// GPU inflate against libdeflate and zlib: random streams of every level and strategy, decoded in one
// batch, must give the same bytes; corrupted streams must give a status, never a fault.
#include <gtest/gtest.h>
#include <libdeflate.h>
#include <zlib.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cuda/cuda_backend.hpp"
#include "cuda_test_util.hpp"
#include "format/container.hpp"

namespace kvtc {
namespace {

// Inputs with different statistics: random bytes, a small alphabet (like quantised codes), text-like
// repetitions with long matches, runs, and all zeros.
std::vector<uint8_t> make_input(int kind, size_t n, std::mt19937_64& rng) {
  std::vector<uint8_t> v(n);
  switch (kind % 5) {
    case 0:
      for (auto& x : v) x = uint8_t(rng());
      break;
    case 1: {
      std::geometric_distribution<int> g(0.3);
      for (auto& x : v) x = uint8_t(std::min(g(rng), 15));
      break;
    }
    case 2: {
      const char* words[] = {"key ", "value ", "cache ", "transform ", "coding ", "deflate ", "\n"};
      size_t i = 0;
      while (i < n) {
        const char* w = words[rng() % 7];
        for (size_t k = 0; w[k] && i < n; ++k) v[i++] = uint8_t(w[k]);
      }
      break;
    }
    case 3: {
      size_t i = 0;
      while (i < n) {
        const uint8_t b = uint8_t(rng() % 4);
        const size_t run = 1 + rng() % 300;
        for (size_t k = 0; k < run && i < n; ++k) v[i++] = b;
      }
      break;
    }
    default:
      break;  // zeros
  }
  return v;
}

std::vector<uint8_t> libdeflate_compress(const std::vector<uint8_t>& in, int level) {
  libdeflate_compressor* c = libdeflate_alloc_compressor(level);
  std::vector<uint8_t> out(libdeflate_deflate_compress_bound(c, in.size()));
  out.resize(libdeflate_deflate_compress(c, in.data(), in.size(), out.data(), out.size()));
  libdeflate_free_compressor(c);
  return out;
}

std::vector<uint8_t> zlib_compress(const std::vector<uint8_t>& in, int level, int strategy) {
  z_stream s{};
  deflateInit2(&s, level, Z_DEFLATED, -15, 8, strategy);
  std::vector<uint8_t> out(deflateBound(&s, uLong(in.size())) + 16);
  s.next_in = const_cast<uint8_t*>(in.data());
  s.avail_in = uInt(in.size());
  s.next_out = out.data();
  s.avail_out = uInt(out.size());
  deflate(&s, Z_FINISH);
  out.resize(s.total_out);
  deflateEnd(&s);
  return out;
}

TEST(CudaInflate, MatchesLibdeflateAndZlibOnAllLevels) {
  SKIP_WITHOUT_DEVICE();
  std::mt19937_64 rng(42);
  std::vector<std::vector<uint8_t>> raw, streams;
  std::vector<std::string> labels;
  const size_t sizes[] = {0, 1, 7, 300, 4096, 65536, 200000};
  for (size_t si = 0; si < std::size(sizes); ++si)
    for (int kind = 0; kind < 5; ++kind) {
      const auto in = make_input(kind, sizes[si], rng);
      for (int level = 0; level <= 12; ++level) {
        raw.push_back(in);
        streams.push_back(libdeflate_compress(in, level));
        labels.push_back("libdeflate level " + std::to_string(level) + " kind " + std::to_string(kind) + " size " +
                         std::to_string(in.size()));
      }
      for (int level = 0; level <= 9; ++level)
        for (int strategy : {Z_DEFAULT_STRATEGY, Z_FILTERED, Z_HUFFMAN_ONLY, Z_RLE, Z_FIXED}) {
          if (strategy != Z_DEFAULT_STRATEGY && level != 6) continue;
          raw.push_back(in);
          streams.push_back(zlib_compress(in, level, strategy));
          labels.push_back("zlib level " + std::to_string(level) + " strategy " + std::to_string(strategy) +
                           " kind " + std::to_string(kind) + " size " + std::to_string(in.size()));
        }
    }
  std::vector<uint32_t> sizes_out, crcs;
  for (size_t i = 0; i < raw.size(); ++i) {
    sizes_out.push_back(uint32_t(raw[i].size()));
    crcs.push_back(crc32_of(streams[i].data(), streams[i].size()));
  }
  std::vector<std::vector<uint8_t>> out;
  std::vector<uint32_t> status;
  double seconds = 0;
  ASSERT_TRUE(cuda_inflate_streams(streams, sizes_out, crcs, &out, &status, &seconds).is_ok());
  int failures = 0;
  for (size_t i = 0; i < raw.size() && failures < 10; ++i) {
    if (status[i] != 0 || out[i] != raw[i]) {
      ADD_FAILURE() << labels[i] << ": status " << status[i];
      ++failures;
    }
  }
  std::printf("inflated %zu streams in one launch (%.3f ms)\n", raw.size(), seconds * 1e3);
}

TEST(CudaInflate, RejectsWrongSizesAndChecksums) {
  SKIP_WITHOUT_DEVICE();
  std::mt19937_64 rng(7);
  const auto in = make_input(2, 10000, rng);
  const auto z = libdeflate_compress(in, 6);
  const uint32_t crc = crc32_of(z.data(), z.size());
  std::vector<std::vector<uint8_t>> streams = {z, z, z, z, std::vector<uint8_t>(z.begin(), z.end() - 3)};
  auto trailing = z;
  trailing.push_back(0);
  streams.push_back(trailing);
  std::vector<uint32_t> sizes = {10000, 9999, 10001, 10000, 10000, 10000};
  std::vector<uint32_t> crcs = {crc, crc, crc, crc ^ 1, crc32_of(streams[4].data(), streams[4].size()),
                                crc32_of(trailing.data(), trailing.size())};
  std::vector<std::vector<uint8_t>> out;
  std::vector<uint32_t> status;
  ASSERT_TRUE(cuda_inflate_streams(streams, sizes, crcs, &out, &status).is_ok());
  EXPECT_EQ(status[0], 0u);
  EXPECT_EQ(status[1], 5u);  // output overrun
  EXPECT_EQ(status[2], 6u);  // output short
  EXPECT_EQ(status[3], 9u);  // checksum
  EXPECT_NE(status[4], 0u);  // truncated
  EXPECT_EQ(status[5], 8u);  // trailing bytes
}

// Bit flips and truncations: the GPU must report a status whenever libdeflate rejects the stream,
// and produce libdeflate's bytes whenever libdeflate accepts it.
TEST(CudaInflate, CorruptedStreamsGiveStatusLikeLibdeflate) {
  SKIP_WITHOUT_DEVICE();
  std::mt19937_64 rng(99);
  std::vector<std::vector<uint8_t>> streams;
  std::vector<uint32_t> sizes;
  for (int i = 0; i < 3000; ++i) {
    const auto in = make_input(i % 4, 1000 + rng() % 30000, rng);
    auto z = (i % 3 == 0) ? zlib_compress(in, 1 + int(rng() % 9), Z_DEFAULT_STRATEGY) : libdeflate_compress(in, 1 + int(rng() % 12));
    const int n_flips = 1 + int(rng() % 3);
    for (int f = 0; f < n_flips; ++f) z[rng() % z.size()] ^= uint8_t(1u << (rng() % 8));
    if (i % 10 == 0) z.resize(z.size() / 2);
    streams.push_back(z);
    sizes.push_back(uint32_t(in.size()));
  }
  std::vector<std::vector<uint8_t>> out;
  std::vector<uint32_t> status;
  ASSERT_TRUE(cuda_inflate_streams(streams, sizes, {}, &out, &status).is_ok());
  libdeflate_decompressor* d = libdeflate_alloc_decompressor();
  int disagreements = 0, rejected = 0;
  for (size_t i = 0; i < streams.size(); ++i) {
    std::vector<uint8_t> ref(sizes[i]);
    size_t in_used = 0, out_got = 0;
    const auto r = libdeflate_deflate_decompress_ex(d, streams[i].data(), streams[i].size(), ref.data(), ref.size(),
                                                    &in_used, &out_got);
    const bool cpu_ok = r == LIBDEFLATE_SUCCESS && out_got == ref.size() && in_used == streams[i].size();
    rejected += status[i] != 0;
    if (cpu_ok != (status[i] == 0)) {
      if (disagreements < 5)
        ADD_FAILURE() << "stream " << i << ": libdeflate " << (cpu_ok ? "accepts" : "rejects") << ", GPU status "
                      << status[i];
      ++disagreements;
    } else if (cpu_ok) {
      EXPECT_EQ(out[i], ref) << "stream " << i;
    }
  }
  libdeflate_free_decompressor(d);
  std::printf("%d of %zu corrupted streams rejected; %d disagreements with libdeflate\n", rejected, streams.size(),
              disagreements);
  EXPECT_EQ(disagreements, 0);
}

}  // namespace
}  // namespace kvtc
