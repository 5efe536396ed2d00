// Static rANS frequency tables (docs/FORMAT.md, "rANS chunk (format v3 draft)"): counts learnt at
// calibration, normalised to a total of 2^prob_bits, serialised with a CRC-32 and validated on load.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kvtc/status.hpp"

namespace kvtc {

constexpr int kRansMaxAlphabet = 256;   // symbols are bytes
constexpr int kRansMinProbBits = 1;
constexpr int kRansMaxProbBits = 15;    // 16-bit renormalisation needs prob_bits <= 16; 15 keeps freq < 2^16
constexpr int kRansDefaultProbBits = 12;
constexpr uint8_t kRansTableVersion = 1;

// A normalised table over symbols [0, alphabet_size): freq[s] >= 0, sum == 2^prob_bits; cum[s] is the
// sum of freq[0..s). Only symbols with freq > 0 can be coded.
struct RansTable {
  int prob_bits = kRansDefaultProbBits;
  std::vector<uint16_t> freq;  // alphabet_size entries
  std::vector<uint32_t> cum;   // alphabet_size + 1 entries, cum[alphabet_size] == 2^prob_bits

  int alphabet_size() const { return int(freq.size()); }
  uint32_t total() const { return 1u << prob_bits; }
  bool operator==(const RansTable&) const = default;  // EcsqCell's and EcsqModel's == need it
};

// Normalises counts (alphabet_size = counts.size(), 1..256) to a table of total 2^prob_bits. Every
// symbol with a count > 0 gets freq >= 1; with cover_alphabet, every symbol of the alphabet does
// (what a table learnt at calibration needs: a symbol never seen there may still occur later).
// The frequencies minimise the code length sum_s counts[s] * log2(2^prob_bits / freq[s]) under those
// constraints (a separable convex integer problem: proportional rounding, then greedy unit moves of
// least marginal cost, then exchanges while one lowers the total; see rans_table.cpp).
// INVALID_ARGUMENT if the alphabet is empty or too large for prob_bits, or no symbol is to be coded.
Result<RansTable> build_rans_table(const std::vector<uint64_t>& counts, int prob_bits, bool cover_alphabet);

// Checks the invariants above (sizes, prob_bits range, sum); CORRUPT with a message otherwise.
Status validate_rans_table(const RansTable& table);

// Serialised form: u8 version, u8 prob_bits, u16 alphabet_size, alphabet_size x u16 freq, u32 CRC-32
// of all preceding bytes (little-endian).
size_t rans_table_serialized_bytes(int alphabet_size);
void serialize_rans_table(const RansTable& table, std::vector<uint8_t>& out);  // appends
// Parses one table from the front of [data, data + size_bytes) and sets *consumed_bytes to its length
// (consumed_bytes == nullptr: the table must fill the input exactly). CORRUPT or CHECKSUM_MISMATCH
// with a message, UNSUPPORTED for an unknown version.
Result<RansTable> parse_rans_table(const uint8_t* data, size_t size_bytes, size_t* consumed_bytes = nullptr);

// The ideal code length of symbols under the table, in bits: sum of log2(2^prob_bits / freq[s]);
// infinite if a symbol has freq 0 or lies outside the alphabet.
double rans_table_cost_bits(const RansTable& table, const uint8_t* symbols, size_t n_symbols);

}  // namespace kvtc
