#include "core/allocation.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <string>
#include <thread>

namespace kvtc {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

std::vector<GroupOption> default_options() {
  std::vector<GroupOption> o;
  o.push_back({GroupKind::kDropped, 0});
  for (int w = 1; w <= kMaxWidthBits; ++w) o.push_back({GroupKind::kInt, uint8_t(w)});
  for (int w = 1; w <= kMaxWidthBits; ++w) o.push_back({GroupKind::kIntAffine, uint8_t(w)});
  o.push_back({GroupKind::kFloat16, 16});
  return o;
}

Status check_sizes(const std::vector<int>& sizes) {
  if (sizes.empty()) return invalid_argument("group_sizes is empty");
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (sizes[i] <= 0) return invalid_argument("group size " + std::to_string(sizes[i]) + " is not positive");
    if (i > 0 && (sizes[i] <= sizes[i - 1] || sizes[i] % sizes[i - 1] != 0))
      return invalid_argument("group sizes must increase and each divide the next (" + std::to_string(sizes[i - 1]) +
                              ", " + std::to_string(sizes[i]) + ")");
  }
  return Status::ok();
}

Status check_option(const GroupOption& o) {
  switch (o.kind) {
    case GroupKind::kDropped:
      if (o.width_bits == 0) return Status::ok();
      break;
    case GroupKind::kInt:
    case GroupKind::kIntAffine:
      if (o.width_bits >= 1 && o.width_bits <= kMaxWidthBits) return Status::ok();
      break;
    case GroupKind::kFloat16:
      if (o.width_bits == 16) return Status::ok();
      break;
  }
  return invalid_argument("invalid group option (kind " + std::to_string(int(o.kind)) + ", width " +
                          std::to_string(int(o.width_bits)) + ")");
}

int64_t option_bits(int size, const GroupOption& o) {
  return int64_t(size) * value_bits(o.kind, o.width_bits) + side_bits_per_token(o.kind);
}

Status check_table(const DistortionTable& t) {
  if (t.rank < 0) return invalid_argument("distortion table: negative rank");
  Status st = check_sizes(t.group_sizes);
  if (!st.is_ok()) return st.with_context("distortion table");
  if (t.options.empty()) return invalid_argument("distortion table: no options");
  for (const auto& o : t.options) {
    st = check_option(o);
    if (!st.is_ok()) return st.with_context("distortion table");
  }
  if (int64_t(t.component_energy.size()) != t.rank)
    return invalid_argument("distortion table: component_energy has " + std::to_string(t.component_energy.size()) +
                            " entries for rank " + std::to_string(t.rank));
  if (t.error.size() != t.group_sizes.size()) return invalid_argument("distortion table: error has wrong size count");
  for (size_t si = 0; si < t.group_sizes.size(); ++si) {
    if (int64_t(t.error[si].size()) != t.rank / t.group_sizes[si])
      return invalid_argument("distortion table: wrong group count for size " + std::to_string(t.group_sizes[si]));
    for (const auto& g : t.error[si])
      if (g.size() != t.options.size()) return invalid_argument("distortion table: wrong option count");
  }
  return Status::ok();
}

// Distortion of dropping components [i, rank), plus what lies beyond the rank, for every i.
std::vector<double> tail_energy(const DistortionTable& t) {
  std::vector<double> tail(size_t(t.rank) + 1, 0.0);
  double acc = std::max(0.0, t.residual_error);
  tail[size_t(t.rank)] = acc;
  for (int64_t i = t.rank - 1; i >= 0; --i) {
    acc += t.component_energy[size_t(i)];
    tail[size_t(i)] = acc;
  }
  return tail;
}

// One chosen (group, option) while backtracking.
struct Choice {
  int64_t first;
  int size_index;
  int option_index;
};

// Turns the chosen groups (in component order) into an Allocation: error summed from the table,
// adjacent dropped groups merged, dropped groups at the end folded into the tail.
Allocation make_allocation(const DistortionTable& t, const std::vector<Choice>& chosen, int64_t end,
                           int64_t budget) {
  const std::vector<double> tail = tail_energy(t);
  Allocation a;
  a.budget_bits_per_token = budget;
  double err = 0.0;
  for (const Choice& c : chosen) {
    const int s = t.group_sizes[size_t(c.size_index)];
    const GroupOption& o = t.options[size_t(c.option_index)];
    err += t.error[size_t(c.size_index)][size_t(c.first / s)][size_t(c.option_index)];
    Group g;
    g.first_component = uint32_t(c.first);
    g.n_components = uint32_t(s);
    g.kind = o.kind;
    g.width_bits = o.kind == GroupKind::kDropped ? 0 : o.width_bits;
    if (g.kind == GroupKind::kDropped && !a.groups.empty() && a.groups.back().kind == GroupKind::kDropped) {
      a.groups.back().n_components += g.n_components;
    } else {
      a.groups.push_back(g);
    }
  }
  while (!a.groups.empty() && a.groups.back().kind == GroupKind::kDropped) a.groups.pop_back();
  a.predicted_error = err + tail[size_t(end)];
  a.bits_per_token = 0;
  for (const Group& g : a.groups) a.bits_per_token += g.bits_per_token();
  return a;
}

