#include "cuda/ecsq_class_runs.hpp"

#include <algorithm>
#include <string>

namespace kvtc::cuda {

namespace {

// The level's cell for component j on the device, or null where it has none.
const EcsqDeviceComponent* cell_of(const EcsqDeviceLevel& lv, uint32_t j) {
  if (j >= lv.n_kept || lv.cells_before[j + 1] == lv.cells_before[j]) return nullptr;
  return lv.cells_dev.as<EcsqDeviceComponent>() + lv.cells_before[j];
}

}  // namespace

Result<uint64_t> append_class_runs(const EcsqDeviceLevel& low, const EcsqDeviceLevel& high, const uint8_t* classes,
                                   uint32_t n_tokens, uint32_t c0, uint32_t c1, std::vector<EcsqDecodeRun>& runs,
                                   std::vector<uint32_t>& rows) {
  if (c1 > std::max(low.n_kept, high.n_kept) || c0 > c1)
    return corrupt("components " + std::to_string(c0) + ".." + std::to_string(c1) + " beyond the ECSQ levels' kept ones");
  const uint32_t rows_at = uint32_t(rows.size());
  uint32_t n_class[2] = {0, 0};
  for (int cls = 1; cls >= 0; --cls)
    for (uint32_t t = 0; t < n_tokens; ++t)
      if ((classes[t] != 0) == (cls == 1)) {
        rows.push_back(t);
        ++n_class[cls];
      }
  uint64_t n_symbols = 0;
  for (uint32_t j = c0; j < c1; ++j)
    for (int cls = 1; cls >= 0; --cls) {
      const EcsqDeviceLevel& lv = cls == 1 ? high : low;
      const EcsqDeviceComponent* cell = cell_of(lv, j);
      if (cell == nullptr || n_class[cls] == 0) continue;
      EcsqDecodeRun r;
      r.cell = cell;
      r.slots = lv.slots_dev.as<uint8_t>();
      r.entries = lv.entries_dev.as<uint32_t>();
      r.n_symbols = n_class[cls];
      r.rows_begin = rows_at + (cls == 1 ? 0 : n_class[1]);
      runs.push_back(r);
      n_symbols += r.n_symbols;
    }
  return n_symbols;
}

}  // namespace kvtc::cuda
