// The calibration file (docs/CALIBRATION_FORMAT.md): CalibrationData to bytes and back.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/calibration_data.hpp"
#include "kvtc/status.hpp"

namespace kvtc {

Result<std::vector<uint8_t>> serialize_calibration(const CalibrationData& data);
// Checks magic, version, every length against the input size, and the checksums; sets fingerprint.
Result<CalibrationData> parse_calibration(const uint8_t* bytes, size_t size_bytes);

}  // namespace kvtc
