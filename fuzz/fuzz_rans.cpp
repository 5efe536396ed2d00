// libFuzzer target: bytes -> a rANS table (from the front, parse_rans_table) and a rANS chunk (the
// rest), decoded by the fast and the reference decoder. It aborts if the two disagree on accepting the
// chunk or on its symbols, if an accepted chunk is not exactly the encoder's output for those symbols,
// or if an accepted table does not serialise back to its bytes. Without a valid table in front, the
// whole input is decoded as a chunk under a fixed table.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "entropy/rans_decode.hpp"
#include "entropy/rans_encode.hpp"
#include "entropy/rans_reference.hpp"
#include "entropy/rans_table.hpp"

namespace {

const kvtc::RansTable& fallback_table() {
  static const kvtc::RansTable t = [] {
    auto r = kvtc::build_rans_table({400, 200, 100, 50, 25, 12, 6, 3, 1, 1, 1, 1, 1, 1, 1, 1}, 12, true);
    if (!r.is_ok()) std::abort();
    return r.value();
  }();
  return t;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvtc;
  size_t used = 0;
  auto parsed = parse_rans_table(data, size, &used);
  const RansTable* table = &fallback_table();
  if (parsed.is_ok()) {
    std::vector<uint8_t> again;
    serialize_rans_table(*parsed, again);
    if (again.size() != used || std::memcmp(again.data(), data, used) != 0) std::abort();
    table = &parsed.value();
  } else {
    used = 0;
  }
  const uint8_t* chunk = data + used;
  const size_t chunk_bytes = size - used;
  auto dec = RansDecodeTable::build(*table);
  if (!dec.is_ok()) std::abort();  // a parsed table is a valid one
  // The symbol count the context would supply: take the chunk's own (bounded), as a container would.
  uint32_t n_symbols = 0;
  if (chunk_bytes >= 4) std::memcpy(&n_symbols, chunk, 4);
  if (n_symbols > kRansMaxChunkSymbols) n_symbols = kRansMaxChunkSymbols;
  std::vector<uint8_t> fast(n_symbols), ref(n_symbols);
  const bool fast_ok = rans_decode(chunk, chunk_bytes, *dec, fast.data(), n_symbols).is_ok();
  const RansRun run{n_symbols, table};
  const bool ref_ok = rans_decode_reference(chunk, chunk_bytes, &run, 1, ref.data(), n_symbols).is_ok();
  if (fast_ok != ref_ok) std::abort();
  if (fast_ok) {
    if (fast != ref) std::abort();
    std::vector<uint8_t> again;
    if (!rans_encode(fast.data(), fast.size(), *table, chunk[4], again).is_ok()) std::abort();
    if (again.size() != chunk_bytes || std::memcmp(again.data(), chunk, chunk_bytes) != 0) std::abort();
  }
  return 0;
}
