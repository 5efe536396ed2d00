#include "common.hpp"

#include <unistd.h>

#include <cstdio>
#include <sstream>

namespace kvtc::cli {

void fail(const Status& status, const std::string& context) {
  progress_done();
  std::fprintf(stderr, "kvtc: %s%s%s\n", context.c_str(), context.empty() ? "" : ": ", status.to_string().c_str());
  throw CLI::RuntimeError(1);
}

namespace {
bool g_bar_active = false;
}

ProgressFn progress_bar() {
  if (!::isatty(STDERR_FILENO)) return nullptr;
  return [](double fraction, const std::string& stage) {
    const int width = 30;
    const int filled = int(fraction * width + 0.5);
    std::fprintf(stderr, "\r%-14s [%s%s] %3d%%", stage.c_str(), std::string(size_t(filled), '#').c_str(),
                 std::string(size_t(width - filled), ' ').c_str(), int(fraction * 100 + 0.5));
    std::fflush(stderr);
    g_bar_active = true;
  };
}

void progress_done() {
  if (g_bar_active) std::fprintf(stderr, "\r%60s\r", "");
  g_bar_active = false;
}

std::vector<double> parse_number_list(const std::string& text) {
  std::vector<double> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    char* end = nullptr;
    const double v = std::strtod(item.c_str(), &end);
    if (end == item.c_str() || *end != '\0') fail(invalid_argument("not a number: '" + item + "'"));
    out.push_back(v);
  }
  return out;
}

}  // namespace kvtc::cli
