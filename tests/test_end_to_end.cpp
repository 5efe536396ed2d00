// End to end on the real caches of ../shared/kvcache: calibrate on the four calibration files,
// compress both test files at 20x, restore, and hold the result to the bar of issue 2 (the plain
// implementation reached 22.2x achieved at K 1.84%, V 5.64% relative MSE over compressed tokens).
#include <gtest/gtest.h>

#include "kvtc/kvtc.hpp"
#include "test_util.hpp"

namespace kvtc {
namespace {

TEST(EndToEnd, RealCachesAt20xBeatThePlainCoder) {
  using testing::shared_kvcache;
  CalibrateOptions co;
  co.ratios = {20};
  auto cal = calibrate({shared_kvcache("calib-prose-1.safetensors"), shared_kvcache("calib-prose-2.safetensors"),
                        shared_kvcache("calib-code-1.safetensors"), shared_kvcache("calib-code-2.safetensors")},
                       co);
  ASSERT_TRUE(cal.is_ok()) << cal.status().to_string();
  EXPECT_EQ(cal->n_calibration_tokens(), 4 * (1024 - 4 - 128));
  for (const char* name : {"test-prose.safetensors", "test-code.safetensors"}) {
    auto cache = read_cache(shared_kvcache(name));
    ASSERT_TRUE(cache.is_ok()) << cache.status().to_string();
    EncodeOptions o;
    o.target_ratio = 20;
    auto enc = encode(*cal, *cache, o);
    ASSERT_TRUE(enc.is_ok()) << enc.status().to_string();
    const EncodeReport& r = enc->report;
    EXPECT_GE(r.ratio_nominal, 20.0) << name;
    EXPECT_GE(r.ratio_compressed_tokens, 20.0) << name;
    EXPECT_LT(r.k_relative_mse, 0.0184) << name;
    EXPECT_LT(r.v_relative_mse, 0.0564) << name;
    ASSERT_EQ(r.layers.size(), 8u);
    for (const LayerError& e : r.layers) {
      EXPECT_GT(e.k_cosine, 0.95) << name;
      EXPECT_GE(e.attention_relative_error, 0.0) << name << ": the test files carry q tensors";
    }
    auto restored = decode(*cal, enc->bytes.data(), enc->bytes.size());
    ASSERT_TRUE(restored.is_ok()) << restored.status().to_string();
    EXPECT_EQ(restored->n_tokens, cache->n_tokens);
  }
}

}  // namespace
}  // namespace kvtc
