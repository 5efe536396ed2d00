// The rules a cache must meet, shared by the cache types (core/cache.cpp) and the cache file
// (format/cache_file.cpp): sanity limits, shape and RoPE checks, and how numbers and shapes print.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kvtc/cache.hpp"

namespace kvtc::cache_rules {

// Sanity limits: far above any real model, low enough that products of them cannot overflow int64.
constexpr int32_t kMaxLayers = 4096;
constexpr int32_t kMaxHeads = 4096;
constexpr int32_t kMaxHeadDim = 65536;
constexpr int64_t kMaxTokens = int64_t(1) << 32;
constexpr int64_t kMaxPosition = int64_t(1) << 40;

Status check_rope(const RopeParams& rope);
Status check_shape(const ModelShape& shape);  // limits, even head_dim, then check_rope

// Shortest text that parses back to the same double; integers print without exponent ("100000", not
// "1e+05"), which is what people expect in metadata.
std::string format_number(double v);
// "half" or "interleaved", as cache files and messages name the style.
const char* rope_style_name(RopeStyle style);
// "[2, 16, 64]"
std::string shape_string(const std::vector<int64_t>& shape);

}  // namespace kvtc::cache_rules
