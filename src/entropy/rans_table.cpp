// Normalisation, serialisation and validation of static rANS tables.
//
// Normalisation. With counts c_s, total M = 2^prob_bits and the set A of symbols that must be codable
// (count > 0, or all of the alphabet with cover_alphabet), the frequencies minimise
//   L(f) = sum_s c_s * log2(M / f_s)   subject to  sum_s f_s = M,  f_s >= 1 for s in A,  f_s = 0 otherwise.
// L is a sum of convex functions of one integer each, so a feasible f is optimal exactly when no unit
// move from one symbol to another lowers L (the exchange condition of separable convex resource
// allocation). The method: start from proportional rounding f_s = max(1, round(c_s M / C)); while the
// sum is off, take or give one unit where it costs least / gains most; then exchange units while the
// largest gain of an increment exceeds the smallest cost of a decrement. A is at most 256 symbols and
// M at most 2^15, so linear scans are fast enough for calibration time.
#include "entropy/rans_table.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "util/bytes.hpp"
#include "util/crc32.hpp"

namespace kvtc {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Bits saved by raising f from f to f + 1 for a symbol seen c times.
double increment_gain(double c, uint32_t f) { return c == 0 ? 0.0 : c * std::log2(double(f + 1) / double(f)); }
// Bits lost by lowering f to f - 1 (infinite when f would drop below 1).
double decrement_cost(double c, uint32_t f) {
  if (f <= 1) return kInf;
  return c == 0 ? 0.0 : c * std::log2(double(f) / double(f - 1));
}

void fill_cum(RansTable& t) {
  t.cum.assign(t.freq.size() + 1, 0);
  for (size_t s = 0; s < t.freq.size(); ++s) t.cum[s + 1] = t.cum[s] + t.freq[s];
}

}  // namespace

Result<RansTable> build_rans_table(const std::vector<uint64_t>& counts, int prob_bits, bool cover_alphabet) {
  const size_t n = counts.size();
  if (n == 0 || n > size_t(kRansMaxAlphabet))
    return invalid_argument("rANS table: alphabet of " + std::to_string(n) + " symbols (1..256)");
  if (prob_bits < kRansMinProbBits || prob_bits > kRansMaxProbBits)
    return invalid_argument("rANS table: prob_bits " + std::to_string(prob_bits) + " outside 1..15");
  const uint32_t total = 1u << prob_bits;
  std::vector<bool> active(n);
  size_t n_active = 0;
  double count_sum = 0;
  for (size_t s = 0; s < n; ++s) {
    active[s] = counts[s] > 0 || cover_alphabet;
    n_active += active[s];
    count_sum += double(counts[s]);
  }
  if (n_active == 0) return invalid_argument("rANS table: no symbol has a count");
  if (n_active > total)
    return invalid_argument("rANS table: " + std::to_string(n_active) + " codable symbols exceed the total 2^" +
                            std::to_string(prob_bits));

  std::vector<uint32_t> f(n, 0);
  std::vector<double> c(n);
  for (size_t s = 0; s < n; ++s) c[s] = double(counts[s]);
  int64_t sum = 0;
  for (size_t s = 0; s < n; ++s) {
    if (!active[s]) continue;
    // No counts at all (cover_alphabet only): a uniform start, which the loops below complete.
    const double share = count_sum > 0 ? c[s] * double(total) / count_sum : 0.0;
    f[s] = std::max<uint32_t>(1, uint32_t(std::llround(share)));
    sum += f[s];
  }
  // Fix the sum one unit at a time. With no counts every move costs 0 and the first symbol with room
  // takes it, so spread the units round-robin instead for a uniform table.
  size_t rr = 0;
  while (sum != int64_t(total)) {
    size_t best = n;
    if (count_sum == 0) {
      while (!active[rr % n] || (sum > int64_t(total) && f[rr % n] <= 1)) ++rr;
      best = rr++ % n;
    } else if (sum < int64_t(total)) {
      double best_gain = -1;
      for (size_t s = 0; s < n; ++s)
        if (active[s] && increment_gain(c[s], f[s]) > best_gain) best_gain = increment_gain(c[s], f[s]), best = s;
    } else {
      double best_cost = kInf;
      for (size_t s = 0; s < n; ++s)
        if (active[s] && decrement_cost(c[s], f[s]) < best_cost) best_cost = decrement_cost(c[s], f[s]), best = s;
    }
    if (best == n) return internal_error("rANS table: normalisation found no unit to move");
    if (sum < int64_t(total)) ++f[best], ++sum;
    else --f[best], --sum;
  }
  // Exchanges: move a unit from the cheapest decrement to the best increment while that lowers L.
  for (uint32_t iter = 0; iter < 4 * total && count_sum > 0; ++iter) {
    size_t up = n, down = n;
    double gain = 0, cost = kInf;
    for (size_t s = 0; s < n; ++s) {
      if (!active[s]) continue;
      const double g = increment_gain(c[s], f[s]);
      if (g > gain) gain = g, up = s;
    }
    for (size_t s = 0; s < n; ++s) {
      if (!active[s] || s == up) continue;
      const double d = decrement_cost(c[s], f[s]);
      if (d < cost) cost = d, down = s;
    }
    if (up == n || down == n || !(gain > cost * (1 + 1e-12) + 1e-12)) break;
    ++f[up];
    --f[down];
  }

  RansTable t;
  t.prob_bits = prob_bits;
  t.freq.assign(f.begin(), f.end());
  fill_cum(t);
  return t;
}

