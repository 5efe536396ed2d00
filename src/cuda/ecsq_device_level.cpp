#include "cuda/ecsq_device_level.hpp"

#include <limits>
#include <string>

#include "core/ecsq_chunk.hpp"
#include "util/status_macros.hpp"

namespace kvtc::cuda {

Result<std::unique_ptr<EcsqDeviceLevel>> build_ecsq_device_level(const EcsqModel& model, uint32_t level) {
  KVTC_ASSIGN_OR_RETURN(const EcsqDecodeLevel d, EcsqDecodeLevel::build(model, level));
  auto out = std::make_unique<EcsqDeviceLevel>();
  out->n_kept = d.n_kept();
  out->cells_before.resize(size_t(d.n_kept()) + 1, 0);
  for (uint32_t j = 0; j < d.n_kept(); ++j) {
    const EcsqDecodeLevel::Component& c = d.component(j);
    out->cells_before[j + 1] = out->cells_before[j] + (c.table >= 0 ? 1u : 0u);
    if (c.table < 0) continue;
    const RansDecodeTable& t = d.table(c.table);
    const size_t slots = size_t(1) << t.prob_bits();
    if (out->slots.size() + slots > std::numeric_limits<uint32_t>::max() ||
        out->entries.size() + c.alphabet > std::numeric_limits<uint32_t>::max())
      return invalid_argument("ECSQ level " + std::to_string(level) + ": tables too large for the GPU decoder");
    EcsqDeviceComponent dc;
    dc.component = j;
    dc.slot_offset = uint32_t(out->slots.size());
    dc.entry_offset = uint32_t(out->entries.size());
    dc.step = c.step;
    dc.delta = c.delta;
    dc.alphabet = uint16_t(c.alphabet);
    dc.prob_bits = uint8_t(t.prob_bits());
    dc.slow_from = uint8_t(c.n_direct);
    out->cells.push_back(dc);
    out->slots.insert(out->slots.end(), t.symbols(), t.symbols() + slots);
    for (uint32_t s = 0; s < uint32_t(c.alphabet); ++s) {
      EcsqDeviceEntry e;
      e.freq_cum = t.entries()[s];
      if (s < c.n_direct) e.value = d.values(c)[s];
      out->entries.push_back(e);
    }
  }
  return out;
}

Result<const EcsqDeviceLevel*> EcsqLevelCache::get(const EcsqModel& model, int stream_index, uint32_t level,
                                                   cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(mu_);
  const auto key = std::make_tuple(model.fingerprint, stream_index, level);
  auto it = levels_.find(key);
  if (it != levels_.end()) return static_cast<const EcsqDeviceLevel*>(it->second.get());
  KVTC_ASSIGN_OR_RETURN(std::unique_ptr<EcsqDeviceLevel> lv, build_ecsq_device_level(model, level));
  auto upload = [&](DeviceBuffer& buf, const void* data, size_t bytes) -> Status {
    KVTC_RETURN_IF_ERROR(buf.reserve(bytes));
    if (bytes > 0) KVTC_CUDA_RETURN(cudaMemcpyAsync(buf.get(), data, bytes, cudaMemcpyHostToDevice, stream));
    return Status::ok();
  };
  KVTC_RETURN_IF_ERROR(upload(lv->cells_dev, lv->cells.data(), lv->cells.size() * sizeof(EcsqDeviceComponent)));
  KVTC_RETURN_IF_ERROR(upload(lv->slots_dev, lv->slots.data(), lv->slots.size()));
  KVTC_RETURN_IF_ERROR(upload(lv->entries_dev, lv->entries.data(), lv->entries.size() * sizeof(EcsqDeviceEntry)));
  KVTC_RETURN_IF_ERROR(upload(lv->cells_before_dev, lv->cells_before.data(), lv->cells_before.size() * sizeof(uint32_t)));
  KVTC_CUDA_RETURN(cudaStreamSynchronize(stream));
  lv->cells = {};  // on the device now
  lv->slots = {};
  lv->entries = {};
  const EcsqDeviceLevel* p = lv.get();
  levels_.emplace(key, std::move(lv));
  return p;
}

}  // namespace kvtc::cuda
