// Codec 3's tables of one ECSQ level in the form the GPU decoder reads (cuda/ecsq_decode.cuh): built on
// the host from the calibration's model (through EcsqDecodeLevel, so that the validation and the
// slot tables are the CPU decoder's), uploaded on first use, and kept with the device calibration.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#include "core/ecsq.hpp"
#include "cuda/cuda_common.hpp"
#include "cuda/ecsq_decode.cuh"

namespace kvtc::cuda {

struct EcsqDeviceLevel {
  uint32_t n_kept = 0;
  std::vector<uint32_t> cells_before;     // [n_kept + 1]: components with a cell before component j
  // Built on the host, emptied once EcsqLevelCache has uploaded them:
  std::vector<EcsqDeviceComponent> cells;  // the components with a cell, in component order
  std::vector<uint8_t> slots;              // each cell's 2^prob_bits slot -> symbol bytes
  std::vector<EcsqDeviceEntry> entries;    // each cell's alphabet: freq << 16 | cum, direct coefficients
  DeviceBuffer cells_dev, slots_dev, entries_dev;
  DeviceBuffer cells_before_dev;           // cells_before on the device (token classes walk it)

  // Cells of components [c0, c1) (c0 <= c1 <= n_kept).
  uint32_t cells_in(uint32_t c0, uint32_t c1) const { return cells_before[c1] - cells_before[c0]; }
};

// The host part of level `level` of `model`: CORRUPT for a level beyond the model, INVALID_ARGUMENT
// for an invalid table or tables too large for 32-bit offsets.
Result<std::unique_ptr<EcsqDeviceLevel>> build_ecsq_device_level(const EcsqModel& model, uint32_t level);

// The levels a device calibration has uploaded, per (model fingerprint, stream, level); thread-safe.
// Levels stay until the cache is destroyed: a calibration's containers use a handful of its levels
// (rate control picks one per stream and container), each a few MB at most.
class EcsqLevelCache {
 public:
  // The level's tables on the device, built and uploaded on first use (the upload is synchronous on
  // `stream`, so the first decode at a level waits for work queued there before).
  Result<const EcsqDeviceLevel*> get(const EcsqModel& model, int stream_index, uint32_t level, cudaStream_t stream);

 private:
  std::mutex mu_;
  std::map<std::tuple<uint64_t, int, uint32_t>, std::unique_ptr<EcsqDeviceLevel>> levels_;
};

}  // namespace kvtc::cuda
