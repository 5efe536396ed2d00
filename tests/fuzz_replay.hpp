// Runs a fuzz target over fuzz/corpus/<name>/* and, for each seed, over truncations and bit flips.
#pragma once

#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

namespace kvtc::testing {

inline int replay_corpus(const std::string& name, int (*target)(const uint8_t*, size_t)) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(KVTC_SOURCE_DIR) / "fuzz" / "corpus" / name;
  int n = 0;
  std::mt19937 rng(12345);
  for (const auto& entry : fs::directory_iterator(dir)) {
    std::ifstream in(entry.path(), std::ios::binary);
    const std::vector<uint8_t> seed((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    target(seed.data(), seed.size());
    ++n;
    for (size_t cut = 0; cut < seed.size(); cut += 1 + seed.size() / 64) target(seed.data(), cut);
    for (int flip = 0; flip < 64 && !seed.empty(); ++flip) {
      std::vector<uint8_t> m = seed;
      m[rng() % m.size()] ^= uint8_t(1u << (rng() % 8));
      target(m.data(), m.size());
    }
  }
  return n;
}

}  // namespace kvtc::testing
