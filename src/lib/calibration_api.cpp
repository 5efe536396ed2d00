// Public Calibration, calibrate() and CalibrationBuilder over core/calibrate.
#include "core/backend.hpp"
#include "core/calibrate.hpp"
#include "format/calibration_file.hpp"
#include "kvtc/kvtc.hpp"
#include "util/file_io.hpp"
#include "util/status_macros.hpp"

namespace kvtc {

namespace {

}  // namespace

Result<Calibration> Calibration::parse(const uint8_t* bytes, size_t size_bytes) {
  KVTC_ASSIGN_OR_RETURN(CalibrationData d, parse_calibration(bytes, size_bytes));
  return Calibration(std::make_shared<const CalibrationData>(std::move(d)));
}

Result<Calibration> Calibration::load(const std::string& path) {
  KVTC_ASSIGN_OR_RETURN(std::vector<uint8_t> bytes, read_file(path));
  auto c = parse(bytes.data(), bytes.size());
  if (!c.is_ok()) return c.status().with_context(path);
  return c;
}

Result<std::vector<uint8_t>> Calibration::serialize() const { return serialize_calibration(*data_); }

Status Calibration::save(const std::string& path) const {
  KVTC_ASSIGN_OR_RETURN(std::vector<uint8_t> bytes, serialize());
  return write_file_atomic(path, bytes);
}

const ModelShape& Calibration::shape() const { return data_->shape; }
const std::string& Calibration::model_name() const { return data_->model_name; }
uint64_t Calibration::fingerprint() const { return data_->fingerprint; }
std::vector<double> Calibration::ratios() const { return data_->ratios; }
int64_t Calibration::n_calibration_tokens() const { return data_->n_calibration_tokens; }
int Calibration::n_sink_tokens() const { return data_->n_sink_tokens; }
int Calibration::n_window_tokens() const { return data_->n_window_tokens; }
int64_t Calibration::rank(bool keys) const { return (keys ? data_->key : data_->value).pca.rank; }

Result<AllocationSummary> Calibration::plan(double ratio, bool keys) const {
  KVTC_ASSIGN_OR_RETURN(Allocation a, allocation_for_ratio(*data_, keys ? 0 : 1, ratio));
  const PcaBasis& pca = (keys ? data_->key : data_->value).pca;
  AllocationSummary s;
  s.target_ratio = ratio;
  s.budget_bits_per_token = a.budget_bits_per_token;
  s.bits_per_token = a.bits_per_token;
  s.kept_components = a.n_kept_components();
  const double energy = mean_squared_norm(pca);
  s.predicted_relative_error = energy > 0 ? a.predicted_error / energy : 0;
  for (const Group& g : a.groups)
    s.groups.push_back({g.first_component, g.n_components, group_kind_name(g.kind), int(g.width_bits)});
  return s;
}

}  // namespace kvtc

namespace kvtc {

Result<Calibration> calibrate(const std::vector<std::string>& cache_paths, const CalibrateOptions& options) {
  KVTC_ASSIGN_OR_RETURN(CalibrationData d, calibrate_files(cache_paths, options));
  return Calibration(std::make_shared<const CalibrationData>(std::move(d)));
}

struct CalibrationBuilder::Impl {
  CalibrationAccumulator acc;
  int64_t n_added = 0;
};

CalibrationBuilder::CalibrationBuilder(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CalibrationBuilder::~CalibrationBuilder() = default;
CalibrationBuilder::CalibrationBuilder(CalibrationBuilder&&) noexcept = default;
CalibrationBuilder& CalibrationBuilder::operator=(CalibrationBuilder&&) noexcept = default;

Result<CalibrationBuilder> CalibrationBuilder::create(const ModelShape& shape, const std::string& model_name,
                                                      const CalibrateOptions& options) {
  KVTC_ASSIGN_OR_RETURN(CalibrationAccumulator acc, CalibrationAccumulator::create(shape, model_name, options));
  return CalibrationBuilder(std::make_unique<Impl>(Impl{std::move(acc), 0}));
}

Status CalibrationBuilder::add(const KVCache& cache) {
  return impl_->acc.add(cache, "cache " + std::to_string(impl_->n_added++));
}

Result<Calibration> CalibrationBuilder::finish() {
  KVTC_ASSIGN_OR_RETURN(CalibrationData d, impl_->acc.finish());
  return Calibration(std::make_shared<const CalibrationData>(std::move(d)));
}

}  // namespace kvtc
