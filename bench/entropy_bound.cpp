// How much could any lossless coder gain over kvtc's nominal size? DEFLATE gains only 1.04-1.07x
// (bench/RESULTS.md); the claim is that the MSE-optimal step per token and group leaves the stored
// symbols nearly uniform. This measures it: calibrate and compress test-prose and test-code exactly as
// quality_table.cpp does (at 8, 16, 20, 32, 64x), read every side and codes chunk back with the
// container parser and chunk codec, and compute over the compressed tokens (pooled over both files)
// the empirical entropy of the symbols actually stored:
// - order 0, one histogram per component (codes) and per side series; 16-bit values (fp16 groups,
//   side scales and shifts) both as 16-bit symbols and as two byte planes with a histogram each;
// - order 0, one histogram per group (fp16 groups: per group and plane), a coarser static model;
// - order 1, one conditional table per group: H(code[t][c] | code[t][c-1]) within the group, and
//   H(code[t][c] | code[t-1][c]); the first component of a group and the first token have a context
//   of their own. fp16 values and side series enter these totals at their order-0 byte-plane figures.
// Empirical entropies over one file are optimistic: the model (histogram, table) costs nothing, and
// with ~900 tokens per file a table per context over 2^w symbols overfits (order 1 above all). So
// each is paired with the adaptive code length of the same model (Krichevsky-Trofimov counts, what an
// arithmetic coder learning as it goes would pay, model cost included). And one achievable figure
// that suits independent chunks: the code length under order-0 histograms per component and side
// plane learned from the calibration files' own stored symbols (a model the calibration file could
// carry, so no container pays for it). Prints Markdown and JSON.
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <unordered_map>
#include <vector>

#include "bench_util.hpp"
#include "core/chunk_codec.hpp"
#include "entropy/deflate.hpp"
#include "format/container.hpp"

using namespace kvtc;

namespace {

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "entropy_bound: %s\n", what.c_str());
  std::exit(1);
}
void check(const Status& s) {
  if (!s.is_ok()) die(s.to_string());
}

// n * H of the sequence's empirical distribution, in bits: an ideal static code whose table is free.
double entropy_bits(std::vector<uint32_t> x) {
  std::sort(x.begin(), x.end());
  double bits = 0;
  for (size_t i = 0, j = 0; i < x.size(); i = j) {
    while (j < x.size() && x[j] == x[i]) ++j;
    bits -= double(j - i) * std::log2(double(j - i) / double(x.size()));
  }
  return bits;
}

// n * H(sym | ctx) = n * (H(ctx, sym) - H(ctx)), in bits. Symbols < 2^16.
double conditional_bits(const std::vector<uint32_t>& ctx, const std::vector<uint32_t>& sym) {
  std::vector<uint32_t> joint(sym.size());
  for (size_t i = 0; i < sym.size(); ++i) joint[i] = ctx[i] << 16 | sym[i];
  return entropy_bits(joint) - entropy_bits(ctx);
}

// Adaptive code length in bits: KT estimator, one table per context over `alphabet` symbols, coded in
// sequence order. Achievable by an arithmetic coder, model cost included.
double adaptive_bits(const std::vector<uint32_t>& ctx, const std::vector<uint32_t>& sym, uint32_t alphabet) {
  std::unordered_map<uint32_t, uint32_t> count, total;
  double bits = 0;
  for (size_t i = 0; i < sym.size(); ++i) {
    uint32_t& c = count[ctx[i] << 16 | sym[i]];
    uint32_t& t = total[ctx[i]];
    bits -= std::log2((c + 0.5) / (t + 0.5 * alphabet));
    ++c;
    ++t;
  }
  return bits;
}
double adaptive_bits(const std::vector<uint32_t>& sym, uint32_t alphabet) {
  return adaptive_bits(std::vector<uint32_t>(sym.size(), 0), sym, alphabet);
}

