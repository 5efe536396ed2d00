// Replays the container fuzz target's seed corpus (fuzz/corpus/container), plus deterministic
// truncations and bit flips of each seed, as an ordinary test. A crash or a disagreement between the
// fast and reference decoders aborts the test.
#include <gtest/gtest.h>

#include <filesystem>

#include "../fuzz/fuzz_common.hpp"
#include "fuzz_replay.hpp"
#include "kvtc/kvtc.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

TEST(FuzzReplay, ContainerSeedsAndMutations) {
  const int n = kvtc::testing::replay_corpus("container", LLVMFuzzerTestOneInput);
  EXPECT_GE(n, 6) << "seed corpus missing";
}

// Mutations reach the chunk decoders only from seeds the fuzz calibration accepts: a seed made with
// another calibration (or ECSQ model) stops at MISMATCH, and its rANS chunks are never fuzzed.
// Regenerate the seeds (fuzz/README.md) when this fails.
TEST(FuzzReplay, EveryContainerSeedDecodesUnderTheFuzzCalibration) {
  namespace fs = std::filesystem;
  int n_v3 = 0, n_v4 = 0;
  for (const auto& entry : fs::directory_iterator(fs::path(KVTC_SOURCE_DIR) / "fuzz" / "corpus" / "container")) {
    auto bytes = kvtc::read_bytes(entry.path().string());
    ASSERT_TRUE(bytes.is_ok()) << bytes.status().to_string();
    auto dec = kvtc::decode(kvtc::fuzz::fuzz_calibration(), bytes->data(), bytes->size());
    EXPECT_TRUE(dec.is_ok()) << entry.path().filename() << ": " << dec.status().to_string();
    const uint8_t version = bytes->size() > 8 ? (*bytes)[8] : 0;
    n_v3 += version == 3;
    n_v4 += version == 4;
  }
  EXPECT_GE(n_v3, 4);
  EXPECT_GE(n_v4, 2);
}