// Exact DP. f_i[b] = least distortion of components [0, i) at cost <= b. A group [i - s, i) is
// aligned iff s divides i, and row i - s is then the latest row at a multiple of s, so only one row
// per size is kept live; the choice made at each (row, bits) cell is kept for backtracking.
template <typename ChoiceT>
Result<Allocation> exact_dp(const DistortionTable& t, int64_t budget) {
  const int n_sizes = int(t.group_sizes.size());
  const int n_opts = int(t.options.size());
  const int64_t s_min = t.group_sizes[0];
  const int64_t n_rows = t.rank / s_min + 1;  // rows at 0, s_min, 2 s_min, ...
  const int64_t width = budget + 1;
  const ChoiceT kNone = std::numeric_limits<ChoiceT>::max();
  const std::vector<double> tail = tail_energy(t);

  std::vector<std::vector<int64_t>> cost(size_t(n_sizes), std::vector<int64_t>(size_t(n_opts), 0));
  for (int si = 0; si < n_sizes; ++si)
    for (int o = 0; o < n_opts; ++o) cost[size_t(si)][size_t(o)] = option_bits(t.group_sizes[size_t(si)], t.options[size_t(o)]);

  std::vector<ChoiceT> choice;
  try {
    choice.assign(size_t(n_rows) * size_t(width), kNone);
  } catch (const std::bad_alloc&) {
    return Status(StatusCode::kOutOfMemory, "exact bit allocation: table too large");
  }
  std::vector<std::vector<double>> saved(size_t(n_sizes), std::vector<double>(size_t(width), 0.0));
  std::vector<double> cur(size_t(width), 0.0);

  double best = tail[0];  // everything dropped
  int64_t best_row = 0;
  for (int64_t row = 1; row < n_rows; ++row) {
    const int64_t i = row * s_min;
    std::fill(cur.begin(), cur.end(), kInf);
    ChoiceT* ch = &choice[size_t(row) * size_t(width)];
    for (int si = 0; si < n_sizes; ++si) {
      const int64_t s = t.group_sizes[size_t(si)];
      if (i % s != 0) continue;
      const double* prev = saved[size_t(si)].data();
      const auto& errs = t.error[size_t(si)][size_t(i / s - 1)];
      for (int o = 0; o < n_opts; ++o) {
        const int64_t c = cost[size_t(si)][size_t(o)];
        if (c > budget) continue;
        const double e = errs[size_t(o)];
        const ChoiceT code = ChoiceT(si * n_opts + o);
        for (int64_t b = c; b < width; ++b) {
          const double v = prev[b - c] + e;
          if (v < cur[size_t(b)]) {
            cur[size_t(b)] = v;
            ch[b] = code;
          }
        }
      }
    }
    for (int si = 0; si < n_sizes; ++si)
      if (i % t.group_sizes[size_t(si)] == 0) saved[size_t(si)] = cur;
    const double total = cur[size_t(budget)] + tail[size_t(i)];
    if (total < best) {
      best = total;
      best_row = row;
    }
  }

  std::vector<Choice> chosen;
  int64_t row = best_row, b = budget;
  while (row > 0) {
    const ChoiceT code = choice[size_t(row) * size_t(width) + size_t(b)];
    if (code == kNone) return internal_error("exact bit allocation: broken backtrack");
    const int si = int(code) / n_opts, o = int(code) % n_opts;
    const int64_t s = t.group_sizes[size_t(si)];
    chosen.push_back({row * s_min - s, si, o});
    b -= cost[size_t(si)][size_t(o)];
    row -= s / s_min;
  }
  std::reverse(chosen.begin(), chosen.end());
  return make_allocation(t, chosen, best_row * s_min, budget);
}

// One Lagrangian DP: least distortion + lambda * bits (ties: fewer bits).
struct LagrangianSolution {
  std::vector<Choice> chosen;
  int64_t end = 0;
  int64_t bits = 0;
};

