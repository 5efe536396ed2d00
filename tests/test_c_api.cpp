// The C API: a full round trip through handles, and statuses with messages on bad input.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "kvtc/kvtc.h"
#include "test_util.hpp"

namespace {

TEST(CApi, CalibrateCompressDecompressRoundTrip) {
  const std::string calib = kvtc::testing::repo_data("small-calib.safetensors");
  const std::string test = kvtc::testing::repo_data("small-test.safetensors");
  const char* paths[] = {calib.c_str()};
  const double ratios[] = {20};
  kvtc_calibration* cal = nullptr;
  ASSERT_EQ(kvtc_calibration_create(paths, 1, ratios, 1, &cal), KVTC_OK) << kvtc_last_error();
  kvtc_cache* cache = nullptr;
  ASSERT_EQ(kvtc_cache_load(test.c_str(), &cache), KVTC_OK) << kvtc_last_error();
  uint8_t* buf = nullptr;
  size_t size = 0;
  ASSERT_EQ(kvtc_compress(cal, cache, 20, 0, &buf, &size), KVTC_OK) << kvtc_last_error();
  int32_t layers = 0, heads = 0, dim = 0;
  int64_t tokens = 0;
  ASSERT_EQ(kvtc_container_shape(buf, size, &layers, &heads, &dim, &tokens), KVTC_OK);
  EXPECT_EQ(layers, 8);
  EXPECT_EQ(tokens, 512);
  // 20x on the compressed middle, and the exact tokens dominate the rest: at least 4x overall.
  EXPECT_LT(size, size_t(512) * 2048 * 4 / 4);
  kvtc_cache* restored = nullptr;
  ASSERT_EQ(kvtc_decompress(cal, buf, size, 0, &restored), KVTC_OK) << kvtc_last_error();
  std::vector<float> k(size_t(heads) * tokens * dim), v(k.size());
  ASSERT_EQ(kvtc_decompress_layer(cal, buf, size, 3, k.data(), v.data(), k.size()), KVTC_OK) << kvtc_last_error();
  const float* rk = kvtc_cache_keys(restored, 3);
  ASSERT_NE(rk, nullptr);
  EXPECT_EQ(std::vector<float>(rk, rk + k.size()), k);
  EXPECT_EQ(kvtc_cache_keys(restored, 8), nullptr);
  EXPECT_EQ(kvtc_decompress_layer(cal, buf, size, 3, k.data(), v.data(), 10), KVTC_OUT_OF_SPACE);
  buf[size / 2] ^= 1;
  EXPECT_EQ(kvtc_decompress(cal, buf, size, 0, &restored), KVTC_CHECKSUM_MISMATCH);
  EXPECT_NE(std::string(kvtc_last_error()).find("checksum"), std::string::npos);
  kvtc_buffer_free(buf);
  kvtc_cache_free(restored);
  kvtc_cache_free(cache);
  kvtc_calibration_free(cal);
}

TEST(CApi, BadInputGivesStatusAndMessage) {
  kvtc_calibration* cal = nullptr;
  EXPECT_EQ(kvtc_calibration_load("/nonexistent/model.kvtcal", &cal), KVTC_IO);
  EXPECT_NE(std::string(kvtc_last_error()).find("/nonexistent/model.kvtcal"), std::string::npos);
  EXPECT_EQ(kvtc_calibration_load(nullptr, &cal), KVTC_INVALID_ARGUMENT);
  const uint8_t junk[64] = {0x89, 'K', 'V', 'T', 'C', '\r', '\n', 0x1a, 1};
  EXPECT_EQ(kvtc_container_shape(junk, sizeof junk, nullptr, nullptr, nullptr, nullptr), KVTC_CORRUPT);
  EXPECT_STREQ(kvtc_status_name(KVTC_MISMATCH), "MISMATCH");
  kvtc_cache_free(nullptr);
  kvtc_calibration_free(nullptr);
}

}  // namespace
