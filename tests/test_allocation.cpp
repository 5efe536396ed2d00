// Bit allocation: the exact DP against brute force, the Lagrangian's optimality at its own rate, the
// predicted error against a real quantise/dequantise pass, and a wide model in seconds.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <random>
#include <vector>

#include "core/allocation.hpp"
#include "core/quant.hpp"
#include "util/half.hpp"

namespace kvtc {
namespace {

std::vector<GroupOption> all_options() {
  std::vector<GroupOption> o{{GroupKind::kDropped, 0}};
  for (int w = 1; w <= kMaxWidthBits; ++w) o.push_back({GroupKind::kInt, uint8_t(w)});
  for (int w = 1; w <= kMaxWidthBits; ++w) o.push_back({GroupKind::kIntAffine, uint8_t(w)});
  o.push_back({GroupKind::kFloat16, 16});
  return o;
}

int64_t option_bits(int s, const GroupOption& o) {
  return int64_t(s) * value_bits(o.kind, o.width_bits) + side_bits_per_token(o.kind);
}

// A random table whose dropped entries are consistent with the component energies; other entries
// random (the DP must be exact for any table).
DistortionTable random_table(int64_t rank, std::vector<int> sizes, std::vector<GroupOption> options, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  DistortionTable t;
  t.rank = rank;
  t.group_sizes = sizes;
  t.options = options;
  t.residual_error = 0.25 * u(rng);
  for (int64_t c = 0; c < rank; ++c) t.component_energy.push_back(4.0 * std::exp(-0.3 * double(c)) * (0.5 + u(rng)));
  for (int s : sizes) {
    std::vector<std::vector<double>> groups;
    for (int64_t g = 0; g + 1 <= rank / s; ++g) {
      double energy = 0.0;
      for (int64_t c = g * s; c < (g + 1) * s; ++c) energy += t.component_energy[size_t(c)];
      std::vector<double> e;
      for (const auto& o : options) {
        if (o.kind == GroupKind::kDropped) {
          e.push_back(energy);
        } else {
          const double bits = double(value_bits(o.kind, o.width_bits));
          e.push_back(energy * std::exp2(-2.0 * bits) * (0.5 + 2.0 * u(rng)));
        }
      }
      groups.push_back(e);
    }
    t.error.push_back(groups);
  }
  return t;
}

// Every valid allocation: calls visit(distortion, bits) for each.
void enumerate(const DistortionTable& t, const std::function<void(double, int64_t)>& visit) {
  std::vector<double> tail(size_t(t.rank) + 1, t.residual_error);
  for (int64_t i = t.rank - 1; i >= 0; --i) tail[size_t(i)] = tail[size_t(i) + 1] + t.component_energy[size_t(i)];
  std::function<void(int64_t, double, int64_t)> rec = [&](int64_t i, double d, int64_t bits) {
    visit(d + tail[size_t(i)], bits);  // drop everything from i on
    for (size_t si = 0; si < t.group_sizes.size(); ++si) {
      const int s = t.group_sizes[si];
      if (i % s != 0 || i + s > t.rank) continue;
      for (size_t o = 0; o < t.options.size(); ++o)
        rec(i + s, d + t.error[si][size_t(i / s)][o], bits + option_bits(s, t.options[o]));
    }
  };
  rec(0, 0.0, 0);
}

// What an allocation's groups cost and lose according to the table (independent of the allocator).
void check_allocation(const DistortionTable& t, const Allocation& a, int64_t budget) {
  ASSERT_LE(a.bits_per_token, budget);
  int64_t next = 0, bits = 0;
  double err = 0.0;
  for (size_t k = 0; k < a.groups.size(); ++k) {
    const Group& g = a.groups[k];
    ASSERT_EQ(int64_t(g.first_component), next) << "groups must be contiguous from 0";
    ASSERT_GT(g.n_components, 0u);
    if (k > 0) {
      ASSERT_FALSE(g.kind == GroupKind::kDropped && a.groups[k - 1].kind == GroupKind::kDropped);
    }
    bits += g.bits_per_token();
    next += g.n_components;
    if (g.kind == GroupKind::kDropped) {
      for (int64_t c = g.first_component; c < next; ++c) err += t.component_energy[size_t(c)];
      continue;
    }
    // A kept group is one aligned candidate of the table.
    bool found = false;
    for (size_t si = 0; si < t.group_sizes.size(); ++si) {
      if (t.group_sizes[si] != int(g.n_components)) continue;
      ASSERT_EQ(g.first_component % g.n_components, 0u) << "unaligned group";
      for (size_t o = 0; o < t.options.size(); ++o)
        if (t.options[o].kind == g.kind && t.options[o].width_bits == g.width_bits) {
          err += t.error[si][g.first_component / g.n_components][o];
          found = true;
        }
    }
    ASSERT_TRUE(found) << "group of size " << g.n_components << " is not a table candidate";
  }
  if (!a.groups.empty()) {
    ASSERT_NE(a.groups.back().kind, GroupKind::kDropped) << "dropped tail must be omitted";
  }
  ASSERT_LE(next, t.rank);
  for (int64_t c = next; c < t.rank; ++c) err += t.component_energy[size_t(c)];
  err += t.residual_error;
  EXPECT_EQ(bits, a.bits_per_token);
  EXPECT_NEAR(err, a.predicted_error, 1e-9 * (1.0 + err));
}

TEST(Allocation, ExactDpEqualsBruteForce) {
  const std::vector<GroupOption> opts = {{GroupKind::kDropped, 0},
                                         {GroupKind::kInt, 2},
                                         {GroupKind::kInt, 4},
                                         {GroupKind::kIntAffine, 3},
                                         {GroupKind::kFloat16, 16}};
  int n_checked = 0;
  for (uint64_t seed = 1; seed <= 4; ++seed) {
    const DistortionTable t = random_table(8, {1, 2, 4}, opts, seed);
    for (int64_t budget : {0, 5, 17, 20, 33, 40, 64, 80, 100, 150, 300}) {
      double best = std::numeric_limits<double>::infinity();
      enumerate(t, [&](double d, int64_t bits) {
        if (bits <= budget) best = std::min(best, d);
      });
      auto a = allocate_exact(t, budget);
      ASSERT_TRUE(a.is_ok()) << a.status().to_string();
      check_allocation(t, *a, budget);
      EXPECT_NEAR(a->predicted_error, best, 1e-12 * best) << "seed " << seed << " budget " << budget;
      ++n_checked;
    }
  }
  EXPECT_EQ(n_checked, 44);
}

TEST(Allocation, ExactDpEqualsBruteForceAllOptionsOddRank) {
  // Smallest size 2 and an odd rank: the last component fits no group and can only be dropped.
  const DistortionTable t = random_table(5, {2, 4}, all_options(), 9);
  for (int64_t budget : {0, 10, 24, 40, 60, 90}) {
    double best = std::numeric_limits<double>::infinity();
    enumerate(t, [&](double d, int64_t bits) {
      if (bits <= budget) best = std::min(best, d);
    });
    auto a = allocate_exact(t, budget);
    ASSERT_TRUE(a.is_ok()) << a.status().to_string();
    check_allocation(t, *a, budget);
    EXPECT_NEAR(a->predicted_error, best, 1e-12 * best) << "budget " << budget;
    EXPECT_LE(a->n_kept_components(), 4);
  }
}

TEST(Allocation, LagrangianIsOptimalAtItsOwnRateAndWithinBudget) {
  const std::vector<GroupOption> opts = {{GroupKind::kDropped, 0},
                                         {GroupKind::kInt, 1},
                                         {GroupKind::kInt, 3},
                                         {GroupKind::kIntAffine, 2},
                                         {GroupKind::kFloat16, 16}};
  for (uint64_t seed = 11; seed <= 14; ++seed) {
    const DistortionTable t = random_table(8, {1, 2, 4}, opts, seed);
    for (int64_t budget : {0, 8, 19, 30, 45, 70, 120, 200}) {
      auto a = allocate_lagrangian(t, budget);
      ASSERT_TRUE(a.is_ok()) << a.status().to_string();
      check_allocation(t, *a, budget);
      bool beaten = false;
      double best_in_budget = std::numeric_limits<double>::infinity();
      enumerate(t, [&](double d, int64_t bits) {
        if (bits <= a->bits_per_token && d < a->predicted_error * (1.0 - 1e-12)) beaten = true;
        if (bits <= budget) best_in_budget = std::min(best_in_budget, d);
      });
      EXPECT_FALSE(beaten) << "seed " << seed << " budget " << budget;
      EXPECT_GE(a->predicted_error, best_in_budget * (1.0 - 1e-12));
    }
  }
}

TEST(Allocation, ZeroBudgetDropsEverything) {
  const DistortionTable t = random_table(16, {1, 4, 16}, all_options(), 3);
  double total = t.residual_error;
  for (double e : t.component_energy) total += e;
  for (auto* fn : {&allocate_exact, &allocate_lagrangian}) {
    auto a = (*fn)(t, 0);
    ASSERT_TRUE(a.is_ok());
    EXPECT_TRUE(a->groups.empty());
    EXPECT_EQ(a->bits_per_token, 0);
    EXPECT_EQ(a->n_kept_components(), 0);
    EXPECT_NEAR(a->predicted_error, total, 1e-12 * total);
  }
}

// Heavy-tailed coefficients with a decaying spectrum, like projected KV vectors.
std::vector<float> synthetic_coefficients(int64_t n, int64_t rank, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::student_t_distribution<float> t(4.0f);
  std::vector<float> c(static_cast<size_t>(n * rank));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < rank; ++j) c[size_t(i * rank + j)] = t(rng) * 3.0f * std::exp(-0.04f * float(j));
  return c;
}

TEST(Allocation, MeasuredErrorEqualsPredictedError) {
  const int64_t n = 300, rank = 96;
  const auto coef = synthetic_coefficients(n, rank, 42);
  AllocatorOptions opt;
  opt.group_sizes = {1, 4, 16, 32};
  opt.max_samples = n;
  opt.n_threads = 2;
  const double residual = 0.125;
  auto table = measure_distortion(coef.data(), n, rank, residual, opt);
  ASSERT_TRUE(table.is_ok()) << table.status().to_string();
  int n_kinds_seen[4] = {0, 0, 0, 0};
  for (int64_t budget : {24, 100, 300, 700, 1400}) {
    auto a = allocate(*table, budget, opt);
    ASSERT_TRUE(a.is_ok());
    check_allocation(*table, *a, budget);
    // Quantise the same samples group by group, as an encoder would, and measure.
    double err = 0.0;
    std::vector<uint8_t> codes(static_cast<size_t>(rank));
    std::vector<float> out(static_cast<size_t>(rank));
    for (int64_t i = 0; i < n; ++i) {
      const float* x = &coef[size_t(i * rank)];
      int64_t next = 0;
      for (const Group& g : a->groups) {
        const float* xg = x + g.first_component;
        const int m = int(g.n_components);
        ++n_kinds_seen[int(g.kind)];
        if (g.kind == GroupKind::kDropped) {
          for (int k = 0; k < m; ++k) out[size_t(k)] = 0.0f;
        } else if (g.kind == GroupKind::kFloat16) {
          for (int k = 0; k < m; ++k) out[size_t(k)] = round_to_f16(xg[k]);
        } else {
          const TokenQuantParams p = quantize_token(xg, m, g.kind, g.width_bits, codes.data());
          dequantize_token(codes.data(), m, g.kind, g.width_bits, p, out.data());
        }
        for (int k = 0; k < m; ++k) {
          const double d = double(xg[k]) - double(out[size_t(k)]);
          err += d * d;
        }
        next = g.first_component + g.n_components;
      }
      for (int64_t c = next; c < rank; ++c) err += double(x[c]) * x[c];
    }
    err = err / double(n) + residual;
    EXPECT_NEAR(a->predicted_error, err, 1e-9 * err) << "budget " << budget;
  }
  EXPECT_GT(n_kinds_seen[int(GroupKind::kInt)] + n_kinds_seen[int(GroupKind::kIntAffine)], 0);
}

TEST(Allocation, PredictedErrorFallsAsBudgetGrows) {
  const int64_t n = 200, rank = 64;
  const auto coef = synthetic_coefficients(n, rank, 7);
  AllocatorOptions opt;
  opt.group_sizes = {1, 4, 16, 64};
  auto table = measure_distortion(coef.data(), n, rank, 0.0, opt);
  ASSERT_TRUE(table.is_ok());
  double prev = std::numeric_limits<double>::infinity();
  for (int64_t budget = 0; budget <= 1024; budget += 64) {
    auto exact = allocate_exact(*table, budget);
    auto lag = allocate_lagrangian(*table, budget);
    ASSERT_TRUE(exact.is_ok() && lag.is_ok());
    EXPECT_LE(exact->predicted_error, prev);
    EXPECT_LE(exact->predicted_error, lag->predicted_error * (1.0 + 1e-12));
    EXPECT_LE(lag->bits_per_token, budget);
    prev = exact->predicted_error;
  }
}

TEST(Allocation, DefaultOptionsAndValidation) {
  const auto coef = synthetic_coefficients(10, 8, 1);
  AllocatorOptions opt;
  opt.group_sizes = {1, 4};
  auto t = measure_distortion(coef.data(), 10, 8, 0.0, opt);
  ASSERT_TRUE(t.is_ok());
  EXPECT_EQ(t->options.size(), 18u);
  EXPECT_EQ(t->error.size(), 2u);
  EXPECT_EQ(t->error[1].size(), 2u);
  opt.group_sizes = {4, 6};
  EXPECT_EQ(measure_distortion(coef.data(), 10, 8, 0.0, opt).status().code(), StatusCode::kInvalidArgument);
  opt.group_sizes = {1, 4};
  opt.options = {{GroupKind::kInt, 9}};
  EXPECT_EQ(measure_distortion(coef.data(), 10, 8, 0.0, opt).status().code(), StatusCode::kInvalidArgument);
  DistortionTable broken = *t;
  broken.error[1].pop_back();
  EXPECT_EQ(allocate_exact(broken, 10).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(allocate_lagrangian(broken, 10).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(budget_bits_for_ratio(2048, 20.0), 1638);
  EXPECT_EQ(budget_bits_for_ratio(81920, 16.0), 81920);
}

// A wide model: p = 81,920, rank 10,000, a table fabricated from a decaying spectrum (what measuring
// would give for Gaussian coefficients), so that only the allocator is timed.
TEST(Allocation, WideModelAllocatesInSeconds) {
  const int64_t p = 81920, rank = 10000;
  DistortionTable t;
  t.rank = rank;
  t.group_sizes = {1, 4, 16, 64, 256, 1024};
  t.options = all_options();
  std::vector<double> var(static_cast<size_t>(rank));
  for (int64_t c = 0; c < rank; ++c) var[size_t(c)] = 100.0 * std::pow(double(c + 1), -1.3);
  t.component_energy = var;
  t.residual_error = 0.05 * var[0];
  for (int s : t.group_sizes) {
    std::vector<std::vector<double>> groups;
    for (int64_t g = 0; g < rank / s; ++g) {
      double energy = 0.0;
      for (int64_t c = g * s; c < (g + 1) * s; ++c) energy += var[size_t(c)];
      std::vector<double> e;
      for (const auto& o : t.options) {
        const int w = o.width_bits;
        switch (o.kind) {
          case GroupKind::kDropped: e.push_back(energy); break;
          case GroupKind::kFloat16: e.push_back(energy * 1e-8); break;
          case GroupKind::kInt: e.push_back(energy * std::min(1.0, 2.7 * std::exp2(-2.0 * w))); break;
          case GroupKind::kIntAffine: e.push_back(energy * std::min(1.0, 2.5 * std::exp2(-2.0 * w))); break;
        }
      }
      groups.push_back(e);
    }
    t.error.push_back(groups);
  }
  const int64_t budget = budget_bits_for_ratio(p, 20.0);
  AllocatorOptions opt;  // defaults: rank * budget is far above the exact DP's cell limit
  ASSERT_GT(double(rank) * double(budget), double(opt.exact_dp_max_cells));
  const auto t0 = std::chrono::steady_clock::now();
  auto a = allocate(t, budget, opt);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(a.is_ok()) << a.status().to_string();
  check_allocation(t, *a, budget);
  EXPECT_GT(a->bits_per_token, budget * 9 / 10) << "a hull point this far below the budget wastes bits";
  EXPECT_GT(a->n_kept_components(), 100);
  double total = t.residual_error;
  for (double v : var) total += v;
  EXPECT_LT(a->predicted_error, 0.2 * total);
  std::printf("[ wide     ] p %lld rank %lld budget %lld bits: used %lld, kept %lld, %.3f s\n", (long long)p,
              (long long)rank, (long long)budget, (long long)a->bits_per_token, (long long)a->n_kept_components(),
              seconds);
}

}  // namespace
}  // namespace kvtc
