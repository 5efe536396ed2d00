// Replays the rANS fuzz target's seed corpus (fuzz/corpus/rans: a table followed by a chunk) with
// truncations and bit flips. A crash, a disagreement between the fast and reference decoders, or an
// accepted chunk that is not the encoder's output aborts the test.
#include <gtest/gtest.h>

#include "fuzz_replay.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

TEST(FuzzReplay, RansSeedsAndMutations) {
  const int n = kvtc::testing::replay_corpus("rans", LLVMFuzzerTestOneInput);
  EXPECT_GE(n, 4) << "seed corpus missing";
}