// What is measured, in bits, for each part of the stored data.
enum Measure {
  kNominal,   // bits in the allocation: width per code, 16 per fp16 value or side value
  kH0Sym16,   // order 0, per component / side series, 16-bit values as 16-bit symbols
  kH0Planes,  // the same, 16-bit values as two byte planes (codes of int groups: same as kH0Sym16)
  kH0Group,   // order 0, one histogram per group (byte planes for 16-bit values)
  kH1Comp,    // order 1 within a group, context: the token's code of the previous component
  kH1Token,   // order 1, context: the previous token's code of the same component
  kA0,        // adaptive (KT) order 0, per component / series (byte planes)
  kA0Group,   // adaptive order 0, per group
  kA1Comp,    // adaptive order 1, as kH1Comp
  kA1Token,   // adaptive order 1, as kH1Token
  kCalib,     // order 0 per component / side plane, histograms learned from the calibration files
  kMeasures
};
const char* const kMeasureNames[kMeasures] = {"nominal", "h0_component_16bit", "h0_component_planes", "h0_group",
                                              "h1_across_components", "h1_across_tokens", "adaptive_h0_component",
                                              "adaptive_h0_group", "adaptive_h1_across_components",
                                              "adaptive_h1_across_tokens", "calibrated_h0_component"};
using Bits = std::array<double, kMeasures>;

// Parts: codes of int and int-affine groups of width 1..8 (0..7), fp16 values (8), side series (9).
constexpr int kFp16Part = 8, kSidePart = 9, kParts = 10;
std::string part_name(int part) {
  return part == kFp16Part ? "fp16" : part == kSidePart ? "side" : "int w=" + std::to_string(part + 1);
}

// Static order-0 histograms, one per key (stream, series, byte plane), counted on the calibration
// files' stored symbols while `training`; afterwards, code lengths under them (KT-smoothed).
class CalibratedModel {
 public:
  bool training = true;
  static uint64_t key(int stream, uint64_t series, int plane) { return uint64_t(stream) << 40 | series << 1 | plane; }
  double code_bits(uint64_t key, const std::vector<uint32_t>& sym, uint32_t alphabet) {
    std::vector<double>& h = hist_[key];
    h.resize(alphabet, 0.0);
    double total = 0, bits = 0;
    for (double c : h) total += c;
    for (uint32_t x : sym) {
      if (training) h[x] += 1;
      else bits -= std::log2((h[x] + 0.5) / (total + 0.5 * alphabet));
    }
    return bits;
  }

 private:
  std::unordered_map<uint64_t, std::vector<double>> hist_;
};
constexpr uint64_t kSideSeries = 1u << 30;  // series ids: codes component j; side 2^30 + 2 group + (0 scale, 1 shift)

// One group's 16-bit series (the components of an fp16 group, or a group's scales and shifts), with
// their model series ids. With `pool`, the per-group measures use one histogram per plane over all
// series; else each series its own.
void tally_16bit(const std::vector<const uint16_t*>& series, const std::vector<uint64_t>& ids, int stream, int64_t m,
                 bool pool, CalibratedModel& model, Bits& b) {
  std::vector<uint32_t> lo_all, hi_all;
  double group_h = 0, group_a = 0;
  for (size_t i = 0; i < series.size(); ++i) {
    const uint16_t* s = series[i];
    std::vector<uint32_t> sym(s, s + m), lo(static_cast<size_t>(m)), hi(static_cast<size_t>(m));
    for (int64_t t = 0; t < m; ++t) lo[t] = s[t] & 0xffu, hi[t] = s[t] >> 8;
    b[kNominal] += 16.0 * double(m);
    b[kCalib] += model.code_bits(CalibratedModel::key(stream, ids[i], 0), lo, 256) +
                 model.code_bits(CalibratedModel::key(stream, ids[i], 1), hi, 256);
    if (model.training) continue;
    const double planes = entropy_bits(lo) + entropy_bits(hi);
    const double adaptive = adaptive_bits(lo, 256) + adaptive_bits(hi, 256);
    b[kH0Sym16] += entropy_bits(sym);
    b[kH0Planes] += planes;
    b[kA0] += adaptive;
    group_h += planes;
    group_a += adaptive;
    lo_all.insert(lo_all.end(), lo.begin(), lo.end());
    hi_all.insert(hi_all.end(), hi.begin(), hi.end());
  }
  if (model.training) return;
  if (pool) {
    group_h = entropy_bits(lo_all) + entropy_bits(hi_all);
    group_a = adaptive_bits(lo_all, 256) + adaptive_bits(hi_all, 256);
  }
  for (Measure k : {kH0Group, kH1Comp, kH1Token}) b[k] += group_h;
  for (Measure k : {kA0Group, kA1Comp, kA1Token}) b[k] += group_a;
}

