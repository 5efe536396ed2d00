// Replays the container fuzz target's seed corpus (fuzz/corpus/container), plus deterministic
// truncations and bit flips of each seed, as an ordinary test. A crash or a disagreement between the
// fast and reference decoders aborts the test.
#include <gtest/gtest.h>

#include "fuzz_replay.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

TEST(FuzzReplay, ContainerSeedsAndMutations) {
  const int n = kvtc::testing::replay_corpus("container", LLVMFuzzerTestOneInput);
  EXPECT_GE(n, 6) << "seed corpus missing";
}
