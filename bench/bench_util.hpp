// Shared by the benchmarks: the real caches and a calibration made from them (once per process).
#pragma once

#include <string>
#include <vector>

#include "kvtc/kvtc.hpp"

namespace kvtc::bench {

// ../shared/kvcache beside the checkout (KVTC_SHARED_DIR overrides).
std::string shared_kvcache(const std::string& name);
std::vector<std::string> calibration_files();  // calib-{prose,code}-{1,2}.safetensors
std::vector<std::string> test_files();         // test-prose, test-code
const Calibration& real_calibration();         // calibrated on calibration_files(), ratios 8..64
const KVCache& real_cache(const std::string& path);

}  // namespace kvtc::bench
