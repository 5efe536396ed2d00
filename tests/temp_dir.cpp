#include "temp_dir.hpp"

#include <unistd.h>

#include <atomic>
#include <filesystem>

namespace kvtc::testing {

std::string temp_dir() {
  static std::atomic<int> counter{0};
  namespace fs = std::filesystem;
  fs::path dir = fs::temp_directory_path() /
                 ("kvtc-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

}  // namespace kvtc::testing
