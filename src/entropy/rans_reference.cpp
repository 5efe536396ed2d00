// Written from docs/FORMAT.md ("rANS chunk (format v3 draft)") and nothing else: little-endian fields
// assembled byte by byte, every condition of the spec checked in the order the spec gives it.
#include "entropy/rans_reference.hpp"

#include <string>
#include <vector>

namespace kvtc {
namespace {

uint32_t read_le(const uint8_t* p, int n_bytes) {
  uint32_t v = 0;
  for (int b = n_bytes - 1; b >= 0; --b) v = v << 8 | p[b];
  return v;
}

}  // namespace

Status rans_decode_reference(const uint8_t* chunk, size_t chunk_bytes, const RansRun* runs, size_t n_runs,
                             uint8_t* out, size_t n_symbols) {
  // The table of each symbol, from the runs.
  std::vector<const RansTable*> table_of;
  for (size_t r = 0; r < n_runs; ++r) {
    if (runs[r].table == nullptr) return invalid_argument("rANS reference: run without a table");
    Status s = validate_rans_table(*runs[r].table);
    if (!s.is_ok()) return invalid_argument(s.message());
    if (table_of.size() + runs[r].n_symbols > n_symbols) return invalid_argument("rANS reference: runs too long");
    table_of.insert(table_of.end(), runs[r].n_symbols, runs[r].table);
  }
  if (table_of.size() != n_symbols) return invalid_argument("rANS reference: runs do not cover the symbols");

  // Header: n_symbols u32, n_lanes u8, three reserved zero bytes, stream_bytes u32, N lane states.
  if (chunk_bytes < 12) return corrupt("rANS reference: header truncated");
  const uint32_t declared_symbols = read_le(chunk, 4);
  const uint32_t n_lanes = chunk[4];
  const uint32_t stream_bytes = read_le(chunk + 8, 4);
  if (chunk[5] != 0 || read_le(chunk + 6, 2) != 0) return corrupt("rANS reference: reserved bytes");
  if (declared_symbols > 65536) return corrupt("rANS reference: too many symbols");
  if (n_lanes < 1 || n_lanes > 64) return corrupt("rANS reference: lane count");
  if (stream_bytes % 2 != 0 || stream_bytes > 2 * uint64_t(declared_symbols))
    return corrupt("rANS reference: stream length");
  if (uint64_t(chunk_bytes) != 12 + 4 * uint64_t(n_lanes) + stream_bytes) return corrupt("rANS reference: chunk length");
  if (declared_symbols != n_symbols) return corrupt("rANS reference: symbol count");
  std::vector<uint64_t> x(n_lanes);
  for (uint32_t l = 0; l < n_lanes; ++l) {
    x[l] = read_le(chunk + 12 + 4 * l, 4);
    if (x[l] < 65536) return corrupt("rANS reference: lane state below 2^16");
  }
  const uint8_t* stream = chunk + 12 + 4 * size_t(n_lanes);
  size_t next = 0;  // byte offset of the next word

  for (size_t i = 0; i < n_symbols; ++i) {
    const RansTable& t = *table_of[i];
    uint64_t& s_x = x[i % n_lanes];
    const uint64_t m = uint64_t(1) << t.prob_bits;
    const uint64_t slot = s_x % m;
    // The symbol whose cumulative range holds the slot.
    size_t s = 0;
    while (!(t.cum[s] <= slot && slot < t.cum[s] + t.freq[s])) ++s;  // sum == m, so some s holds it
    out[i] = uint8_t(s);
    s_x = t.freq[s] * (s_x / m) + slot - t.cum[s];
    if (s_x < 65536) {
      if (next + 2 > stream_bytes) return corrupt("rANS reference: stream exhausted");
      s_x = s_x * 65536 + read_le(stream + next, 2);
      next += 2;
    }
  }
  if (next != stream_bytes) return corrupt("rANS reference: stream not fully read");
  for (uint32_t l = 0; l < n_lanes; ++l)
    if (x[l] != 65536) return corrupt("rANS reference: lane " + std::to_string(l) + " not back at 2^16");
  return Status::ok();
}

}  // namespace kvtc
