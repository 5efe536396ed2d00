#include "core/backend.hpp"

#include <cmath>
#include <sstream>

namespace kvtc {

Result<Allocation> allocation_for_ratio(const CalibrationData& cal, int stream, double ratio) {
  if (!(ratio >= 1.0) || !std::isfinite(ratio)) return invalid_argument("target ratio must be a number >= 1");
  const StreamCalibration& s = stream == 0 ? cal.key : cal.value;
  for (size_t i = 0; i < cal.ratios.size() && i < s.allocations.size(); ++i)
    if (std::fabs(cal.ratios[i] - ratio) < 1e-9) return s.allocations[i];
  if (s.table.error.empty()) return invalid_argument("calibration holds no distortion table to plan ratio " + std::to_string(ratio));
  AllocatorOptions options;
  auto a = allocate(s.table, budget_bits_for_ratio(cal.shape.n_features(), ratio), options);
  if (!a.is_ok()) return a.status();
  a->target_ratio = ratio;
  return a;
}

Status check_container_matches(const CalibrationData& cal, const ContainerHeader& h) {
  if (!(h.shape == cal.shape))
    return mismatch("container is for " + h.shape.to_string() + " but the calibration is for " + cal.shape.to_string());
  if (h.calibration_fingerprint != cal.fingerprint) {
    std::ostringstream os;
    os << "container was made with calibration " << std::hex << h.calibration_fingerprint << ", not with this one ("
       << cal.fingerprint << ")";
    return mismatch(os.str());
  }
  if (h.streams[0].basis_rank != cal.key.pca.rank || h.streams[1].basis_rank != cal.value.pca.rank)
    return mismatch("container basis ranks differ from the calibration's");
  return Status::ok();
}

}  // namespace kvtc
