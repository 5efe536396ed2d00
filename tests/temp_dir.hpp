// A fresh temporary directory for a test's outputs: the one helper the store tests need, apart from
// test_util.hpp (which includes this) so that they link the store library alone (tests/CMakeLists.txt).
#pragma once

#include <string>

namespace kvtc::testing {

// A fresh empty directory under the system temp dir for this test's outputs.
std::string temp_dir();

}  // namespace kvtc::testing
