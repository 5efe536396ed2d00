// The small calibration's fixture file, which ctest's TestFixtures.SmallCalibration writes first
// (tests/write_test_fixtures.cpp), and the rule for reading it. Header-only, with nothing of kvtc's
// internals, so that test_c_api_shared (libkvtc.so alone, no test_util) reads it the same way.
#pragma once

#include <sys/stat.h>

#include <string>
#include <tuple>

namespace kvtc::testing {

// <build>/tests/test-fixtures/small-calib-ecsq.kvtcal (KVTC_TEST_FIXTURE_DIR: tests/CMakeLists.txt).
inline std::string small_calibration_fixture_path() {
  return std::string(KVTC_TEST_FIXTURE_DIR) + "/small-calib-ecsq.kvtcal";
}

// Whether the file at `path` exists and was written no earlier than the running executable was
// linked: a rebuilt library relinks the tests, which makes an older file stale.
inline bool fixture_is_fresh(const std::string& path) {
  struct stat file {}, self {};
  if (::stat(path.c_str(), &file) != 0 || ::stat("/proc/self/exe", &self) != 0) return false;
  const auto mtime = [](const struct stat& s) { return std::tie(s.st_mtim.tv_sec, s.st_mtim.tv_nsec); };
  return mtime(file) >= mtime(self);
}

}  // namespace kvtc::testing
