// The rANS coder of codec v3 (src/entropy) on real quantised symbols, against DEFLATE (the current
// coder, libdeflate at the codec's level 6) and htscodecs' rans4x16 (CRAM's 32-way interleaved rANS,
// when built with it). For each target ratio: calibrate on the four calibration caches (as
// bench_util does), compress the calibration caches and learn one static table per series from the
// symbols they store (codes: one per stream and component, alphabet 2^w; side scales and shifts: one
// per stream, group, series and byte plane, alphabet 256), then compress test-prose and test-code and
// code every side and codes chunk's symbols again:
// - DEFLATE: the container's stored chunk bytes (what kvtc stores today, the better of the aligned
//   and dense layouts);
// - rANS: the chunk's symbols (one byte per symbol, runs in component order) coded with the static
//   tables, split at run boundaries into rANS chunks of <= 65536 symbols, lane header included;
// - htscodecs rans4x16 order 0 with 32-way interleaving (RANS_ORDER_X32), one block per container
//   chunk: its frequency table travels in every block;
// - entropy: the symbols' cost under the static tables (an ideal coder with the same model), and the
//   empirical order-0 entropy per series pooled over the test caches (the model free).
// Then single-threaded decode speed over all chunks of a ratio: inflate (libdeflate), the fast rANS
// decoder (AVX2 rounds where the CPU has them), the reference rANS decoder, htscodecs' decoder, each
// its fastest pass, the decoders taking turns. Prints Markdown.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "bench_util.hpp"
#include "core/chunk_codec.hpp"
#include "entropy/deflate.hpp"
#include "entropy/rans_decode.hpp"
#include "entropy/rans_decode_avx2.hpp"
#include "entropy/rans_encode.hpp"
#include "entropy/rans_reference.hpp"
#include "entropy/rans_table.hpp"
#include "format/container.hpp"

#if KVTC_BENCH_HTSCODECS
#include <htscodecs/rANS_static4x16.h>
#endif

using namespace kvtc;

namespace {

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "bench_rans: %s\n", what.c_str());
  std::exit(1);
}
void check(const Status& s) {
  if (!s.is_ok()) die(s.to_string());
}

struct Run {
  uint32_t n_symbols;
  uint64_t key;  // the series whose table codes it
};

// One side or codes chunk of a container: its DEFLATE stream and the symbols it holds.
struct ChunkSymbols {
  bool side = false;
  std::vector<uint8_t> stored;  // the raw DEFLATE stream
  uint32_t raw_bytes = 0;
  std::vector<uint8_t> symbols;
  std::vector<Run> runs;
};

// Series keys: codes of component j of stream s, plane p (0: the code, or an fp16 value's low byte;
// 1: an fp16 value's high byte); side series k (0 scales, 1 shifts) of group g, plane p.
uint64_t codes_key(int s, uint32_t j, int p) { return uint64_t(s) << 40 | uint64_t(j) << 2 | uint64_t(p); }
uint64_t side_key(int s, size_t g, size_t k, int p) {
  return uint64_t(1) << 39 | uint64_t(s) << 40 | uint64_t(g) << 4 | uint64_t(k) << 1 | uint64_t(p);
}

