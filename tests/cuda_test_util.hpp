// For the GPU tests: each one skips, saying why, where no CUDA device can be used (CI has none), and
// the check every decoder test makes of a container.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <random>
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

// Uploads `cal`, decodes `blobs` as one batch through the public API (default options), and holds every
// sequence to the CPU decoder as expect_batch_matches_cpu does.
inline void expect_batch_decode_matches_cpu(const Calibration& cal, const std::vector<std::vector<uint8_t>>& blobs) {
  auto dcal = cuda::DeviceCalibration::upload(cal, {}, nullptr);
  ASSERT_TRUE(dcal.is_ok()) << dcal.status().to_string();
  cuda::BatchDecoder dec;
  std::vector<cuda::ContainerView> views;
  for (auto& b : blobs) views.push_back({b.data(), b.size()});
  ASSERT_TRUE(dec.decode(*dcal, views, cuda::BatchDecodeOptions{}, nullptr).is_ok());
  ASSERT_EQ(dec.n_sequences(), int(blobs.size()));
  expect_batch_matches_cpu(dec, *dcal, cal.data(), blobs);
}

// vLLM's paged layout against the contiguous one, for sequence 0 of a decoded batch: every layer is
// restored both ways (for each type), through a shuffled block table of 16-token blocks with 5 blocks
// left outside it; each token's row must be byte-identical, and the blocks outside the table untouched.
inline void expect_paged_equals_contiguous(cuda::BatchDecoder& dec, const cuda::DeviceCalibration& dcal,
                                           const ModelShape& shape, std::initializer_list<cuda::ElementType> types) {
  const int H = shape.n_kv_heads, D = shape.head_dim, block = 16;
  const int64_t T = dec.n_tokens(0), n_used = (T + block - 1) / block, n_blocks = n_used + 5;
  std::vector<int32_t> table(static_cast<size_t>(n_blocks));
  for (int64_t b = 0; b < n_blocks; ++b) table[size_t(b)] = int32_t(b);
  std::mt19937 rng(5);
  std::shuffle(table.begin(), table.end(), rng);
  table.resize(size_t(n_used));  // 5 blocks stay outside the table
  for (cuda::ElementType type : types) {
    const size_t eb = type == cuda::ElementType::kF32 ? 4 : 2;
    const size_t layer_elems = size_t(H) * size_t(T) * size_t(D), paged_elems = size_t(n_blocks) * 2 * block * H * D;
    void *k = nullptr, *v = nullptr, *paged = nullptr;
    int32_t* table_dev = nullptr;
    ASSERT_EQ(cudaMalloc(&k, layer_elems * eb), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&v, layer_elems * eb), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&paged, paged_elems * eb), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&table_dev, table.size() * 4), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(table_dev, table.data(), table.size() * 4, cudaMemcpyHostToDevice), cudaSuccess);
    for (int l = 0; l < shape.n_layers; ++l) {
      ASSERT_EQ(cudaMemset(paged, 0x7b, paged_elems * eb), cudaSuccess);
      ASSERT_TRUE(dec.restore_layer(dcal, 0, l, k, v, type, nullptr).is_ok());
      ASSERT_TRUE(dec.restore_layer_paged(dcal, 0, l, paged, table_dev, block, type, nullptr).is_ok());
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      std::vector<uint8_t> kh(layer_elems * eb), vh(layer_elems * eb), ph(paged_elems * eb);
      ASSERT_EQ(cudaMemcpy(kh.data(), k, kh.size(), cudaMemcpyDeviceToHost), cudaSuccess);
      ASSERT_EQ(cudaMemcpy(vh.data(), v, vh.size(), cudaMemcpyDeviceToHost), cudaSuccess);
      ASSERT_EQ(cudaMemcpy(ph.data(), paged, ph.size(), cudaMemcpyDeviceToHost), cudaSuccess);
      std::vector<bool> written(paged_elems, false);
      for (int kv = 0; kv < 2; ++kv)
        for (int h = 0; h < H; ++h)
          for (int64_t t = 0; t < T; ++t) {
            const size_t src = (size_t(h) * size_t(T) + size_t(t)) * size_t(D);
            const size_t dst = ((size_t(table[size_t(t / block)]) * 2 + size_t(kv)) * block + size_t(t % block)) * H * D +
                               size_t(h) * D;
            ASSERT_EQ(std::memcmp((kv == 0 ? kh : vh).data() + src * eb, ph.data() + dst * eb, size_t(D) * eb), 0)
                << "layer " << l << (kv == 0 ? " keys" : " values") << " head " << h << " token " << t;
            std::fill(written.begin() + int64_t(dst), written.begin() + int64_t(dst + size_t(D)), true);
          }
      for (size_t e = 0; e < paged_elems; ++e) {
        if (written[e]) continue;
        for (size_t b = 0; b < eb; ++b) ASSERT_EQ(ph[e * eb + b], 0x7b) << "element " << e << " written outside the table";
      }
    }
    cudaFree(k);
    cudaFree(v);
    cudaFree(paged);
    cudaFree(table_dev);
  }
}

}  // namespace kvtc::testing
