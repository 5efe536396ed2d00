// Replays the calibration-file fuzz target's seed corpus (fuzz/corpus/calibration) with mutations.
#include <gtest/gtest.h>

#include "fuzz_replay.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

TEST(FuzzReplay, CalibrationSeedsAndMutations) {
  const int n = kvtc::testing::replay_corpus("calibration", LLVMFuzzerTestOneInput);
  EXPECT_GE(n, 1) << "seed corpus missing";
}
