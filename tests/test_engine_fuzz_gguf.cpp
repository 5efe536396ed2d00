// Replays the GGUF fuzz target's seed corpus (fuzz/corpus/gguf, written by tests/data/make_gguf_ref.py),
// plus deterministic truncations and bit flips of each seed, as an ordinary test. A crash, an
// out-of-bounds read (in the sanitizer build) or a broken invariant (fuzz/fuzz_gguf.cpp aborts) fails it.
#include <gtest/gtest.h>

#include "fuzz_replay.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

TEST(FuzzReplay, GgufSeedsAndMutations) {
  const int n = kvtc::testing::replay_corpus("gguf", LLVMFuzzerTestOneInput);
  EXPECT_GE(n, 3) << "seed corpus missing";
}
