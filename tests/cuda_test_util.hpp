// For the GPU tests: each one skips, saying why, where no CUDA device can be used (CI has none).
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "cuda/cuda_backend.hpp"

#define SKIP_WITHOUT_DEVICE()                                                              \
  do {                                                                                     \
    std::string why;                                                                       \
    if (!::kvtc::cuda_device_available(&why)) GTEST_SKIP() << "no CUDA device: " << why; \
  } while (0)