LagrangianSolution lagrangian_dp(const DistortionTable& t, const std::vector<double>& tail, double lambda) {
  const int n_sizes = int(t.group_sizes.size());
  const int n_opts = int(t.options.size());
  const int64_t s_min = t.group_sizes[0];
  const int64_t n_rows = t.rank / s_min + 1;
  std::vector<double> h(size_t(n_rows), kInf);
  std::vector<int64_t> bits(size_t(n_rows), 0);
  std::vector<int32_t> ch(size_t(n_rows), -1);
  h[0] = 0.0;
  double best = tail[0];
  int64_t best_row = 0, best_bits = 0;
  for (int64_t row = 1; row < n_rows; ++row) {
    const int64_t i = row * s_min;
    double hv = kInf;
    int64_t hb = 0;
    int32_t hc = -1;
    for (int si = 0; si < n_sizes; ++si) {
      const int64_t s = t.group_sizes[size_t(si)];
      if (i % s != 0) continue;
      const int64_t prev = row - s / s_min;
      if (h[size_t(prev)] == kInf) continue;
      const auto& errs = t.error[size_t(si)][size_t(i / s - 1)];
      for (int o = 0; o < n_opts; ++o) {
        const int64_t c = option_bits(int(s), t.options[size_t(o)]);
        const int64_t nb = bits[size_t(prev)] + c;
        const double v = h[size_t(prev)] + errs[size_t(o)] + lambda * double(c);
        if (v < hv || (v == hv && nb < hb)) {
          hv = v;
          hb = nb;
          hc = si * n_opts + o;
        }
      }
    }
    h[size_t(row)] = hv;
    bits[size_t(row)] = hb;
    ch[size_t(row)] = hc;
    const double total = hv + tail[size_t(i)];
    if (total < best || (total == best && hb < best_bits)) {
      best = total;
      best_row = row;
      best_bits = hb;
    }
  }
  LagrangianSolution sol;
  sol.end = best_row * s_min;
  sol.bits = best_bits;
  for (int64_t row = best_row; row > 0;) {
    const int si = ch[size_t(row)] / n_opts, o = ch[size_t(row)] % n_opts;
    const int64_t s = t.group_sizes[size_t(si)];
    sol.chosen.push_back({row * s_min - s, si, o});
    row -= s / s_min;
  }
  std::reverse(sol.chosen.begin(), sol.chosen.end());
  return sol;
}

}  // namespace

int64_t Allocation::n_kept_components() const {
  int64_t end = 0;
  for (const Group& g : groups)
    if (g.kind != GroupKind::kDropped) end = std::max<int64_t>(end, int64_t(g.first_component) + g.n_components);
  return end;
}

int64_t budget_bits_for_ratio(int64_t n_features, double ratio) {
  if (!(ratio > 0.0) || !std::isfinite(ratio) || n_features <= 0) return 0;
  return int64_t(std::floor(16.0 * double(n_features) / ratio));
}

