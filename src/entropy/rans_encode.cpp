// Encoding runs backwards over the symbols (rANS is last in, first out), so that the decoder reads
// symbols and words forwards. Symbol i goes to lane i mod N; before coding symbol s with frequency f a
// lane whose state x would leave [L, 2^32) emits its low 16 bits (x >= f << (32 - prob_bits)): one
// word at most per symbol, because x < 2^32 and f << (32 - prob_bits) >= 2^16 for prob_bits <= 16.
// Words are pushed in coding order and reversed at the end, which is the order the decoder consumes
// them (docs/DESIGN.md, "rANS coder").
#include "entropy/rans_encode.hpp"

#include <algorithm>
#include <cstring>
#include <string>

#include "util/bytes.hpp"

namespace kvtc {

Status rans_encode(const uint8_t* symbols, size_t n_symbols, const RansRun* runs, size_t n_runs, int n_lanes,
                   std::vector<uint8_t>& out) {
  out.clear();
  if (n_lanes < 1 || n_lanes > kRansMaxLanes)
    return invalid_argument("rANS encode: " + std::to_string(n_lanes) + " lanes (1..64)");
  if (n_symbols > kRansMaxChunkSymbols)
    return invalid_argument("rANS encode: " + std::to_string(n_symbols) + " symbols exceed the chunk bound " +
                            std::to_string(kRansMaxChunkSymbols));
  size_t covered = 0;
  for (size_t r = 0; r < n_runs; ++r) {
    if (runs[r].table == nullptr) return invalid_argument("rANS encode: run " + std::to_string(r) + " has no table");
    Status s = validate_rans_table(*runs[r].table);
    if (!s.is_ok()) return invalid_argument(s.message());
    covered += runs[r].n_symbols;
  }
  if (covered != n_symbols)
    return invalid_argument("rANS encode: runs cover " + std::to_string(covered) + " symbols, not " +
                            std::to_string(n_symbols));

  uint32_t state[kRansMaxLanes];
  std::fill_n(state, n_lanes, kRansStateLow);
  std::vector<uint16_t> words;
  words.reserve(n_symbols / 2 + 16);
  size_t i = n_symbols;  // symbols [i, n_symbols) are coded
  for (size_t r = n_runs; r-- > 0;) {
    const RansTable& t = *runs[r].table;
    const int pb = t.prob_bits;
    const size_t run_begin = i - runs[r].n_symbols;
    while (i > run_begin) {
      --i;
      const uint8_t s = symbols[i];
      if (s >= t.freq.size() || t.freq[s] == 0)
        return invalid_argument("rANS encode: symbol " + std::to_string(s) + " at " + std::to_string(i) +
                                " has frequency 0 in its table");
      const uint32_t f = t.freq[s];
      uint32_t& x = state[i % size_t(n_lanes)];
      if (uint64_t(x) >= uint64_t(f) << (32 - pb)) {
        words.push_back(uint16_t(x & 0xffffu));
        x >>= kRansWordBits;
      }
      x = ((x / f) << pb) + (x % f) + t.cum[s];
    }
  }

  ByteWriter w(out);
  w.u32(uint32_t(n_symbols));
  w.u8(uint8_t(n_lanes));
  w.u8(0);
  w.u16(0);
  w.u32(uint32_t(words.size() * 2));
  for (int l = 0; l < n_lanes; ++l) w.u32(state[l]);
  std::reverse(words.begin(), words.end());
  w.bytes(words.data(), words.size() * 2);
  return Status::ok();
}

Status rans_encode(const uint8_t* symbols, size_t n_symbols, const RansTable& table, int n_lanes,
                   std::vector<uint8_t>& out) {
  const RansRun run{uint32_t(std::min<size_t>(n_symbols, UINT32_MAX)), &table};
  return rans_encode(symbols, n_symbols, &run, 1, n_lanes, out);
}

}  // namespace kvtc