// One int or int-affine group: codes[j][t] for its components j, m tokens.
void tally_int(const std::vector<std::vector<uint16_t>>& codes, const Group& g, int stream, int64_t m,
               CalibratedModel& model, Bits& b) {
  const uint32_t n_levels = 1u << g.width_bits, none = n_levels;  // `none`: the context of a first symbol
  std::vector<uint32_t> sym, ctx_comp, ctx_token;
  for (uint32_t j = g.first_component; j < g.first_component + g.n_components; ++j) {
    const std::vector<uint16_t>& x = codes[j];
    const std::vector<uint32_t> comp(x.begin(), x.end());
    b[kNominal] += double(g.width_bits) * double(m);
    b[kCalib] += model.code_bits(CalibratedModel::key(stream, j, 0), comp, n_levels);
    if (model.training) continue;
    const double h = entropy_bits(comp);
    b[kH0Sym16] += h;
    b[kH0Planes] += h;
    b[kA0] += adaptive_bits(comp, n_levels);
    for (int64_t t = 0; t < m; ++t) {
      sym.push_back(x[t]);
      ctx_comp.push_back(j == g.first_component ? none : codes[j - 1][t]);
      ctx_token.push_back(t == 0 ? none : x[t - 1]);
    }
  }
  if (model.training) return;
  b[kH0Group] += entropy_bits(sym);
  b[kH1Comp] += conditional_bits(ctx_comp, sym);
  b[kH1Token] += conditional_bits(ctx_token, sym);
  b[kA0Group] += adaptive_bits(sym, n_levels);
  b[kA1Comp] += adaptive_bits(ctx_comp, sym, n_levels);
  b[kA1Token] += adaptive_bits(ctx_token, sym, n_levels);
}

// The symbols one stream stores for the compressed tokens, as the chunk codec unpacks them.
struct StreamSymbols {
  std::vector<std::vector<uint16_t>> codes;  // [component][token]; fp16 groups: the bit patterns
  std::vector<std::vector<uint16_t>> side;   // [group]: m scales, then m shifts (int-affine)
};

struct Tally {
  std::array<Bits, kParts> part{};
  double tokens = 0, nominal_bytes = 0, stored_bytes = 0, stored_side = 0, stored_codes = 0;
  Bits total(int first = 0, int last = kParts) const {
    Bits t{};
    for (int p = first; p < last; ++p)
      for (int k = 0; k < kMeasures; ++k) t[k] += part[p][k];
    return t;
  }
};

