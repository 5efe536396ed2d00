// Shared by the fuzz targets: a small deterministic calibration, so that containers made with it
// (the seed corpus) reach the decoders' deepest paths.
#pragma once

#include "kvtc/kvtc.hpp"

namespace kvtc::fuzz {

// 2 layers x 2 KV heads x 16, calibrated on a fixed synthetic cache; built once.
const Calibration& fuzz_calibration();
// A synthetic cache of that shape (seeded), for making seeds.
KVCache fuzz_cache(int64_t n_tokens, uint64_t seed);

}  // namespace kvtc::fuzz
