// Writes the seed corpora: containers made with the fuzz calibration at several ratios and chunk
// sizes, calibration files, and rANS tables each followed by a chunk coded with it.
// Run: make_seeds OUT_DIR  (OUT_DIR/container, OUT_DIR/calibration, OUT_DIR/rans)
#include <cstdio>
#include <filesystem>

#include "core/calibration_data.hpp"
#include "entropy/rans_encode.hpp"
#include "format/calibration_file.hpp"
#include "fuzz_common.hpp"

namespace {

// The model with only a coarse level and the last one, and the cells they use: a valid model a few KB
// long instead of hundreds (a fuzzer mutates a small seed far more usefully).
kvtc::EcsqModel trimmed(const kvtc::EcsqModel& m) {
  kvtc::EcsqModel t;
  t.prob_bits = m.prob_bits;
  t.cells.resize(m.cells.size());
  const size_t n = m.levels.size();
  for (size_t l : {n > 33 ? n - 33 : 0, n - 1}) {
    kvtc::EcsqLevel lv = m.levels[l];
    for (size_t j = 0; j < lv.cell.size(); ++j) {
      if (lv.cell[j] == 0) continue;
      t.cells[j].push_back(m.cells[j][lv.cell[j] - 1u]);
      lv.cell[j] = uint8_t(t.cells[j].size());
    }
    t.levels.push_back(std::move(lv));
  }
  return t;
}

// rANS seeds: a table (counts, prob_bits) and a chunk of n symbols drawn from a fixed recurrence.
bool write_rans_seeds(const std::filesystem::path& dir) {
  using namespace kvtc;
  struct Seed {
    std::vector<uint64_t> counts;
    int prob_bits, lanes;
    size_t n;
  };
  const std::vector<Seed> seeds = {{{400, 200, 100, 50, 25, 12, 6, 3, 1, 1, 1, 1, 1, 1, 1, 1}, 12, 8, 300},
                                   {std::vector<uint64_t>(256, 1), 15, 32, 100},
                                   {{0, 0, 7}, 4, 4, 50},
                                   {{3, 1}, 12, 32, 0},
                                   {{1, 2, 3, 4, 5, 6, 7, 8}, 8, 1, 40}};
  int i = 0;
  for (const Seed& s : seeds) {
    auto t = build_rans_table(s.counts, s.prob_bits, false);
    if (!t.is_ok()) return false;
    std::vector<uint8_t> symbols(s.n), bytes, chunk;
    uint32_t state = 12345;
    for (size_t k = 0; k < s.n; ++k) {  // symbols with freq > 0, in proportion to nothing in particular
      state = state * 1103515245u + 12345u;
      uint32_t slot = (state >> 8) % t->total();
      size_t sym = 0;
      while (t->cum[sym + 1] <= slot) ++sym;
      symbols[k] = uint8_t(sym);
    }
    serialize_rans_table(*t, bytes);
    if (!rans_encode(symbols.data(), symbols.size(), *t, s.lanes, chunk).is_ok()) return false;
    bytes.insert(bytes.end(), chunk.begin(), chunk.end());
    if (!write_bytes_atomic((dir / ("seed-" + std::to_string(i++) + ".bin")).string(), bytes).is_ok()) return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace kvtc;
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_seeds OUT_DIR\n");
    return 2;
  }
  const std::filesystem::path out(argv[1]);
  std::filesystem::create_directories(out / "container");
  std::filesystem::create_directories(out / "calibration");
  std::filesystem::create_directories(out / "rans");
  if (!write_rans_seeds(out / "rans")) return 1;
  const Calibration& cal = fuzz::fuzz_calibration();
  int i = 0;
  for (double ratio : {8.0, 20.0, 40.0})
    for (int tokens : {140, 200}) {
      EncodeOptions o;
      o.target_ratio = ratio;
      o.chunk_tokens = 32;
      o.chunk_max_bytes = 256;
      o.measure_error = false;
      auto enc = encode(cal, fuzz::fuzz_cache(tokens, uint64_t(100 + i)), o);
      if (!enc.is_ok()) return 1;
      if (!write_bytes_atomic((out / "container" / ("seed-" + std::to_string(i++) + ".kvtc")).string(), enc->bytes).is_ok()) return 1;
    }
  // Codec 3 (format 3) seeds, small so that mutations reach the rANS chunks often: ECSQ levels from fine
  // to coarse, 4 and 32 rANS lanes, a block with no exact tokens, and one token made huge so that
  // escapes and bucket bits occur (docs/FORMAT.md section 9).
  int v3 = 0;
  for (double ratio : {4.0, 16.0, 64.0})
    for (bool block : {false, true}) {
      if (block && ratio != 16.0) continue;
      KVCache cache = fuzz::fuzz_cache(40, uint64_t(200 + v3));
      if (ratio == 4.0)
        for (int l = 0; l < cache.shape.n_layers; ++l)
          for (int h = 0; h < cache.shape.n_kv_heads; ++h)
            for (int d = 0; d < cache.shape.head_dim; ++d) cache.k_row(l, h, 20)[d] *= 512.0f;
      EncodeOptions o;
      o.codec = 3;
      o.target_ratio = ratio;
      o.chunk_tokens = 16;
      o.rans_lanes = ratio == 64.0 ? 32 : 4;
      o.exact_head_tokens = block ? 0 : 2;
      o.exact_tail_tokens = block ? 0 : 2;
      o.measure_error = false;
      if (block) cache.position_offset = 64;
      auto enc = encode(cal, cache, o);
      if (!enc.is_ok()) {
        std::fprintf(stderr, "codec 3 seed: %s\n", enc.status().to_string().c_str());
        return 1;
      }
      if (!write_bytes_atomic((out / "container" / ("seed-v3-" + std::to_string(v3++) + ".kvtc")).string(), enc->bytes).is_ok())
        return 1;
    }
  // Format 4 seeds (token classes, docs/FORMAT.md section 10): a quarter and a half of the compressed
  // tokens favoured, by an importance that rises and falls along the sequence.
  int v4 = 0;
  for (double fraction : {0.25, 0.5}) {
    KVCache cache = fuzz::fuzz_cache(40, uint64_t(300 + v4));
    EncodeOptions o;
    o.codec = 3;
    o.target_ratio = fraction == 0.25 ? 16.0 : 32.0;
    o.chunk_tokens = 16;
    o.rans_lanes = 4;
    o.exact_head_tokens = 2;
    o.exact_tail_tokens = 2;
    o.measure_error = false;
    o.high_rate_fraction = fraction;
    o.high_rate_levels = fraction == 0.25 ? 32 : 8;
    for (int64_t t = 0; t < cache.n_tokens; ++t) o.token_importance.push_back(float((t * 7) % 11));
    auto enc = encode(cal, cache, o);
    if (!enc.is_ok()) {
      std::fprintf(stderr, "format 4 seed: %s\n", enc.status().to_string().c_str());
      return 1;
    }
    if (!write_bytes_atomic((out / "container" / ("seed-v4-" + std::to_string(v4++) + ".kvtc")).string(), enc->bytes).is_ok())
      return 1;
  }
  // Calibration seeds: version 2 with the ECSQ sections (seed-1, models trimmed to two levels), and the
  // same calibration as version 1 wrote it (seed-0): without them, version byte 1.
  auto bytes = cal.serialize();
  if (!bytes.is_ok()) return 1;
  auto data = parse_calibration(bytes->data(), bytes->size());
  if (!data.is_ok()) return 1;
  data->key.ecsq = trimmed(data->key.ecsq);
  data->value.ecsq = trimmed(data->value.ecsq);
  auto v2 = serialize_calibration(*data);
  if (!v2.is_ok() || !write_bytes_atomic((out / "calibration" / "seed-1.kvtcal").string(), *v2).is_ok()) return 1;
  data->key.ecsq = {};
  data->value.ecsq = {};
  auto v1 = serialize_calibration(*data);
  if (!v1.is_ok()) return 1;
  (*v1)[8] = 1;
  if (!write_bytes_atomic((out / "calibration" / "seed-0.kvtcal").string(), *v1).is_ok()) return 1;
  std::printf("wrote %d codec 2, %d codec 3 and %d format 4 container seeds, 2 calibration seeds and 5 rANS seeds to %s\n", i, v3, v4,
              argv[1]);
  return 0;
}
