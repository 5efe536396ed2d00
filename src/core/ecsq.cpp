// Learning codec v3's quantiser at calibration (bench/v3_quantiser_study.py is the study this follows):
// for every component and every step of a quarter-octave grid, measure the distortion (with the
// bin-centroid reconstruction) and the rate under the table that would code it; then sweep lambda
// down the lower convex hulls of all components at once, taking a snapshot of the choice wherever the
// predicted rate reaches the next level's budget.
#include "core/ecsq.hpp"

#include <algorithm>
#include <cstring>
#include <string>

#include "util/bytes.hpp"
#include "util/parallel.hpp"
#include "util/status_macros.hpp"

namespace kvtc {

uint32_t EcsqLevel::n_kept() const {
  for (size_t j = cell.size(); j-- > 0;)
    if (cell[j] != 0) return uint32_t(j + 1);
  return 0;
}

namespace {

// Lowest and highest magnitude a magnitude symbol stands for.
double bucket_lo(int m) { return m <= kEcsqDirectMax ? m : kEcsqDirectMax + std::ldexp(1.0, m - kEcsqDirectMax - 1); }
double bucket_hi(int m) { return m <= kEcsqDirectMax ? m : kEcsqDirectMax + std::ldexp(1.0, m - kEcsqDirectMax) - 1; }

// Symbol counts and distortion of one column at one step.
struct CellStats {
  std::vector<uint64_t> counts = std::vector<uint64_t>(kEcsqSignedSymbols, 0);
  float delta = 0.0f;
  double distortion = 0.0;   // mean squared error per token
  double bucket_bits = 0.0;  // raw bits per token
};

// The hot loop of calibration's ECSQ learning (components x grid steps x samples): each code is
// computed once and kept for the distortion pass, and direct symbols skip the out-of-line ecsq_symbol.
CellStats measure_cell(const float* col, int64_t n, float step) {
  CellStats st;
  double su = 0.0;
  int64_t nnz = 0;
  std::vector<int32_t> codes(static_cast<size_t>(n));
  for (int64_t t = 0; t < n; ++t) {
    const int32_t q = ecsq_quantize(col[t], step);
    codes[size_t(t)] = q;
    if (q == 0) {
      ++st.counts[0];
      continue;
    }
    const int32_t mag = q < 0 ? -q : q;
    if (mag <= kEcsqDirectMax) {
      ++st.counts[size_t(q > 0 ? 2 * mag - 1 : 2 * mag)];
    } else {
      const EcsqSymbol s = ecsq_symbol(q);
      ++st.counts[s.symbol];
      st.bucket_bits += s.n_bits;
    }
    su += double(std::fabs(col[t]) / step) - double(mag);
    ++nnz;
  }
  st.delta = nnz > 0 ? float(std::clamp(su / double(nnz), -0.5, 0.5)) : 0.0f;
  double d = 0.0;
  for (int64_t t = 0; t < n; ++t) {
    const double e = double(col[t]) - double(ecsq_dequantize(codes[size_t(t)], step, st.delta));
    d += e * e;
  }
  st.distortion = d / double(n);
  st.bucket_bits /= double(n);
  return st;
}

// The smoothed model of the study ("mix"): 0.9 the histogram + 0.1 a two-sided geometric fit with
// P(0) free. Returns probabilities of the signed symbols.
std::vector<double> mix_probabilities(const std::vector<uint64_t>& counts) {
  double total = 0.0, weighted = 0.0;
  for (int s = 0; s < kEcsqSignedSymbols; ++s) {
    total += double(counts[size_t(s)]);
    if (s > 0) weighted += double(counts[size_t(s)]) * bucket_lo(ecsq_magnitude_symbol(uint32_t(s)));
  }
  total = std::max(total, 1.0);
  const double n0 = double(counts[0]);
  const double p0 = std::clamp(n0 / total, 1e-6, 1.0 - 1e-6);
  const double mean = std::max(weighted / std::max(total - n0, 1.0) - 1.0, 1e-3);
  const double r = mean / (1.0 + mean);  // P(|q| = k | q != 0) = (1 - r) r^(k - 1)
  // Mass of magnitude symbol m: (1 - p0) (r^(lo - 1) - r^hi) / 2 per sign; powers by repeated
  // multiplication up to kEcsqDirectMax (this runs for 48 steps of every component at calibration).
  double geo_m[kEcsqMaxMagnitudeSymbol + 1];
  geo_m[0] = p0;
  double r_pow = 1.0;  // r^(m - 1)
  for (int m = 1; m <= kEcsqMaxMagnitudeSymbol; ++m) {
    if (m <= kEcsqDirectMax) {
      geo_m[m] = (1.0 - p0) * r_pow * (1.0 - r) / 2.0;
      r_pow *= r;
    } else {
      geo_m[m] = (1.0 - p0) * (std::pow(r, bucket_lo(m) - 1.0) - std::pow(r, bucket_hi(m))) / 2.0;
    }
  }
  std::vector<double> p(kEcsqSignedSymbols);
  for (int s = 0; s < kEcsqSignedSymbols; ++s)
    p[size_t(s)] = 0.9 * double(counts[size_t(s)]) / total + 0.1 * geo_m[ecsq_magnitude_symbol(uint32_t(s))];
  return p;
}

// Table size A (symbols [0, A - 1) plus the escape): every magnitude seen, or that the model gives at
// least half a slot of M.
int table_alphabet(const std::vector<uint64_t>& counts, const std::vector<double>& p, int prob_bits) {
  const double half_slot = 0.5 / double(1 << prob_bits);
  int a = 0;
  for (int s = 1; s < kEcsqSignedSymbols; ++s)
    if (counts[size_t(s)] > 0 || p[size_t(s)] >= half_slot) a = std::max(a, ecsq_magnitude_symbol(uint32_t(s)));
  return 2 * a + 2;
}

// Rate in bits per token of the counts under the model's table (the normalisation approximated as
// freq = 1 + P (M - A), as the study does), bucket and escape bits included.
double model_rate_bits(const CellStats& st, const std::vector<double>& p, int alphabet, int prob_bits, int64_t n) {
  const double M = double(1 << prob_bits);
  double p_escape = 0.0;
  for (int s = alphabet - 1; s < kEcsqSignedSymbols; ++s) p_escape += p[size_t(s)];
  const double escape_cost = -std::log2((1.0 + p_escape * (M - alphabet)) / M) + kEcsqEscapeBits;
  double bits = 0.0;
  for (int s = 0; s < kEcsqSignedSymbols; ++s) {
    const uint64_t c = st.counts[size_t(s)];
    if (c == 0) continue;
    bits += double(c) * (s < alphabet - 1 ? -std::log2((1.0 + p[size_t(s)] * (M - alphabet)) / M) : escape_cost);
  }
  return bits / double(n) + st.bucket_bits;
}

Result<RansTable> build_cell_table(const CellStats& st, int prob_bits) {
  const std::vector<double> p = mix_probabilities(st.counts);
  const int alphabet = table_alphabet(st.counts, p, prob_bits);
  std::vector<uint64_t> pseudo(size_t(alphabet), 0);
  for (int s = 0; s < kEcsqSignedSymbols; ++s)
    pseudo[size_t(std::min(s, alphabet - 1))] += uint64_t(std::llround(p[size_t(s)] * 1073741824.0));
  return build_rans_table(pseudo, prob_bits, /*cover_alphabet=*/true);
}

float grid_step(double sigma, int i) {
  const double k_lo = std::floor(4.0 * std::log2(sigma)) - 32.0;
  return float(std::exp2((k_lo + double(i)) / 4.0));
}

// One point of a component's lower convex hull: grid step i (-1: dropped), rate, distortion.
struct HullPoint {
  int step = -1;
  double rate = 0.0, distortion = 0.0;
};

// Lower convex hull of (rate, distortion), starting at the dropped point, rates increasing and
// distortions decreasing.
std::vector<HullPoint> lower_hull(std::vector<HullPoint> pts) {
  std::sort(pts.begin(), pts.end(), [](const HullPoint& a, const HullPoint& b) {
    return a.rate != b.rate ? a.rate < b.rate : a.distortion < b.distortion;
  });
  std::vector<HullPoint> h;
  for (const HullPoint& q : pts) {
    if (!h.empty() && q.distortion >= h.back().distortion) continue;  // never better than a cheaper point
    while (h.size() >= 2) {
      const HullPoint& a = h[h.size() - 2];
      const HullPoint& b = h.back();
      // b is above the segment a-q: drop it.
      if ((b.distortion - a.distortion) * (q.rate - a.rate) >= (q.distortion - a.distortion) * (b.rate - a.rate))
        h.pop_back();
      else
        break;
    }
    h.push_back(q);
  }
  return h;
}

}  // namespace

Result<EcsqModel> learn_ecsq_model(const float* coefficients, int64_t n_samples, int64_t n_components,
                                   int64_t n_features, const EcsqLearnOptions& o) {
  if (n_samples < 1 || n_components < 0 || n_features < 1 || n_components > n_features)
    return invalid_argument("ECSQ: need samples and 0 <= components <= features");
  if (o.prob_bits < 9 || o.prob_bits > kRansMaxProbBits)
    return invalid_argument("ECSQ: prob_bits must be 9.." + std::to_string(kRansMaxProbBits));
  if (!(o.finest_ratio >= 1.0) || !(o.coarsest_ratio >= o.finest_ratio) || o.levels_per_octave < 1 ||
      std::log2(o.coarsest_ratio / o.finest_ratio) * o.levels_per_octave + 2 > kEcsqMaxLevels)
    return invalid_argument("ECSQ: bad level ladder");
  const int64_t n = n_samples, k = n_components;

  // 1. Per component and grid step: rate and distortion; the energy of dropping it.
  std::vector<double> energy(size_t(k), 0.0), sigma(size_t(k), 0.0);
  std::vector<std::vector<HullPoint>> hulls(static_cast<size_t>(k));
  KVTC_RETURN_IF_ERROR(parallel_for(k, o.n_threads, [&](int64_t j) -> Status {
    std::vector<float> col(static_cast<size_t>(n));
    double e = 0.0;
    for (int64_t t = 0; t < n; ++t) {
      col[size_t(t)] = coefficients[t * k + j];
      e += double(col[size_t(t)]) * col[size_t(t)];
    }
    e /= double(n);
    energy[size_t(j)] = e;
    sigma[size_t(j)] = std::sqrt(e);
    std::vector<HullPoint> pts{{-1, 0.0, e}};
    if (e > 0.0 && std::isfinite(e)) {
      for (int i = 0; i < kEcsqGridSteps; ++i) {
        const float step = grid_step(sigma[size_t(j)], i);
        if (!(step > 0.0f) || !std::isfinite(step)) continue;
        const CellStats st = measure_cell(col.data(), n, step);
        const std::vector<double> p = mix_probabilities(st.counts);
        const int a = table_alphabet(st.counts, p, o.prob_bits);
        pts.push_back({i, model_rate_bits(st, p, a, o.prob_bits, n), st.distortion});
      }
    }
    hulls[size_t(j)] = lower_hull(std::move(pts));
    return Status::ok();
  }));

  // 2. Sweep lambda down every hull at once: events (slope, component) in decreasing slope.
  struct Event {
    double lambda;
    uint32_t component, point;
  };
  std::vector<Event> events;
  for (int64_t j = 0; j < k; ++j) {
    const auto& h = hulls[size_t(j)];
    for (size_t i = 1; i < h.size(); ++i)
      events.push_back({(h[i - 1].distortion - h[i].distortion) / (h[i].rate - h[i - 1].rate), uint32_t(j), uint32_t(i)});
  }
  std::stable_sort(events.begin(), events.end(), [](const Event& a, const Event& b) { return a.lambda > b.lambda; });

  // Level budgets, coarsest first (the sweep adds rate), then reversed to finest first.
  std::vector<double> budgets;
  const int n_ladder = int(std::floor(std::log2(o.coarsest_ratio / o.finest_ratio) * o.levels_per_octave + 1e-9)) + 1;
  for (int l = n_ladder - 1; l >= 0; --l)
    budgets.push_back(16.0 * double(n_features) / (o.finest_ratio * std::exp2(double(l) / o.levels_per_octave)));
  double total_energy = 0.0;
  for (double e : energy) total_energy += e;

  std::vector<uint32_t> at(size_t(k), 0);  // hull point per component
  std::vector<EcsqLevel> levels;
  EcsqLevel dropped;
  dropped.lambda = events.empty() ? 0.0 : events.front().lambda * 2.0;
  dropped.error_per_token = total_energy;
  dropped.cell.assign(size_t(k), 0);
  levels.push_back(dropped);
  double rate = 0.0, error = total_energy, lambda = dropped.lambda;
  size_t next = 0;
  for (double budget : budgets) {
    while (next < events.size()) {
      const Event& ev = events[next];
      const auto& h = hulls[ev.component];
      const double d_rate = h[ev.point].rate - h[ev.point - 1].rate;
      if (rate + d_rate > budget) break;
      rate += d_rate;
      error += h[ev.point].distortion - h[ev.point - 1].distortion;
      at[ev.component] = ev.point;
      lambda = ev.lambda;
      ++next;
    }
    EcsqLevel lv;
    lv.lambda = lambda;
    lv.bits_per_token = rate;
    lv.error_per_token = std::max(error, 0.0);
    lv.cell.resize(size_t(k));
    for (int64_t j = 0; j < k; ++j) lv.cell[size_t(j)] = uint8_t(hulls[size_t(j)][at[size_t(j)]].step + 1);  // grid step + 1
    levels.push_back(std::move(lv));
  }
  std::reverse(levels.begin(), levels.end());

  // 3. Cells: the grid steps any level uses, with their centroid and table.
  EcsqModel model;
  model.prob_bits = o.prob_bits;
  model.cells.resize(size_t(k));
  std::vector<std::vector<uint8_t>> index(size_t(k), std::vector<uint8_t>(kEcsqGridSteps + 1, 0));
  KVTC_RETURN_IF_ERROR(parallel_for(k, o.n_threads, [&](int64_t j) -> Status {
    std::vector<bool> used(kEcsqGridSteps, false);
    for (const EcsqLevel& lv : levels)
      if (lv.cell[size_t(j)] != 0) used[lv.cell[size_t(j)] - 1u] = true;
    std::vector<float> col;
    for (int i = 0; i < kEcsqGridSteps; ++i) {
      if (!used[size_t(i)]) continue;
      if (col.empty()) {
        col.resize(size_t(n));
        for (int64_t t = 0; t < n; ++t) col[size_t(t)] = coefficients[t * k + j];
      }
      EcsqCell c;
      c.grid_step = uint8_t(i);
      c.step = grid_step(sigma[size_t(j)], i);
      const CellStats st = measure_cell(col.data(), n, c.step);
      c.delta = st.delta;
      KVTC_ASSIGN_OR_RETURN(c.table, build_cell_table(st, o.prob_bits));
      model.cells[size_t(j)].push_back(std::move(c));
      index[size_t(j)][size_t(i) + 1] = uint8_t(model.cells[size_t(j)].size());
    }
    return Status::ok();
  }));
  for (EcsqLevel& lv : levels)
    for (int64_t j = 0; j < k; ++j) lv.cell[size_t(j)] = index[size_t(j)][lv.cell[size_t(j)]];
  model.levels = std::move(levels);
  model.fingerprint = ecsq_model_fingerprint(model);
  return model;
}

// ----- serialisation ---------------------------------------------------------------------------------
//
//   u32 prob_bits, u32 n_components, u32 n_levels
//   per component: u8 n_cells; per cell: u8 grid_step, f32 step, f32 delta, rANS table (with its CRC)
//   per level: f64 lambda, f64 bits_per_token, f64 error_per_token, n_components x u8 cell

void serialize_ecsq_model(const EcsqModel& model, std::vector<uint8_t>& out) {
  auto put = [&](const void* p, size_t bytes) {
    const auto* b = static_cast<const uint8_t*>(p);
    out.insert(out.end(), b, b + bytes);
  };
  const uint32_t head[3] = {uint32_t(model.prob_bits), model.n_components(), uint32_t(model.levels.size())};
  put(head, sizeof head);
  for (const auto& cells : model.cells) {
    out.push_back(uint8_t(cells.size()));
    for (const EcsqCell& c : cells) {
      out.push_back(c.grid_step);
      put(&c.step, 4);
      put(&c.delta, 4);
      serialize_rans_table(c.table, out);
    }
  }
  for (const EcsqLevel& lv : model.levels) {
    put(&lv.lambda, 8);
    put(&lv.bits_per_token, 8);
    put(&lv.error_per_token, 8);
    put(lv.cell.data(), lv.cell.size());
  }
}

Result<EcsqModel> parse_ecsq_model(const uint8_t* bytes, size_t size_bytes, uint32_t n_components) {
  size_t pos = 0;
  auto need = [&](size_t n, const char* what) -> Status {
    if (size_bytes - pos < n) return corrupt(std::string("ECSQ model truncated in ") + what);
    return Status::ok();
  };
  auto read = [&](void* dst, size_t n) {
    std::memcpy(dst, bytes + pos, n);
    pos += n;
  };
  KVTC_RETURN_IF_ERROR(need(12, "its header"));
  uint32_t head[3];
  read(head, sizeof head);
  EcsqModel m;
  if (head[0] < 9 || head[0] > uint32_t(kRansMaxProbBits))
    return corrupt("ECSQ model: prob_bits " + std::to_string(head[0]) + " (9.." + std::to_string(kRansMaxProbBits) + ")");
  m.prob_bits = int(head[0]);
  if (head[1] != n_components)
    return corrupt("ECSQ model has " + std::to_string(head[1]) + " components, the basis " + std::to_string(n_components));
  if (head[2] < 1 || head[2] > uint32_t(kEcsqMaxLevels))
    return corrupt("ECSQ model: " + std::to_string(head[2]) + " levels (1.." + std::to_string(kEcsqMaxLevels) + ")");
  m.cells.resize(n_components);
  for (uint32_t j = 0; j < n_components; ++j) {
    KVTC_RETURN_IF_ERROR(need(1, "a component"));
    const uint8_t n_cells = bytes[pos++];
    if (n_cells > kEcsqGridSteps) return corrupt("ECSQ model: component " + std::to_string(j) + " has too many cells");
    for (uint8_t c = 0; c < n_cells; ++c) {
      KVTC_RETURN_IF_ERROR(need(9, "a cell"));
      EcsqCell cell;
      cell.grid_step = bytes[pos++];
      read(&cell.step, 4);
      read(&cell.delta, 4);
      const std::string where = "ECSQ model: component " + std::to_string(j) + " cell " + std::to_string(c);
      if (!(cell.step > 0.0f) || !std::isfinite(cell.step)) return corrupt(where + ": step not positive and finite");
      if (!(cell.delta >= -0.5f && cell.delta <= 0.5f)) return corrupt(where + ": offset outside [-0.5, 0.5]");
      size_t used = 0;
      Result<RansTable> t = parse_rans_table(bytes + pos, size_bytes - pos, &used);
      if (!t.is_ok()) return Status(t.status().code(), where + ": " + t.status().message());
      pos += used;
      cell.table = std::move(t).value();
      if (cell.table.alphabet_size() < 2 || cell.table.alphabet_size() > kEcsqMaxTableAlphabet ||
          cell.table.prob_bits != m.prob_bits)
        return corrupt(where + ": table alphabet or precision out of range");
      for (uint16_t f : cell.table.freq)
        if (f == 0) return corrupt(where + ": a table symbol has frequency 0");
      m.cells[j].push_back(std::move(cell));
    }
  }
  m.levels.resize(head[2]);
  for (uint32_t l = 0; l < head[2]; ++l) {
    EcsqLevel& lv = m.levels[l];
    KVTC_RETURN_IF_ERROR(need(24 + size_t(n_components), "a level"));
    read(&lv.lambda, 8);
    read(&lv.bits_per_token, 8);
    read(&lv.error_per_token, 8);
    if (!std::isfinite(lv.bits_per_token) || lv.bits_per_token < 0)
      return corrupt("ECSQ model: level " + std::to_string(l) + " has bad predicted bits");
    lv.cell.assign(bytes + pos, bytes + pos + n_components);
    pos += n_components;
    for (uint32_t j = 0; j < n_components; ++j)
      if (lv.cell[j] > m.cells[j].size())
        return corrupt("ECSQ model: level " + std::to_string(l) + " names cell " + std::to_string(lv.cell[j]) +
                       " of component " + std::to_string(j) + ", which has " + std::to_string(m.cells[j].size()));
  }
  if (pos != size_bytes) return corrupt("ECSQ model: " + std::to_string(size_bytes - pos) + " trailing bytes");
  m.fingerprint = ecsq_model_fingerprint(m);
  return m;
}

uint64_t ecsq_model_fingerprint(const EcsqModel& model) {
  std::vector<uint8_t> bytes;
  serialize_ecsq_model(model, bytes);
  uint64_t h = 0xcbf29ce484222325ull;
  for (uint8_t b : bytes) h = (h ^ b) * 0x100000001b3ull;
  return h;
}

uint32_t ecsq_predicted_level(const EcsqModel& model, int64_t n_features, double ratio) {
  const double budget = 16.0 * double(n_features) / ratio;
  for (size_t l = 0; l < model.levels.size(); ++l)
    if (model.levels[l].bits_per_token <= budget) return uint32_t(l);
  return model.levels.empty() ? 0 : uint32_t(model.levels.size() - 1);
}

}  // namespace kvtc
