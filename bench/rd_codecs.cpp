// Rate-distortion of codec 2 against codec 3 on held-out caches (issue 12, "What it must show"):
// calibrate on the four calib-* files of ../shared/kvcache (or load -c MODEL.kvtcal and take the cache
// files given), compress test-prose and test-code at each target with both codecs, restore, and report
// per stream, pooled over the files and over the compressed tokens: the achieved ratio of that
// stream (raw 16-bit bytes over its stored side and codes chunks), relative MSE, the Gaussian
// rate-distortion bound at that same achieved ratio (reverse water-filling over the test files'
// coefficient variances in the calibration basis, plus the energy outside the basis), dB above it,
// and the attention-output error. Then, per stream, codec 3's ratio at codec 2's error: the largest
// target whose error is at most codec 2's at that target (bisection). Prints Markdown and JSON.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <optional>

#include "bench_util.hpp"
#include "core/calibration_data.hpp"
#include "format/container.hpp"

using namespace kvtc;

namespace {

struct StreamRow {
  double ratio = 0, rel_mse = 0, bound = 0, db = 0;
};
struct Row {
  int codec = 2;
  double target = 0, ratio = 0, attn = 0;
  StreamRow s[2];
};

}  // namespace

int main(int argc, char** argv) {
  std::string cal_path;
  std::vector<std::string> tests;
  std::vector<double> targets = {8, 16, 20, 32, 64};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if ((a == "-c" || a == "--calibration") && i + 1 < argc) {
      cal_path = argv[++i];
    } else if ((a == "-t" || a == "--targets") && i + 1 < argc) {
      targets.clear();
      for (const char* q = argv[++i]; *q;) {
        char* end = nullptr;
        targets.push_back(std::strtod(q, &end));
        q = *end == ',' ? end + 1 : end;
      }
    } else {
      tests.push_back(a);
    }
  }
  if (cal_path.empty() != tests.empty()) {
    std::fprintf(stderr, "usage: kvtc_rd [-t 8,16,20,32,64] [-c MODEL.kvtcal TEST.safetensors...]\n");
    return 2;
  }
  std::optional<Calibration> loaded;
  if (!cal_path.empty()) {
    auto r = Calibration::load(cal_path);
    if (!r.is_ok()) {
      std::fprintf(stderr, "%s: %s\n", cal_path.c_str(), r.status().to_string().c_str());
      return 1;
    }
    loaded = std::move(r).value();
  }
  const Calibration& cal = loaded ? *loaded : bench::real_calibration();
  if (cal.data().key.ecsq.empty() || cal.data().value.ecsq.empty()) {
    std::fprintf(stderr, "the calibration has no ECSQ models (calibration format 1): recalibrate\n");
    return 1;
  }
  std::vector<const KVCache*> caches;
  for (const auto& f : tests.empty() ? bench::test_files() : tests) caches.push_back(&bench::real_cache(f));
  const bench::Energy energy[2] = {bench::test_energy(cal.data(), 0, caches),
                                  bench::test_energy(cal.data(), 1, caches)};
  const int64_t p = cal.shape().n_features();

  auto evaluate = [&](int codec, double target) -> Row {
    Row row;
    row.codec = codec;
    row.target = target;
    double stored[2] = {0, 0}, raw = 0, num[2] = {0, 0}, den[2] = {0, 0}, attn = 0;
    int attn_n = 0;
    for (const KVCache* c : caches) {
      EncodeOptions o;
      o.codec = codec;
      o.target_ratio = target;
      auto enc = encode(cal, *c, o);
      if (!enc.is_ok()) {
        std::fprintf(stderr, "codec %d at %g: %s\n", codec, target, enc.status().to_string().c_str());
        std::exit(1);
      }
      const EncodeReport& r = enc->report;
      auto parsed = parse_container(enc->bytes.data(), enc->bytes.size());
      for (const ChunkEntry& ch : parsed->header.chunks)
        if (ch.kind != ChunkKind::kExact) stored[ch.stream] += ch.stored_bytes;
      raw += double(r.n_compressed_tokens) * double(p) * 2.0;
      bench::pool_relative_mse(cal, *c, r, num, den);
      for (const LayerError& le : r.layers)
        if (le.attention_relative_error >= 0) {
          attn += le.attention_relative_error;
          ++attn_n;
        }
    }
    row.ratio = 2.0 * raw / (stored[0] + stored[1]);
    row.attn = attn_n ? attn / attn_n : -1.0;
    for (int s = 0; s < 2; ++s) {
      StreamRow& sr = row.s[s];
      sr.ratio = raw / stored[s];
      sr.rel_mse = num[s] / den[s];
      sr.bound = (bench::water_fill(energy[s].coef_var, 16.0 * double(p) / sr.ratio) + energy[s].residual) / energy[s].total;
      sr.db = 10.0 * std::log10(sr.rel_mse / sr.bound);
    }
    return row;
  };
  auto row_json = [](const Row& r) {
    nlohmann::json j{{"codec", r.codec}, {"target_ratio", r.target}, {"ratio", r.ratio}, {"attention_relative_error", r.attn}};
    for (int s = 0; s < 2; ++s)
      j[s == 0 ? "keys" : "values"] = {{"ratio", r.s[s].ratio}, {"relative_mse", r.s[s].rel_mse},
                                       {"bound_at_ratio", r.s[s].bound}, {"db_above_bound", r.s[s].db}};
    return j;
  };

  nlohmann::json out = {{"rows", nlohmann::json::array()}, {"equal_error", nlohmann::json::array()}};
  std::printf("| target | codec | K+V ratio | K ratio | K rel. MSE | K bound | K dB | V ratio | V rel. MSE | V bound | V dB | attn. err |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  std::vector<Row> v2_rows;
  for (double target : targets) {
    for (int codec : {2, 3}) {
      const Row r = evaluate(codec, target);
      if (codec == 2) v2_rows.push_back(r);
      std::printf("| %gx | %d | %.2fx | %.2fx | %.3f%% | %.3f%% | %+.2f | %.2fx | %.3f%% | %.3f%% | %+.2f | %.3f%% |\n", target,
                  codec, r.ratio, r.s[0].ratio, 100 * r.s[0].rel_mse, 100 * r.s[0].bound, r.s[0].db, r.s[1].ratio,
                  100 * r.s[1].rel_mse, 100 * r.s[1].bound, r.s[1].db, 100 * r.attn);
      std::fflush(stdout);
      out["rows"].push_back(row_json(r));
    }
  }
  // Codec 3's ratio at codec 2's error, per stream: the largest target whose error is at most codec 2's.
  std::printf("\n| codec 2 target | stream | codec 2 ratio | codec 2 rel. MSE | codec 3 ratio at <= that error | codec 3 rel. MSE | gain |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  for (const Row& v2 : v2_rows)
    for (int s = 0; s < 2; ++s) {
      double lo = v2.target * 0.8, hi = v2.target * 3.0;
      Row best = evaluate(3, lo);
      if (best.s[s].rel_mse > v2.s[s].rel_mse) {
        std::printf("| %gx | %s | %.2fx | %.3f%% | (none >= %.3gx) | | |\n", v2.target, s ? "V" : "K", v2.s[s].ratio,
                    100 * v2.s[s].rel_mse, lo);
        continue;
      }
      for (int it = 0; it < 7; ++it) {
        const double mid = std::sqrt(lo * hi);
        const Row r = evaluate(3, mid);
        if (r.s[s].rel_mse <= v2.s[s].rel_mse) {
          lo = mid;
          best = r;
        } else {
          hi = mid;
        }
      }
      std::printf("| %gx | %s | %.2fx | %.3f%% | %.2fx | %.3f%% | %.2fx |\n", v2.target, s ? "V" : "K", v2.s[s].ratio,
                  100 * v2.s[s].rel_mse, best.s[s].ratio, 100 * best.s[s].rel_mse, best.s[s].ratio / v2.s[s].ratio);
      std::fflush(stdout);
      out["equal_error"].push_back({{"target_ratio", v2.target}, {"stream", s ? "values" : "keys"},
                                    {"codec2_ratio", v2.s[s].ratio}, {"codec2_relative_mse", v2.s[s].rel_mse},
                                    {"codec3_ratio", best.s[s].ratio}, {"codec3_relative_mse", best.s[s].rel_mse}});
    }
  std::printf("\n%s\n", out.dump().c_str());
  return 0;
}
