// For the GPU tests: each one skips, saying why, where no CUDA device can be used (CI has none), and
// the check every decoder test makes of a container.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/backend.hpp"
#include "core/calibration_data.hpp"
#include "core/reference_decoder.hpp"
#include "cuda/cuda_backend.hpp"

#define SKIP_WITHOUT_DEVICE()                                                              \
  do {                                                                                     \
    std::string why;                                                                       \
    if (!::kvtc::cuda_device_available(&why)) GTEST_SKIP() << "no CUDA device: " << why; \
  } while (0)

namespace kvtc::testing {

// max |a - b| / max(1, max |b|).
inline double max_rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0, m = 1;
  for (size_t i = 0; i < a.size(); ++i) {
    d = std::max(d, std::fabs(double(a[i]) - double(b[i])));
    m = std::max(m, std::fabs(double(b[i])));
    if (std::isnan(a[i])) return INFINITY;
  }
  return d / m;
}

// GPU coefficients are bit-identical to the CPU's; restored layers agree with the CPU backend and the
// reference decoder within fp32 rounding (stated tolerance: 2e-5 of the largest magnitude).
inline void check_container(const CalibrationData& cal, const std::vector<uint8_t>& bytes) {
  auto cpu = make_cpu_backend();
  auto gpu = make_cuda_backend();
  DecodeOptions opt;
  auto cd = cpu->decode_coefficients(cal, bytes.data(), bytes.size(), opt, nullptr);
  ASSERT_TRUE(cd.is_ok()) << cd.status().to_string();
  auto gd = gpu->decode_coefficients(cal, bytes.data(), bytes.size(), opt, nullptr);
  ASSERT_TRUE(gd.is_ok()) << gd.status().to_string();
  for (int s = 0; s < 2; ++s) {
    ASSERT_EQ(cd->coef[s].size(), gd->coef[s].size());
    EXPECT_EQ(0, std::memcmp(cd->coef[s].data(), gd->coef[s].data(), cd->coef[s].size() * sizeof(float)))
        << "stream " << s << " coefficients differ";
    for (int seg = 0; seg < 2; ++seg) EXPECT_EQ(cd->exact[s][seg], gd->exact[s][seg]) << "exact tokens differ";
  }
  auto ref = reference_decode(cal, bytes.data(), bytes.size());
  ASSERT_TRUE(ref.is_ok()) << ref.status().to_string();
  const ContainerHeader& h = gd->container.header;
  const size_t n = size_t(h.shape.n_kv_heads) * h.n_tokens * h.shape.head_dim;
  std::vector<float> kc(n), vc(n), kg(n, NAN), vg(n, NAN), kx(n, NAN), vx(n, NAN);
  for (int l = 0; l < h.shape.n_layers; ++l) {
    ASSERT_TRUE(cpu->restore_layer(cal, *cd, l, kc.data(), vc.data(), 0, nullptr).is_ok());
    ASSERT_TRUE(gpu->restore_layer(cal, *gd, l, kg.data(), vg.data(), 0, nullptr).is_ok());
    // Coefficients decoded on the CPU, reconstructed on the GPU.
    ASSERT_TRUE(gpu->restore_layer(cal, *cd, l, kx.data(), vx.data(), 0, nullptr).is_ok());
    EXPECT_LE(max_rel_diff(kg, kc), 2e-5) << "layer " << l << " keys";
    EXPECT_LE(max_rel_diff(vg, vc), 2e-5) << "layer " << l << " values";
    EXPECT_LE(max_rel_diff(kg, ref->k[size_t(l)]), 2e-5) << "layer " << l << " keys vs reference";
    EXPECT_LE(max_rel_diff(vg, ref->v[size_t(l)]), 2e-5) << "layer " << l << " values vs reference";
    EXPECT_EQ(kx, kg);
    EXPECT_EQ(vx, vg);
  }
}

}  // namespace kvtc::testing
