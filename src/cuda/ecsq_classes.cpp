#include "cuda/ecsq_classes.hpp"

#include <algorithm>

namespace kvtc::cuda {

uint32_t append_block_rows(const uint8_t* classes, uint32_t n_tokens, std::vector<uint32_t>& rows) {
  uint32_t n_high = 0;
  for (uint32_t t = 0; t < n_tokens; ++t)
    if (classes[t] != 0) {
      rows.push_back(t);
      ++n_high;
    }
  for (uint32_t t = 0; t < n_tokens; ++t)
    if (classes[t] == 0) rows.push_back(t);
  return n_high;
}

uint64_t class_chunk_symbols(const EcsqDeviceLevel& low, const EcsqDeviceLevel& high, uint32_t c0, uint32_t c1,
                             uint64_t n_low, uint64_t n_high) {
  auto cells = [&](const EcsqDeviceLevel& lv) -> uint64_t {
    const uint32_t end = std::min(c1, lv.n_kept), begin = std::min(c0, end);
    return lv.cells_in(begin, end);
  };
  return cells(low) * n_low + cells(high) * n_high;
}

}  // namespace kvtc::cuda
