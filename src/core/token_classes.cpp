#include "core/token_classes.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "entropy/deflate.hpp"
#include "util/status_macros.hpp"

namespace kvtc {

std::vector<uint8_t> choose_token_classes(const float* importance, int64_t m, double fraction) {
  std::vector<uint8_t> classes(size_t(std::max<int64_t>(m, 0)), 0);
  if (m <= 0 || !(fraction > 0)) return classes;
  const int64_t count = std::min<int64_t>(m, int64_t(std::llround(std::min(fraction, 1.0) * double(m))));
  auto key = [&](int64_t i) { return std::isnan(importance[i]) ? -INFINITY : importance[i]; };
  std::vector<int64_t> order(static_cast<size_t>(m));
  std::iota(order.begin(), order.end(), 0);
  std::nth_element(order.begin(), order.begin() + count, order.end(), [&](int64_t a, int64_t b) {
    const float ka = key(a), kb = key(b);
    return ka > kb || (ka == kb && a > b);
  });
  for (int64_t i = 0; i < count; ++i) classes[size_t(order[size_t(i)])] = 1;
  return classes;
}

std::vector<uint8_t> pack_token_classes(const std::vector<uint8_t>& classes) {
  std::vector<uint8_t> bits((classes.size() + 7) / 8, 0);
  for (size_t t = 0; t < classes.size(); ++t)
    if (classes[t]) bits[t / 8] |= uint8_t(1u << (t % 8));
  return bits;
}

Result<std::vector<uint8_t>> read_token_classes(const ContainerHeader& h, const uint8_t* payload, bool verify) {
  std::vector<uint8_t> classes;
  for (size_t i = 0; i < h.chunks.size(); ++i) {
    const ChunkEntry& c = h.chunks[i];
    if (c.kind != ChunkKind::kClasses) continue;  // parse_container allows one, over the compressed tokens
    const std::string where = "chunk " + std::to_string(i) + " (token classes)";
    const uint8_t* stored = payload + c.offset;
    if (verify && crc32_of(stored, c.stored_bytes) != c.crc32) return checksum_mismatch(where + ": chunk checksum mismatch");
    std::vector<uint8_t> bits(c.raw_bytes);
    KVTC_RETURN_IF_ERROR(inflate_raw(stored, c.stored_bytes, bits.data(), bits.size()).with_context(where));
    if (c.n_tokens % 8 != 0 && (bits.back() >> (c.n_tokens % 8)) != 0) return corrupt(where + ": nonzero padding bits");
    classes.resize(c.n_tokens);
    for (uint32_t t = 0; t < c.n_tokens; ++t) classes[t] = (bits[t / 8] >> (t % 8)) & 1u;
  }
  return classes;
}

}  // namespace kvtc