Result<DistortionTable> measure_distortion(const float* coefficients, int64_t n_samples, int64_t rank,
                                           double residual_error, const AllocatorOptions& options) {
  if (rank < 0) return invalid_argument("measure_distortion: negative rank");
  if (n_samples <= 0) return invalid_argument("measure_distortion: no samples");
  if (rank > 0 && coefficients == nullptr) return invalid_argument("measure_distortion: no coefficients");
  Status st = check_sizes(options.group_sizes);
  if (!st.is_ok()) return st;
  DistortionTable t;
  t.rank = rank;
  t.group_sizes = options.group_sizes;
  t.options = options.options.empty() ? default_options() : options.options;
  for (auto& o : t.options) {
    if (o.kind == GroupKind::kFloat16 && o.width_bits == 0) o.width_bits = 16;  // accept the obvious shorthand
    st = check_option(o);
    if (!st.is_ok()) return st;
  }
  t.residual_error = std::isfinite(residual_error) ? std::max(0.0, residual_error) : 0.0;

  // Samples evenly spread over the input.
  const int64_t m = options.max_samples > 0 ? std::min(n_samples, options.max_samples) : n_samples;
  std::vector<const float*> rows(size_t(m), nullptr);
  for (int64_t k = 0; k < m; ++k) rows[size_t(k)] = coefficients + (k * n_samples / m) * rank;
  const double inv_m = 1.0 / double(m);

  t.component_energy.assign(size_t(rank), 0.0);
  for (int64_t k = 0; k < m; ++k)
    for (int64_t c = 0; c < rank; ++c) t.component_energy[size_t(c)] += double(rows[size_t(k)][c]) * rows[size_t(k)][c];
  for (auto& e : t.component_energy) e *= inv_m;

  // Work items: (size, group) pairs, largest groups first so that threads finish together.
  const int n_opts = int(t.options.size());
  std::vector<std::pair<int, int64_t>> items;
  t.error.resize(t.group_sizes.size());
  for (int si = int(t.group_sizes.size()) - 1; si >= 0; --si) {
    const int64_t n_groups = rank / t.group_sizes[size_t(si)];
    t.error[size_t(si)].assign(size_t(n_groups), std::vector<double>(size_t(n_opts), 0.0));
    for (int64_t g = 0; g < n_groups; ++g) items.emplace_back(si, g);
  }
  std::vector<GroupKind> kinds;
  std::vector<uint8_t> widths;
  for (const auto& o : t.options) {
    kinds.push_back(o.kind);
    widths.push_back(o.width_bits);
  }
  std::atomic<size_t> next{0};
  auto worker = [&] {
    std::vector<double> e(static_cast<size_t>(n_opts));
    for (size_t it = next.fetch_add(1); it < items.size(); it = next.fetch_add(1)) {
      const int si = items[it].first;
      const int64_t g = items[it].second;
      const int s = t.group_sizes[size_t(si)];
      const int64_t off = g * s;
      std::vector<double>& out = t.error[size_t(si)][size_t(g)];
      for (int64_t k = 0; k < m; ++k) {
        quantization_errors(rows[size_t(k)] + off, s, n_opts, kinds.data(), widths.data(), e.data());
        for (int o = 0; o < n_opts; ++o) out[size_t(o)] += e[size_t(o)];
      }
      for (auto& v : out) v *= inv_m;
    }
  };
  int n_threads = options.n_threads > 0 ? options.n_threads : int(std::thread::hardware_concurrency());
  n_threads = std::max(1, std::min<int>(n_threads, int(std::max<size_t>(items.size(), 1))));
  std::vector<std::thread> pool;
  for (int i = 1; i < n_threads; ++i) pool.emplace_back(worker);
  worker();
  for (auto& th : pool) th.join();
  return t;
}

Result<Allocation> allocate_exact(const DistortionTable& table, int64_t budget_bits_per_token) {
  Status st = check_table(table);
  if (!st.is_ok()) return st;
  if (budget_bits_per_token < 0) return invalid_argument("negative bit budget");
  const size_t n_codes = table.group_sizes.size() * table.options.size();
  Result<Allocation> r = n_codes < 255 ? exact_dp<uint8_t>(table, budget_bits_per_token)
                                       : exact_dp<uint16_t>(table, budget_bits_per_token);
  return r;
}

Result<Allocation> allocate_lagrangian(const DistortionTable& table, int64_t budget_bits_per_token) {
  Status st = check_table(table);
  if (!st.is_ok()) return st;
  if (budget_bits_per_token < 0) return invalid_argument("negative bit budget");
  const std::vector<double> tail = tail_energy(table);
  const int64_t budget = budget_bits_per_token;

  LagrangianSolution best = lagrangian_dp(table, tail, 0.0);
  if (best.bits > budget) {
    // The rate falls as lambda grows; at lambda above the total distortion no bit pays for itself.
    double hi = 2.0 * tail[0] + 1e-300;
    best = lagrangian_dp(table, tail, hi);
    while (best.bits > budget && hi < 1e300) {  // only when errors are not monotone in bits
      hi *= 16.0;
      best = lagrangian_dp(table, tail, hi);
    }
    double lo = hi * 1e-24;
    LagrangianSolution lo_sol = lagrangian_dp(table, tail, lo);
    if (lo_sol.bits <= budget) {
      best = std::move(lo_sol);
    } else {
      // Geometric bisection: keeps `hi` feasible; stops when the bracket no longer moves the rate.
      for (int iter = 0; iter < 200 && hi / lo > 1.0 + 1e-13; ++iter) {
        const double mid = std::sqrt(lo * hi);
        LagrangianSolution sol = lagrangian_dp(table, tail, mid);
        if (sol.bits <= budget) {
          hi = mid;
          best = std::move(sol);
        } else {
          lo = mid;
        }
      }
    }
  }
  return make_allocation(table, best.chosen, best.end, budget);
}

Result<Allocation> allocate(const DistortionTable& table, int64_t budget_bits_per_token, const AllocatorOptions& options) {
  const double cells = double(table.rank) * double(std::max<int64_t>(budget_bits_per_token, 0) + 1);
  if (cells <= double(options.exact_dp_max_cells)) return allocate_exact(table, budget_bits_per_token);
  return allocate_lagrangian(table, budget_bits_per_token);
}

}  // namespace kvtc