std::vector<ChunkSymbols> extract(const EncodedCache& enc, std::map<uint64_t, int>& alphabet) {
  auto parsed = parse_container(enc.bytes.data(), enc.bytes.size());
  check(parsed.status());
  const ContainerHeader& h = parsed->header;
  const uint8_t* payload = enc.bytes.data() + parsed->payload_offset;
  std::vector<ChunkSymbols> out;
  std::vector<uint8_t> raw;
  for (const ChunkEntry& c : h.chunks) {
    if (c.kind == ChunkKind::kExact) continue;
    const StreamAllocation& a = h.streams[c.stream];
    ChunkSymbols cs;
    cs.side = c.kind == ChunkKind::kSide;
    cs.stored.assign(payload + c.offset, payload + c.offset + c.stored_bytes);
    cs.raw_bytes = c.raw_bytes;
    raw.resize(c.raw_bytes);
    check(inflate_raw(cs.stored.data(), cs.stored.size(), raw.data(), raw.size()));
    const uint32_t n = c.n_tokens;
    if (cs.side) {  // raw: low bytes of all values, then high bytes; values group by group, n per series
      cs.symbols = raw;
      for (int p = 0; p < 2; ++p)
        for (size_t g = 0; g < a.groups.size(); ++g)
          for (int k = 0; k < side_bits_per_token(a.groups[g].kind) / 16; ++k) {
            cs.runs.push_back({n, side_key(c.stream, g, size_t(k), p)});
            alphabet[cs.runs.back().key] = 256;
          }
    } else {
      BlockSymbols blk;
      blk.n_tokens = n;
      check(unpack_codes(a, raw.data(), raw.size(), c.item_begin, c.item_begin + c.n_items, c.layout, blk));
      for (const Group& g : a.groups)
        for (uint32_t j = std::max(g.first_component, c.item_begin);
             j < std::min(g.first_component + g.n_components, c.item_begin + c.n_items); ++j) {
          const uint16_t* s = blk.sym.data() + size_t(j) * n;
          if (g.kind == GroupKind::kDropped) continue;
          const int planes = g.kind == GroupKind::kFloat16 ? 2 : 1;
          for (int p = 0; p < planes; ++p) {
            for (uint32_t i = 0; i < n; ++i) cs.symbols.push_back(uint8_t(s[i] >> (8 * p)));
            cs.runs.push_back({n, codes_key(c.stream, j, p)});
            alphabet[cs.runs.back().key] = planes == 2 ? 256 : 1 << g.width_bits;
          }
        }
    }
    out.push_back(std::move(cs));
  }
  return out;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Seconds per pass of each decoder: the passes take turns (one of each per round, so that all see
// the same load on a shared machine) until min_s have gone by, and each keeps its fastest pass.
std::vector<double> best_pass_seconds(const std::vector<std::function<void()>>& passes, double min_s) {
  std::vector<double> best(passes.size(), 1e30);
  for (const auto& pass : passes) pass();  // warm
  const auto t0 = std::chrono::steady_clock::now();
  do {
    for (size_t k = 0; k < passes.size(); ++k) {
      const auto t = std::chrono::steady_clock::now();
      passes[k]();
      best[k] = std::min(best[k], seconds_since(t));
    }
  } while (seconds_since(t0) < min_s);
  return best;
}

struct Sizes {
  double symbols = 0, raw = 0, deflate = 0, rans8 = 0, rans32 = 0, hts = 0, static_bits = 0;
};

}  // namespace

int main(int argc, char** argv) {
  const int prob_bits = argc > 1 ? std::atoi(argv[1]) : kRansDefaultProbBits;
  const double min_s = 4.0;
  const auto t_cal = std::chrono::steady_clock::now();
  const Calibration& cal = bench::real_calibration();
  std::printf("calibration: %.1f s; prob_bits %d; decode times single-threaded, fastest pass of each decoder, passes taking turns for %.0f s\n\n",
              seconds_since(t_cal), prob_bits, min_s);
#if KVTC_BENCH_HTSCODECS
  const bool have_hts = true;
#else
  const bool have_hts = false;
#endif

  std::printf(
      "| target | part | symbols | nominal B | DEFLATE B | rANS N=32 B | rANS N=8 B | htscodecs 4x16 X32 B | "
      "static-table cost B | empirical H0 B | tables B |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
  std::vector<std::string> speed_rows;
  for (double ratio : {8.0, 16.0, 32.0, 64.0}) {
    EncodeOptions o;
    o.target_ratio = ratio;
    o.measure_error = false;
    std::map<uint64_t, int> alphabet;
    std::map<uint64_t, std::vector<uint64_t>> hist;
    for (const std::string& f : bench::calibration_files()) {
      auto enc = encode(cal, bench::real_cache(f), o);
      check(enc.status());
      for (const ChunkSymbols& cs : extract(*enc, alphabet)) {
        size_t i = 0;
        for (const Run& r : cs.runs) {
          std::vector<uint64_t>& h = hist[r.key];
          h.resize(size_t(alphabet[r.key]), 0);
          for (uint32_t k = 0; k < r.n_symbols; ++k) ++h[cs.symbols[i++]];
        }
      }
    }
    std::vector<ChunkSymbols> test;
    for (const std::string& f : bench::test_files()) {
      auto enc = encode(cal, bench::real_cache(f), o);
      check(enc.status());
      auto chunks = extract(*enc, alphabet);
      test.insert(test.end(), std::make_move_iterator(chunks.begin()), std::make_move_iterator(chunks.end()));
    }
    // Tables (covering their alphabets: a symbol unseen at calibration may occur later).
    std::map<uint64_t, RansTable> tables;
    std::map<uint64_t, RansDecodeTable> dtables;
    double table_bytes[2] = {0, 0};
    for (const auto& [key, a] : alphabet) {
      std::vector<uint64_t> h = hist.count(key) ? hist[key] : std::vector<uint64_t>(size_t(a), 0);
      auto t = build_rans_table(h, prob_bits, true);
      check(t.status());
      std::vector<uint8_t> ser;
      serialize_rans_table(*t, ser);
      table_bytes[(key >> 39) & 1] += double(ser.size());
      auto d = RansDecodeTable::build(*t);
      check(d.status());
      tables.emplace(key, std::move(t).value());
      dtables.emplace(key, std::move(d).value());
    }

    // Code every chunk; rANS chunks split at run boundaries to <= 65536 symbols.
    struct RansPiece {
      std::vector<uint8_t> bytes;
      const uint8_t* symbols;
      size_t n;
      std::vector<RansRun> runs;
      std::vector<RansDecodeRun> druns;
    };
    std::vector<RansPiece> pieces32;
    std::vector<std::vector<uint8_t>> hts_blocks;
    Sizes sz[2];
    std::map<uint64_t, std::vector<uint64_t>> test_hist;
    for (const ChunkSymbols& cs : test) {
      Sizes& s = sz[cs.side ? 1 : 0];
      s.symbols += double(cs.symbols.size());
      s.raw += cs.raw_bytes;
      s.deflate += double(cs.stored.size());
      size_t i = 0, begin = 0;
      RansPiece piece{{}, cs.symbols.data(), 0, {}, {}};
      auto flush = [&]() {
        if (piece.n == 0) return;
        for (int lanes : {8, 32}) {
          check(rans_encode(piece.symbols, piece.n, piece.runs.data(), piece.runs.size(), lanes, piece.bytes));
          (lanes == 8 ? s.rans8 : s.rans32) += double(piece.bytes.size());
        }
        pieces32.push_back(piece);
        piece = RansPiece{{}, cs.symbols.data() + begin, 0, {}, {}};
      };
      for (const Run& r : cs.runs) {
        if (piece.n + r.n_symbols > kRansMaxChunkSymbols) flush();
        piece.runs.push_back({r.n_symbols, &tables.at(r.key)});
        piece.druns.push_back({r.n_symbols, &dtables.at(r.key)});
        piece.n += r.n_symbols;
        s.static_bits += rans_table_cost_bits(tables.at(r.key), cs.symbols.data() + i, r.n_symbols);
        std::vector<uint64_t>& th = test_hist[r.key];
        th.resize(256, 0);
        for (uint32_t k = 0; k < r.n_symbols; ++k) ++th[cs.symbols[i + k]];
        i += r.n_symbols;
        begin = i;
      }
      flush();
#if KVTC_BENCH_HTSCODECS
      unsigned int out_size = 0;
      unsigned char* block = rans_compress_4x16(const_cast<unsigned char*>(cs.symbols.data()),
                                                unsigned(cs.symbols.size()), &out_size, RANS_ORDER_X32);
      if (block == nullptr) die("rans_compress_4x16 failed");
      hts_blocks.emplace_back(block, block + out_size);
      std::free(block);
      s.hts += out_size;
#endif
    }
    double h0_bytes[2] = {0, 0};
    for (const auto& [key, h] : test_hist) {
      double n = 0, bits = 0;
      for (uint64_t c : h) n += double(c);
      for (uint64_t c : h)
        if (c > 0) bits -= double(c) * std::log2(double(c) / n);
      h0_bytes[(key >> 39) & 1] += bits / 8;
    }
    for (int part = 0; part < 3; ++part) {
      Sizes s = part < 2 ? sz[part] : Sizes{};
      double h0 = part < 2 ? h0_bytes[part] : h0_bytes[0] + h0_bytes[1];
      double tb = part < 2 ? table_bytes[part] : table_bytes[0] + table_bytes[1];
      if (part == 2)
        for (const Sizes& p : sz) {
          s.symbols += p.symbols, s.raw += p.raw, s.deflate += p.deflate, s.rans8 += p.rans8;
          s.rans32 += p.rans32, s.hts += p.hts, s.static_bits += p.static_bits;
        }
      const char* name = part == 0 ? "codes" : part == 1 ? "side" : "**all**";
      char hts_cell[64] = "n/a";
      if (have_hts) std::snprintf(hts_cell, sizeof hts_cell, "%.0f (%+.1f%%)", s.hts, 100 * (s.hts / s.deflate - 1));
      std::printf("| %gx | %s | %.0f | %.0f | %.0f | %.0f (%+.1f%%) | %.0f (%+.1f%%) | %s | %.0f | %.0f | %.0f |\n",
                  ratio, name, s.symbols, s.raw, s.deflate, s.rans32, 100 * (s.rans32 / s.deflate - 1), s.rans8,
                  100 * (s.rans8 / s.deflate - 1), hts_cell, s.static_bits / 8, h0, tb);
    }

    // Decode speed, one thread, over every chunk of this ratio.
    double n_sym = sz[0].symbols + sz[1].symbols, n_raw = sz[0].raw + sz[1].raw;
    std::vector<uint8_t> out(kRansMaxChunkSymbols + 16 * 1024 * 8);
    std::vector<std::function<void()>> passes = {
        [&] {
          for (const ChunkSymbols& cs : test) check(inflate_raw(cs.stored.data(), cs.stored.size(), out.data(), cs.raw_bytes));
        },
        [&] {
          for (const RansPiece& p : pieces32)
            check(rans_decode(p.bytes.data(), p.bytes.size(), p.druns.data(), p.druns.size(), out.data(), p.n));
        },
        [&] {
          rans_enable_avx2(false);
          for (const RansPiece& p : pieces32)
            check(rans_decode(p.bytes.data(), p.bytes.size(), p.druns.data(), p.druns.size(), out.data(), p.n));
          rans_enable_avx2(true);
        },
        [&] {
          for (const RansPiece& p : pieces32)
            check(rans_decode_reference(p.bytes.data(), p.bytes.size(), p.runs.data(), p.runs.size(), out.data(), p.n));
        }};
#if KVTC_BENCH_HTSCODECS
    passes.push_back([&] {
      for (size_t k = 0; k < hts_blocks.size(); ++k) {
        unsigned int out_size = unsigned(out.size());
        if (!rans_uncompress_to_4x16(hts_blocks[k].data(), unsigned(hts_blocks[k].size()), out.data(), &out_size) ||
            out_size != test[k].symbols.size())
          die("rans_uncompress_to_4x16 failed");
      }
    });
#endif
    const std::vector<double> best = best_pass_seconds(passes, min_s);
    const double t_inflate = best[0], t_rans = best[1], t_scalar = best[2], t_ref = best[3];
    const double t_hts = have_hts ? best[4] : 0;
    for (const RansPiece& p : pieces32) {  // the fast decoder gives back the symbols
      check(rans_decode(p.bytes.data(), p.bytes.size(), p.druns.data(), p.druns.size(), out.data(), p.n));
      if (!std::equal(out.begin(), out.begin() + long(p.n), p.symbols)) die("rANS round trip failed");
    }
    char row[512];
    auto fmt = [&](const char* name, double t, double out_bytes) {
      std::snprintf(row, sizeof row, "| %gx | %s | %.0f | %.0f | %.1f |", ratio, name, out_bytes / t / 1e6,
                    n_sym / t / 1e6, t * 1e3);
      speed_rows.push_back(row);
    };
    fmt("DEFLATE (inflate to packed raw bytes)", t_inflate, n_raw);
    fmt(rans_have_avx2() ? "rANS N=32, fast decoder (AVX2 rounds)" : "rANS N=32, fast decoder (no AVX2 here)", t_rans,
        n_sym);
    fmt("rANS N=32, fast decoder, scalar", t_scalar, n_sym);
    fmt("rANS N=32, reference decoder", t_ref, n_sym);
    if (have_hts) fmt("htscodecs rans4x16 order 0 X32", t_hts, n_sym);
  }
  std::printf(
      "\n| target | decoder | output MB/s | Msymbols/s | ms per pass |\n|---|---|---|---|---|\n");
  for (const std::string& r : speed_rows) std::printf("%s\n", r.c_str());
  return 0;
}