// Parses one container, inflates its side and codes chunks, unpacks their symbols and adds their
// entropies to `tally` (while the model trains: only its counts and the nominal size). Checks that
// nominal and stored bytes agree with the encoder's report.
void tally_container(const EncodedCache& enc, CalibratedModel& model, Tally& tally) {
  auto parsed = parse_container(enc.bytes.data(), enc.bytes.size());
  check(parsed.status());
  const ContainerHeader& h = parsed->header;
  const uint8_t* payload = enc.bytes.data() + parsed->payload_offset;
  const int64_t m = int64_t(h.n_compressed_tokens());
  StreamSymbols sym[2];
  for (int s = 0; s < 2; ++s) {
    const StreamAllocation& a = h.streams[s];
    sym[s].codes.assign(a.n_kept(), std::vector<uint16_t>(size_t(m)));
    for (const Group& g : a.groups) sym[s].side.emplace_back(size_t(side_bits_per_token(g.kind) / 16 * m));
  }
  double stored_side = 0, stored_codes = 0;
  std::vector<uint8_t> raw;
  for (const ChunkEntry& c : h.chunks) {
    if (c.kind == ChunkKind::kExact) continue;
    const StreamAllocation& a = h.streams[c.stream];
    StreamSymbols& out = sym[c.stream];
    raw.resize(c.raw_bytes);
    check(inflate_raw(payload + c.offset, c.stored_bytes, raw.data(), raw.size()));
    BlockSymbols blk;
    blk.n_tokens = c.n_tokens;
    const int64_t n = c.n_tokens, t0 = int64_t(c.token_begin) - h.n_head_exact;
    if (c.kind == ChunkKind::kSide) {
      check(unpack_side(a, raw.data(), raw.size(), blk));
      for (size_t g = 0; g < a.groups.size(); ++g)  // blk.side[g]: n scales, then n shifts
        for (size_t i = 0; i < blk.side[g].size(); ++i) out.side[g][(i / n) * m + t0 + i % n] = blk.side[g][i];
      stored_side += c.stored_bytes;
    } else {
      check(unpack_codes(a, raw.data(), raw.size(), c.item_begin, c.item_begin + c.n_items, c.layout, blk));
      for (uint32_t j = c.item_begin; j < c.item_begin + c.n_items; ++j)
        std::copy_n(blk.sym.begin() + j * n, n, out.codes[j].begin() + t0);
      stored_codes += c.stored_bytes;
    }
  }
  if (int64_t(stored_side + stored_codes) != enc.report.compressed_payload_bytes)
    die("stored chunk bytes disagree with the report");

  const Bits before = tally.total();
  for (int s = 0; s < 2; ++s)
    for (size_t gi = 0; gi < h.streams[s].groups.size(); ++gi) {
      const Group& g = h.streams[s].groups[gi];
      if (g.kind == GroupKind::kDropped) continue;
      if (g.kind == GroupKind::kFloat16) {
        std::vector<const uint16_t*> series;
        for (uint32_t j = g.first_component; j < g.first_component + g.n_components; ++j)
          series.push_back(sym[s].codes[j].data());
        std::vector<uint64_t> ids(series.size());
        for (size_t i = 0; i < ids.size(); ++i) ids[i] = g.first_component + i;
        tally_16bit(series, ids, s, m, true, model, tally.part[kFp16Part]);
      } else {
        tally_int(sym[s].codes, g, s, m, model, tally.part[g.width_bits - 1]);
        std::vector<const uint16_t*> series;
        std::vector<uint64_t> ids;
        for (size_t k = 0; k * m < sym[s].side[gi].size(); ++k) {
          series.push_back(sym[s].side[gi].data() + k * m);
          ids.push_back(kSideSeries + 2 * gi + k);
        }
        tally_16bit(series, ids, s, m, false, model, tally.part[kSidePart]);
      }
    }
  if (std::llround((tally.total()[kNominal] - before[kNominal]) / 8) != enc.report.nominal_payload_bytes)
    die("nominal bits disagree with the report");
  tally.tokens += double(m);
  tally.nominal_bytes += double(enc.report.nominal_payload_bytes);
  tally.stored_bytes += double(enc.report.compressed_payload_bytes);
  tally.stored_side += stored_side;
  tally.stored_codes += stored_codes;
}

}  // namespace