Status validate_rans_table(const RansTable& t) {
  if (t.prob_bits < kRansMinProbBits || t.prob_bits > kRansMaxProbBits)
    return corrupt("rANS table: prob_bits " + std::to_string(t.prob_bits) + " outside 1..15");
  if (t.freq.empty() || t.freq.size() > size_t(kRansMaxAlphabet))
    return corrupt("rANS table: alphabet of " + std::to_string(t.freq.size()) + " symbols (1..256)");
  if (t.cum.size() != t.freq.size() + 1 || t.cum[0] != 0) return corrupt("rANS table: cumulative frequencies missing");
  uint64_t sum = 0;
  for (size_t s = 0; s < t.freq.size(); ++s) {
    if (t.freq[s] > t.total())
      return corrupt("rANS table: frequency " + std::to_string(t.freq[s]) + " of symbol " + std::to_string(s) +
                     " exceeds the total " + std::to_string(t.total()));
    sum += t.freq[s];
    if (t.cum[s + 1] != sum) return corrupt("rANS table: cumulative frequencies disagree with the frequencies");
  }
  if (sum != t.total())
    return corrupt("rANS table: frequencies sum to " + std::to_string(sum) + ", not 2^" + std::to_string(t.prob_bits));
  return Status::ok();
}

size_t rans_table_serialized_bytes(int alphabet_size) { return 8 + 2 * size_t(alphabet_size); }

void serialize_rans_table(const RansTable& t, std::vector<uint8_t>& out) {
  const size_t start = out.size();
  ByteWriter w(out);
  w.u8(kRansTableVersion);
  w.u8(uint8_t(t.prob_bits));
  w.u16(uint16_t(t.freq.size()));
  for (uint16_t f : t.freq) w.u16(f);
  w.u32(crc32_update(0, out.data() + start, out.size() - start));
}

Result<RansTable> parse_rans_table(const uint8_t* data, size_t size_bytes, size_t* consumed_bytes) {
  if (size_bytes < 4 || data == nullptr)
    return corrupt("rANS table: truncated header (" + std::to_string(size_bytes) + " bytes, 4 needed)");
  ByteReader r(data, size_bytes);
  const uint8_t version = r.u8();
  const int prob_bits = r.u8();
  const int alphabet = r.u16();
  if (alphabet < 1 || alphabet > kRansMaxAlphabet)
    return corrupt("rANS table: alphabet of " + std::to_string(alphabet) + " symbols (1..256)");
  const size_t need = rans_table_serialized_bytes(alphabet);
  if (size_bytes < need)
    return corrupt("rANS table: truncated (" + std::to_string(size_bytes) + " bytes, " + std::to_string(need) +
                   " needed)");
  if (consumed_bytes == nullptr && size_bytes != need)
    return corrupt("rANS table: " + std::to_string(size_bytes - need) + " trailing bytes");
  uint32_t stored_crc = 0;
  std::memcpy(&stored_crc, data + need - 4, 4);
  if (crc32_update(0, data, need - 4) != stored_crc) return checksum_mismatch("rANS table: CRC-32 mismatch");
  if (version != kRansTableVersion)
    return unsupported("rANS table: version " + std::to_string(version) + " (this build reads version 1)");
  RansTable t;
  t.prob_bits = prob_bits;
  t.freq.resize(size_t(alphabet));
  for (uint16_t& f : t.freq) f = r.u16();
  if (!r.ok()) return internal_error("rANS table: reader ran out after the length check");
  fill_cum(t);
  Status s = validate_rans_table(t);
  if (!s.is_ok()) return s;
  if (consumed_bytes != nullptr) *consumed_bytes = need;
  return t;
}

double rans_table_cost_bits(const RansTable& t, const uint8_t* symbols, size_t n_symbols) {
  double bits = 0;
  for (size_t i = 0; i < n_symbols; ++i) {
    const uint8_t s = symbols[i];
    if (s >= t.freq.size() || t.freq[s] == 0) return kInf;
    bits += double(t.prob_bits) - std::log2(double(t.freq[s]));
  }
  return bits;
}

}  // namespace kvtc
