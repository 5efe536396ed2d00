// ctest's TestFixtures.SmallCalibration (tests/CMakeLists.txt): computes test_util's calibration of
// data/small-calib.safetensors once per ctest run and writes it where small_calibration_with_ecsq()
// looks, so that the tests using it (one process each) read a file instead of each calibrating.
#include <cstdio>
#include <exception>
#include <filesystem>
#include <memory>

#include "test_util.hpp"

int main() {
  using namespace kvtc;
  const std::string path = testing::small_calibration_fixture_path();
  try {
    std::filesystem::create_directories(std::filesystem::path(path).parent_path());
    const Calibration cal(std::make_shared<CalibrationData>(testing::compute_small_calibration_with_ecsq()));
    const Status s = cal.save(path);  // atomic: readers see the old file or the whole new one
    if (!s.is_ok()) {
      std::fprintf(stderr, "write_test_fixtures: %s: %s\n", path.c_str(), s.to_string().c_str());
      return 1;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "write_test_fixtures: %s\n", e.what());
    return 1;
  }
  std::printf("wrote %s\n", path.c_str());
  return 0;
}
