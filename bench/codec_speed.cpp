// Codec 2 against codec 3 on the CPU, per stage: encode (StageTimes of the encoder), then
// decode_coefficients and every layer's restore, codecs interleaved in every repetition so that load
// on the machine hits both alike (bench/RESULTS.md, "CPU speed of codec 3"). One TSV line per (file,
// ratio, repetition, codec, direction); repetition -1 is a warm-up and is not printed.
//
//   kvtc_codec_speed CAL THREADS REPS RATIOS(comma) FILE...
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "core/backend.hpp"

using namespace kvtc;
using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  if (argc < 6) { std::fprintf(stderr, "usage\n"); return 2; }
  auto cal = Calibration::load(argv[1]);
  if (!cal.is_ok()) { std::fprintf(stderr, "%s\n", cal.status().to_string().c_str()); return 1; }
  const int threads = std::atoi(argv[2]), reps = std::atoi(argv[3]);
  std::vector<double> ratios;
  { std::stringstream ss(argv[4]); std::string t; while (std::getline(ss, t, ',')) ratios.push_back(std::stod(t)); }
  auto backend = make_cpu_backend();
  std::printf("file\tratio\tcodec\trep\tdir\twhole_s\tgather_s\ttransform_s\tquantize_s\tentropy_s\texact_s\tbytes\traw_bytes\tfile_ratio\n");
  for (int fi = 5; fi < argc; ++fi) {
    auto cache = read_cache(argv[fi]);
    if (!cache.is_ok()) { std::fprintf(stderr, "%s\n", cache.status().to_string().c_str()); return 1; }
    const double raw = double(cache->n_tokens) * double(cache->shape.n_features()) * 4.0;
    std::string name = argv[fi];
    name = name.substr(name.find_last_of('/') + 1);
    const size_t n = size_t(cache->shape.n_kv_heads) * size_t(cache->n_tokens) * size_t(cache->shape.head_dim);
    std::vector<float> k(n), v(n);
    for (double ratio : ratios) {
      for (int rep = -1; rep < reps; ++rep) {  // rep -1: warm-up, not printed
        for (int codec : {2, 3}) {
          EncodeOptions o;
          o.target_ratio = ratio;
          o.codec = codec;
          o.measure_error = false;
          o.n_threads = threads;
          StageTimes te;
          auto enc = backend->encode(cal->data(), *cache, o, &te);
          if (!enc.is_ok()) { std::fprintf(stderr, "%s\n", enc.status().to_string().c_str()); return 1; }
          DecodeOptions d;
          d.n_threads = threads;
          StageTimes td;
          auto dec = backend->decode_coefficients(cal->data(), enc->bytes.data(), enc->bytes.size(), d, &td);
          if (!dec.is_ok()) { std::fprintf(stderr, "%s\n", dec.status().to_string().c_str()); return 1; }
          auto s0 = Clock::now();
          for (int l = 0; l < cache->shape.n_layers; ++l)
            (void)backend->restore_layer(cal->data(), *dec, l, k.data(), v.data(), threads, &td);
          td.total_s += std::chrono::duration<double>(Clock::now() - s0).count();
          if (rep < 0) continue;
          const double bytes = double(enc->bytes.size());
          for (int dir = 0; dir < 2; ++dir) {
            const StageTimes& t = dir == 0 ? te : td;
            std::printf("%s\t%g\t%d\t%d\t%s\t%.6f\t%.6f\t%.6f\t%.6f\t%.6f\t%.6f\t%.0f\t%.0f\t%.3f\n", name.c_str(), ratio, codec,
                        rep, dir == 0 ? "enc" : "dec", t.total_s, t.gather_s, t.transform_s, t.quantize_s, t.deflate_s,
                        t.exact_s, bytes, raw, raw / bytes);
          }
          std::fflush(stdout);
        }
      }
    }
  }
  return 0;
}
