#include "core/backend.hpp"

#include "core/calibrate.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>

namespace kvtc {

Result<Allocation> allocation_for_ratio(const CalibrationData& cal, int stream, double ratio) {
  if (!(ratio >= 1.0) || !std::isfinite(ratio)) return invalid_argument("target ratio must be a number >= 1");
  return plan_allocation(stream == 0 ? cal.key : cal.value, cal.shape.n_features(), ratio, AllocatorOptions{});
}

ExactTokens exact_tokens(const CalibrationData& cal, int64_t n_tokens, const EncodeOptions& options) {
  ExactTokens e;
  const int64_t head = options.exact_head_tokens >= 0 ? options.exact_head_tokens : cal.n_sink_tokens;
  const int64_t tail = options.exact_tail_tokens >= 0 ? options.exact_tail_tokens : cal.n_window_tokens;
  e.head = std::min<int64_t>(head, n_tokens);
  e.tail = std::min<int64_t>(tail, n_tokens - e.head);
  return e;
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
  for (int s = 0; s < 2; ++s) {
    const StreamAllocation& a = h.streams[s];
    if (!a.ecsq()) continue;
    const EcsqModel& model = s == 0 ? cal.key.ecsq : cal.value.ecsq;
    const std::string where = s == 0 ? "keys" : "values";
    if (model.empty())
      return mismatch("the container's " + where + " are ECSQ-coded (codec v3) but the calibration has no ECSQ model "
                      "(calibration format 1); decode with the calibration the container was made with");
    if (a.ecsq_fingerprint != model.fingerprint) return mismatch("the container's " + where + " were coded with another ECSQ model");
    if (a.ecsq_level >= model.levels.size())
      return corrupt("the container's " + where + " name ECSQ level " + std::to_string(a.ecsq_level) + " of " +
                     std::to_string(model.levels.size()));
    // ecsq_level_high <= ecsq_level (parse checked it); it equals ecsq_level without token classes.
    const uint32_t n_kept = std::max(model.levels[a.ecsq_level].n_kept(), model.levels[a.ecsq_level_high].n_kept());
    if (a.ecsq_n_kept != n_kept)
      return corrupt("the container's " + where + " keep " + std::to_string(a.ecsq_n_kept) + " components, their levels " +
                     std::to_string(n_kept));
  }
  return Status::ok();
}

}  // namespace kvtc