int main() {
  const auto t0 = std::chrono::steady_clock::now();
  const Calibration& cal = bench::real_calibration();
  const double calib_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::vector<const KVCache*> caches, calib_caches;
  for (const auto& f : bench::test_files()) caches.push_back(&bench::real_cache(f));
  for (const auto& f : bench::calibration_files()) calib_caches.push_back(&bench::real_cache(f));

  const std::vector<double> targets = {8, 16, 20, 32, 64};
  std::vector<Tally> tallies;
  for (double ratio : targets) {
    auto tally_encoded = [&](const KVCache& c, CalibratedModel& model, Tally& tally) {
      EncodeOptions o;  // defaults, as quality_table.cpp; the error report is not needed (same bytes)
      o.target_ratio = ratio;
      o.measure_error = false;
      auto enc = encode(cal, c, o);
      check(enc.status());
      tally_container(*enc, model, tally);
    };
    CalibratedModel model;  // trained on the calibration files compressed at this target
    Tally tally, unused;
    for (const KVCache* c : calib_caches) tally_encoded(*c, model, unused);
    model.training = false;
    for (const KVCache* c : caches) tally_encoded(*c, model, tally);
    tallies.push_back(tally);
  }

  // Gain of a bound: nominal bits over the bound's bits.
  auto gain = [](const Bits& b, Measure k) { return b[kNominal] / b[k]; };
  std::printf("calibration: %lld tokens, %.2f s. Pooled over test-prose and test-code, compressed tokens only.\n\n",
              static_cast<long long>(cal.n_calibration_tokens()), calib_s);

  std::printf(
      "| target | nominal B | stored B | DEFLATE gain | order-0 bound B (16-bit sym.) | gain | order-0 bound B "
      "(byte planes) | gain | per-group order-0 gain | adaptive order-0 gain | calibrated order-0 gain | DEFLATE's "
      "share of the order-0 saving |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (size_t i = 0; i < targets.size(); ++i) {
    const Tally& t = tallies[i];
    const Bits b = t.total();
    std::printf("| %gx | %.0f | %.0f | %.3fx | %.0f | %.3fx | %.0f | %.3fx | %.3fx | %.3fx | %.3fx | %.0f%% |\n",
                targets[i], t.nominal_bytes, t.stored_bytes, t.nominal_bytes / t.stored_bytes, b[kH0Sym16] / 8,
                gain(b, kH0Sym16), b[kH0Planes] / 8, gain(b, kH0Planes), gain(b, kH0Group), gain(b, kA0),
                gain(b, kCalib),
                100 * (t.nominal_bytes - t.stored_bytes) / (t.nominal_bytes - b[kH0Planes] / 8));
  }

  std::printf(
      "\nOrder-0 bounds: empirical per file, the histograms free (optimistic). Adaptive: KT counts per file, "
      "model cost included. Calibrated: histograms from the calibration files' stored symbols, no model cost per "
      "file. Share: (nominal - stored) / (nominal - order-0 bound, byte planes).\n");
  std::printf(
      "\nBy part, bits per compressed token (both streams). Side: per-token scales and shifts of int groups. "
      "16-bit sym./byte planes differ only for fp16 and side.\n\n"
      "| target | part | nominal | share | order-0 16-bit sym. | order-0 byte planes | order-0 per group | "
      "adaptive order-0 | calibrated order-0 | order-0 gain (planes) |\n|---|---|---|---|---|---|---|---|---|---|\n");
  for (size_t i = 0; i < targets.size(); ++i) {
    const Tally& t = tallies[i];
    const double all = t.total()[kNominal];
    for (int p = 0; p < kParts; ++p) {
      const Bits& b = t.part[p];
      if (b[kNominal] == 0) continue;
      std::printf("| %gx | %s | %.1f | %.1f%% | %.1f | %.1f | %.1f | %.1f | %.1f | %.3fx |\n", targets[i],
                  part_name(p).c_str(), b[kNominal] / t.tokens, 100 * b[kNominal] / all, b[kH0Sym16] / t.tokens,
                  b[kH0Planes] / t.tokens, b[kH0Group] / t.tokens, b[kA0] / t.tokens, b[kCalib] / t.tokens,
                  gain(b, kH0Planes));
    }
    std::printf("| %gx | side chunks, stored | %.1f | | | | | | | %.3fx (DEFLATE) |\n", targets[i],
                8 * t.stored_side / t.tokens, t.part[kSidePart][kNominal] / (8 * t.stored_side));
    std::printf("| %gx | codes chunks, stored | %.1f | | | | | | | %.3fx (DEFLATE) |\n", targets[i],
                8 * t.stored_codes / t.tokens, t.total(0, kSidePart)[kNominal] / (8 * t.stored_codes));
  }
  if (std::all_of(tallies.begin(), tallies.end(), [](const Tally& t) { return t.part[kFp16Part][kNominal] == 0; }))
    std::printf("\nNo fp16 groups in these allocations.\n");

  std::printf(
      "\nContexts, codes of int groups only (widths 1-8), bits per compressed token; one table per group. "
      "Change: against order 0 per group, static and adaptive.\n\n"
      "| target | nominal | order-0 per group | order-1 across comp. | order-1 across tokens | adaptive order-0 "
      "per group | adaptive order-1 across comp. | adaptive order-1 across tokens | change static (comp. / "
      "tokens) | change adaptive (comp. / tokens) |\n|---|---|---|---|---|---|---|---|---|---|\n");
  for (size_t i = 0; i < targets.size(); ++i) {
    const Tally& t = tallies[i];
    const Bits b = t.total(0, kFp16Part);
    auto pct = [&](Measure k, Measure base) { return 100 * (b[k] - b[base]) / b[base]; };
    std::printf("| %gx | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %+.1f%% / %+.1f%% | %+.1f%% / %+.1f%% |\n",
                targets[i], b[kNominal] / t.tokens, b[kH0Group] / t.tokens, b[kH1Comp] / t.tokens,
                b[kH1Token] / t.tokens, b[kA0Group] / t.tokens, b[kA1Comp] / t.tokens, b[kA1Token] / t.tokens,
                pct(kH1Comp, kH0Group), pct(kH1Token, kH0Group), pct(kA1Comp, kA0Group), pct(kA1Token, kA0Group));
  }

  nlohmann::json rows = nlohmann::json::array();
  for (size_t i = 0; i < targets.size(); ++i) {
    const Tally& t = tallies[i];
    auto bits_json = [](const Bits& b) {
      nlohmann::json j;
      for (int k = 0; k < kMeasures; ++k) j[kMeasureNames[k]] = b[k];
      return j;
    };
    nlohmann::json parts;
    for (int p = 0; p < kParts; ++p)
      if (t.part[p][kNominal] > 0) parts[part_name(p)] = bits_json(t.part[p]);
    const Bits b = t.total();
    rows.push_back({{"target_ratio", targets[i]}, {"compressed_tokens", t.tokens}, {"nominal_bytes", t.nominal_bytes},
                    {"stored_bytes", t.stored_bytes}, {"stored_side_bytes", t.stored_side},
                    {"stored_codes_bytes", t.stored_codes}, {"deflate_gain", t.nominal_bytes / t.stored_bytes},
                    {"gain_h0_component_16bit", gain(b, kH0Sym16)}, {"gain_h0_component_planes", gain(b, kH0Planes)},
                    {"gain_h0_group", gain(b, kH0Group)}, {"gain_h1_across_components", gain(b, kH1Comp)},
                    {"gain_h1_across_tokens", gain(b, kH1Token)}, {"gain_adaptive_h0_component", gain(b, kA0)},
                    {"gain_adaptive_h1_across_components", gain(b, kA1Comp)},
                    {"gain_adaptive_h1_across_tokens", gain(b, kA1Token)},
                    {"gain_calibrated_h0_component", gain(b, kCalib)}, {"total_bits", bits_json(b)},
                    {"parts_bits", parts}});
  }
  std::printf("\n%s\n", nlohmann::json({{"calibration_seconds", calib_s}, {"rows", rows}}).dump().c_str());
  return 0;
}
