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
#include "kvtc/kvtc_cuda.hpp"

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

// Every sequence of a decoded batch, restored on the GPU (restore_all with its layer events, fp32 and
// bf16, copied back as fp32), against the CPU decoder of its container: within 2e-5 (fp32) or 1e-2
// (bf16) of the largest magnitude, every layer. blobs[q] is sequence q's container.
inline void expect_batch_matches_cpu(cuda::BatchDecoder& dec, const cuda::DeviceCalibration& dcal,
                                     const CalibrationData& cal, const std::vector<std::vector<uint8_t>>& blobs) {
  ASSERT_EQ(dec.n_sequences(), int(blobs.size()));
  auto cpu = make_cpu_backend();
  const ModelShape& shape = cal.shape;
  for (int q = 0; q < int(blobs.size()); ++q) {
    const std::vector<uint8_t>& blob = blobs[size_t(q)];
    auto cd = cpu->decode_coefficients(cal, blob.data(), blob.size(), DecodeOptions{}, nullptr);
    ASSERT_TRUE(cd.is_ok());
    const size_t n = size_t(shape.n_kv_heads) * size_t(dec.n_tokens(q)) * shape.head_dim;
    for (auto type : {cuda::ElementType::kF32, cuda::ElementType::kBF16}) {
      std::vector<std::vector<float>> kg, vg;
      ASSERT_TRUE(cuda_restore_all_to_host(dec, dcal, q, type, &kg, &vg).is_ok());
      std::vector<float> kc(n), vc(n);
      for (int l = 0; l < shape.n_layers; ++l) {
        ASSERT_TRUE(cpu->restore_layer(cal, *cd, l, kc.data(), vc.data(), 0, nullptr).is_ok());
        const double tol = type == cuda::ElementType::kF32 ? 2e-5 : 1e-2;
        EXPECT_LE(max_rel_diff(kg[size_t(l)], kc), tol) << "seq " << q << " layer " << l;
        EXPECT_LE(max_rel_diff(vg[size_t(l)], vc), tol) << "seq " << q << " layer " << l;
      }
    }
  }
}

}  // namespace kvtc::testing
