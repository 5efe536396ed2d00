// Calibration from the model (engine prefill streamed into kvtc::CalibrationBuilder), and the token
// stream it reads.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>

#include "engine/cache_io.hpp"
#include "engine/calibrate.hpp"
#include "engine/model.hpp"
#include "engine/token_stream.hpp"
#include "engine/tokenizer.hpp"
#include "kvtc/kvtc.hpp"
#include "test_util.hpp"
#include "util/file_io.hpp"

namespace kvtc::engine {
namespace {

std::string model_dir() { return kvtc::testing::shared_dir() + "/models/kvtc-ref-26m"; }
std::string corpus(const std::string& name) { return kvtc::testing::shared_dir() + "/corpus/" + name; }
bool have_model() {
  return std::filesystem::exists(model_dir() + "/config.json") && std::filesystem::exists(corpus("prose.valid.txt.xz"));
}

TEST(TokenStream, CutsTheBosDocEosStream) {
  if (!have_model()) GTEST_SKIP() << "reference model not found";
  auto tok = Tokenizer::load_for_model(model_dir());
  ASSERT_TRUE(tok.is_ok());
  const std::string dir = kvtc::testing::temp_dir();
  const std::string text = "first document\n\x1e\nsecond\n";
  ASSERT_TRUE(write_file_atomic(dir + "/a.txt", reinterpret_cast<const uint8_t*>(text.data()), text.size()).is_ok());
  TokenStream s(*tok, {dir + "/a.txt", dir + "/a.txt"}, /*eos_id=*/1, /*skip_docs=*/1);
  auto all = s.next(1000);
  ASSERT_TRUE(all.is_ok());
  std::vector<int32_t> want;
  for (const char* d : {"second", "first document", "second"}) {
    auto ids = tok->encode(d, true);
    want.insert(want.end(), ids->begin(), ids->end());
    want.push_back(1);
  }
  EXPECT_EQ(*all, want);
  EXPECT_DOUBLE_EQ(s.progress(), 1.0);
  auto more = s.next(10);
  ASSERT_TRUE(more.is_ok());
  EXPECT_TRUE(more->empty());
  // Cut in pieces, the stream is the same.
  TokenStream t(*tok, {dir + "/a.txt", dir + "/a.txt"}, 1, 1);
  std::vector<int32_t> joined;
  for (int i = 0; i < 20; ++i) {
    auto p = t.next(3);
    ASSERT_TRUE(p.is_ok());
    joined.insert(joined.end(), p->begin(), p->end());
  }
  EXPECT_EQ(joined, want);
}

TEST(InterleavedStreams, FilesTakeTurnsUntilEachIsUsedUp) {
  if (!have_model()) GTEST_SKIP() << "reference model not found";
  auto tok = Tokenizer::load_for_model(model_dir());
  ASSERT_TRUE(tok.is_ok());
  const std::string dir = kvtc::testing::temp_dir();
  const std::string a = "a long first file, with enough words for several pieces\n\x1e\nand a second document",
                    b = "x";
  ASSERT_TRUE(write_file_atomic(dir + "/a.txt", reinterpret_cast<const uint8_t*>(a.data()), a.size()).is_ok());
  ASSERT_TRUE(write_file_atomic(dir + "/b.txt", reinterpret_cast<const uint8_t*>(b.data()), b.size()).is_ok());
  // Each file alone, as one stream.
  std::vector<std::vector<int32_t>> alone;
  for (const char* f : {"/a.txt", "/b.txt"}) {
    TokenStream s(*tok, {dir + f}, 1);
    auto all = s.next(1 << 20);
    ASSERT_TRUE(all.is_ok());
    alone.push_back(*all);
  }
  ASSERT_GT(alone[0].size(), 12u);
  ASSERT_LT(alone[1].size(), 4u);  // <bos> x <eos>: b is used up on its first turn
  InterleavedStreams s(*tok, {dir + "/a.txt", dir + "/b.txt"}, 1);
  std::vector<size_t> order;
  std::vector<std::vector<int32_t>> got(2);
  for (;;) {
    size_t file = 99;
    auto piece = s.next(4, &file);
    ASSERT_TRUE(piece.is_ok());
    if (piece->empty()) break;
    ASSERT_LT(file, 2u);
    order.push_back(file);
    got[file].insert(got[file].end(), piece->begin(), piece->end());
  }
  // a, b, then a alone to its end; each file's tokens are its own stream's, in order.
  ASSERT_GE(order.size(), 3u);
  EXPECT_EQ(order[0], 0u);
  EXPECT_EQ(order[1], 1u);
  for (size_t i = 2; i < order.size(); ++i) EXPECT_EQ(order[i], 0u);
  EXPECT_EQ(got[0], alone[0]);
  EXPECT_EQ(got[1], alone[1]);
  EXPECT_DOUBLE_EQ(s.progress(), 1.0);
}

TEST(CalibrateFromModel, CalibratesAndCompressesAnEngineCache) {
  if (!have_model()) GTEST_SKIP() << "reference model not found";
  CalibrateOptions o;
  o.ratios = {16};
  o.max_allocation_samples = 1024;
  auto t0 = std::chrono::steady_clock::now();
  auto cal = calibrate_from_model(model_dir(), {corpus("prose.valid.txt.xz"), corpus("code.valid.txt.xz")}, o,
                                  /*n_tokens_per_sequence=*/512, /*max_tokens=*/2048);
  ASSERT_TRUE(cal.is_ok()) << cal.status().to_string();
  std::printf("[ engine ] calibrated on 2048 tokens in %.1f s\n",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  EXPECT_EQ(cal->shape().n_layers, 8);
  EXPECT_EQ(cal->shape().n_kv_heads, 2);
  EXPECT_EQ(cal->model_name(), "kvtc-ref-26m");
  EXPECT_GT(cal->n_calibration_tokens(), 0);
  EXPECT_LE(cal->n_calibration_tokens(), 2048);

  // A held-out cache made by the engine compresses and restores at the calibrated ratio.
  auto model = Model::load(model_dir());
  auto tok = Tokenizer::load_for_model(model_dir());
  ASSERT_TRUE(model.is_ok() && tok.is_ok());
  TokenStream s(*tok, {corpus("code.test.txt.xz")}, 1, 3);
  auto tokens = s.next(512);
  ASSERT_TRUE(tokens.is_ok());
  KvState st = model->new_state();
  ASSERT_TRUE(model->forward(&st, *tokens).is_ok());
  auto cache = export_cache(model->config(), st);
  ASSERT_TRUE(cache.is_ok());
  EncodeOptions eo;
  eo.target_ratio = 16;
  auto blob = encode(*cal, *cache, eo);
  ASSERT_TRUE(blob.is_ok()) << blob.status().to_string();
  auto restored = decode(*cal, blob->bytes.data(), blob->bytes.size());
  ASSERT_TRUE(restored.is_ok()) << restored.status().to_string();
  EXPECT_EQ(restored->n_tokens, cache->n_tokens);
  std::printf("[ engine ] 512-token cache at target 16x: file ratio %.1fx, K rel. MSE %.4f, V rel. MSE %.4f\n",
              blob->report.ratio_file, blob->report.k_relative_mse, blob->report.v_relative_mse);
  EXPECT_LT(blob->report.k_relative_mse, 0.2);
  // And goes back into the model.
  KvState back = model->new_state();
  EXPECT_TRUE(import_cache(model->config(), *restored, &back).is_ok());
  EXPECT_EQ(back.n_tokens(), 512);
}

TEST(CalibrateFromModel, RejectsBadArguments) {
  CalibrateOptions o;
  EXPECT_FALSE(calibrate_from_model(model_dir(), {}, o).is_ok());
  EXPECT_FALSE(calibrate_from_model("/nonexistent", {"x.txt"}, o).is_ok());
  if (!have_model()) return;
  const std::string dir = kvtc::testing::temp_dir();
  const std::string tiny = "too short";
  ASSERT_TRUE(write_file_atomic(dir + "/t.txt", reinterpret_cast<const uint8_t*>(tiny.data()), tiny.size()).is_ok());
  auto r = calibrate_from_model(model_dir(), {dir + "/t.txt"}, o, 512, 0);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvtc::engine
