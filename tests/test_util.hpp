// Shared helpers for the test suite: where the data lives and small synthetic inputs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kvtc/cache.hpp"

namespace kvtc::testing {

// ../shared beside the checkout (read-only in CI) and the repo's own data/ folder.
std::string shared_dir();
std::string repo_data(const std::string& name);  // <repo>/data/<name>
std::string shared_kvcache(const std::string& name);  // ../shared/kvcache/<name>
// A fresh empty directory under the system temp dir for this test's outputs.
std::string temp_dir();

// A random cache with a low-rank, correlated structure (like real KV), RoPE applied to keys.
// position_offset: RoPE position of token 0 (keys are rotated accordingly).
KVCache synthetic_cache(const ModelShape& shape, int64_t n_tokens, uint64_t seed, DType dtype = DType::kF32,
                        int64_t position_offset = 0);

}  // namespace kvtc::testing
