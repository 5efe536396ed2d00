// PCA: recovery of a known spectrum, batch independence, the randomized path against the exact one,
// determinism, and the large-mean case that breaks naive float accumulation.
#include <gtest/gtest.h>

#include <cblas.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "core/pca.hpp"

namespace kvtc {
namespace {

// n_dirs orthonormal directions of length p (rows), by Gram-Schmidt on Gaussian vectors.
std::vector<double> orthonormal_rows(int64_t n_dirs, int64_t p, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  std::vector<double> u(static_cast<size_t>(n_dirs * p));
  for (auto& v : u) v = normal(rng);
  for (int64_t j = 0; j < n_dirs; ++j) {
    double* r = &u[size_t(j * p)];
    for (int pass = 0; pass < 2; ++pass) {
      for (int64_t i = 0; i < j; ++i) {
        const double* q = &u[size_t(i * p)];
        double dot = 0.0;
        for (int64_t f = 0; f < p; ++f) dot += r[f] * q[f];
        for (int64_t f = 0; f < p; ++f) r[f] -= dot * q[f];
      }
    }
    double norm = 0.0;
    for (int64_t f = 0; f < p; ++f) norm += r[f] * r[f];
    norm = std::sqrt(norm);
    for (int64_t f = 0; f < p; ++f) r[f] /= norm;
  }
  return u;
}

struct Synthetic {
  int64_t n, p;
  std::vector<float> rows;        // [n][p]
  std::vector<double> dirs;       // [n_dirs][p]
  std::vector<double> variances;  // [n_dirs]
  std::vector<double> mean;       // [p]
  double noise_var;
};

// x = mean + sum_j a_j sqrt(var_j) u_j + isotropic noise, a_j ~ N(0, 1).
Synthetic make_data(int64_t n, int64_t p, const std::vector<double>& variances, double noise_var, double mean_scale,
                    uint64_t seed) {
  Synthetic s{n, p, {}, orthonormal_rows(int64_t(variances.size()), p, seed), variances, {}, noise_var};
  const int64_t k = int64_t(variances.size());
  std::mt19937_64 rng(seed + 1);
  std::normal_distribution<float> normal;
  s.mean.resize(size_t(p));
  for (auto& m : s.mean) m = mean_scale * normal(rng);
  std::vector<float> coef(static_cast<size_t>(n * k));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < k; ++j) coef[size_t(i * k + j)] = normal(rng) * float(std::sqrt(variances[size_t(j)]));
  std::vector<float> dirs_f(s.dirs.begin(), s.dirs.end());
  s.rows.assign(size_t(n * p), 0.0f);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, blasint(n), blasint(p), blasint(k), 1.0f, coef.data(),
              blasint(k), dirs_f.data(), blasint(p), 0.0f, s.rows.data(), blasint(p));
  const float noise_sd = float(std::sqrt(noise_var));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t f = 0; f < p; ++f) s.rows[size_t(i * p + f)] += float(s.mean[size_t(f)]) + noise_sd * normal(rng);
  return s;
}

double dot(const float* a, const double* b, int64_t p) {
  double d = 0.0;
  for (int64_t f = 0; f < p; ++f) d += double(a[f]) * b[f];
  return d;
}
double dot(const float* a, const float* b, int64_t p) {
  double d = 0.0;
  for (int64_t f = 0; f < p; ++f) d += double(a[f]) * b[f];
  return d;
}

void expect_orthonormal(const PcaBasis& b, double tol) {
  for (int64_t i = 0; i < b.rank; ++i)
    for (int64_t j = i; j < std::min<int64_t>(b.rank, i + 4); ++j)
      EXPECT_NEAR(dot(&b.components[size_t(i * b.n_features)], &b.components[size_t(j * b.n_features)], b.n_features),
                  i == j ? 1.0 : 0.0, tol)
          << i << "," << j;
}

MultiPassSource source_of(const Synthetic& s, int64_t batch, int* n_passes = nullptr) {
  return [&s, batch, n_passes](const BatchSink& sink) {
    if (n_passes) ++*n_passes;
    for (int64_t r = 0; r < s.n; r += batch) sink(&s.rows[size_t(r * s.p)], std::min(batch, s.n - r));
    return Status::ok();
  };
}

TEST(Pca, RecoversKnownSpectrum) {
  std::vector<double> var;
  for (int j = 0; j < 12; ++j) var.push_back(10.0 * std::pow(0.6, j));
  const Synthetic s = make_data(20000, 64, var, 0.001, 2.0, 5);
  CovarianceAccumulator acc(64);
  acc.add(s.rows.data(), s.n);
  EXPECT_EQ(acc.n_samples(), 20000);
  auto b = acc.solve(16);
  ASSERT_TRUE(b.is_ok()) << b.status().to_string();
  EXPECT_EQ(b->rank, 16);
  EXPECT_EQ(b->n_features, 64);
  EXPECT_EQ(b->n_samples, 20000);
  ASSERT_EQ(b->components.size(), 16u * 64u);
  expect_orthonormal(*b, 1e-5);
  // Sample eigenvalues of n Gaussian draws: relative sd about sqrt(2/n) = 1%; allow 5%.
  for (size_t j = 0; j < var.size(); ++j) {
    EXPECT_NEAR(b->variance[j], var[j] + s.noise_var, 0.05 * var[j]) << j;
    // Angle between the recovered and the true direction.
    EXPECT_GT(std::fabs(dot(&b->components[j * 64], &s.dirs[j * 64], 64)), 0.99) << j;
  }
  for (size_t j = var.size(); j < 16; ++j) EXPECT_LT(b->variance[j], 0.002);
  for (size_t j = 1; j < 16; ++j) EXPECT_GE(b->variance[j - 1], b->variance[j]);
  double total = 64 * s.noise_var;
  for (double v : var) total += v;
  EXPECT_NEAR(b->total_variance, total, 0.03 * total);
  for (int f = 0; f < 64; ++f) EXPECT_NEAR(b->mean[size_t(f)], s.mean[size_t(f)], 0.1);
  // Sign convention: the largest entry of each component is positive.
  for (int64_t j = 0; j < 16; ++j) {
    const float* v = &b->components[size_t(j * 64)];
    float best = 0.0f;
    for (int f = 0; f < 64; ++f)
      if (std::fabs(v[f]) > std::fabs(best)) best = v[f];
    EXPECT_GT(best, 0.0f);
  }
}

TEST(Pca, FullRankByDefaultAndTraceMatches) {
  const Synthetic s = make_data(500, 24, {5.0, 3.0, 1.0}, 0.1, 1.0, 8);
  CovarianceAccumulator acc(24);
  acc.add(s.rows.data(), s.n);
  auto b = acc.solve(0);
  ASSERT_TRUE(b.is_ok());
  EXPECT_EQ(b->rank, 24);
  double sum = 0.0;
  for (double v : b->variance) sum += v;
  EXPECT_NEAR(sum, b->total_variance, 1e-9 * b->total_variance);
  expect_orthonormal(*b, 1e-5);
}

TEST(Pca, StreamingInBatchesEqualsOneBatch) {
  const Synthetic s = make_data(1000, 48, {4.0, 2.0, 1.5, 1.0, 0.5}, 0.05, 3.0, 9);
  CovarianceAccumulator one(48), many(48);
  one.add(s.rows.data(), s.n);
  const int64_t cuts[] = {0, 1, 8, 300, 301, 777, 1000};
  for (size_t i = 0; i + 1 < std::size(cuts); ++i) many.add(&s.rows[size_t(cuts[i] * 48)], cuts[i + 1] - cuts[i]);
  many.add(s.rows.data(), 0);
  EXPECT_EQ(many.n_samples(), one.n_samples());
  auto a = one.solve(8), b = many.solve(8);
  ASSERT_TRUE(a.is_ok() && b.is_ok());
  for (size_t j = 0; j < 8; ++j) EXPECT_NEAR(a->variance[j], b->variance[j], 1e-10 * a->variance[0]);
  for (size_t j = 0; j < 5; ++j)
    for (size_t f = 0; f < 48; ++f) EXPECT_NEAR(a->components[j * 48 + f], b->components[j * 48 + f], 1e-5);
  for (size_t f = 0; f < 48; ++f) EXPECT_NEAR(a->mean[f], b->mean[f], 1e-5);
}

TEST(Pca, RandomizedMatchesExactOnWideDecayingSpectrum) {
  const int64_t p = 2048, n = 3000, rank = 64;
  std::vector<double> var;
  for (int j = 0; j < 160; ++j) var.push_back(50.0 * std::exp(-double(j) / 8.0));
  const Synthetic s = make_data(n, p, var, 1e-4, 1.0, 21);

  auto t0 = std::chrono::steady_clock::now();
  CovarianceAccumulator acc(p);
  acc.add(s.rows.data(), n);
  auto exact = acc.solve(rank);
  ASSERT_TRUE(exact.is_ok()) << exact.status().to_string();
  auto t1 = std::chrono::steady_clock::now();
  RandomizedPcaOptions opt;
  opt.rank = rank;
  int n_passes = 0;
  auto rnd = randomized_pca(p, source_of(s, 256, &n_passes), opt);
  ASSERT_TRUE(rnd.is_ok()) << rnd.status().to_string();
  auto t2 = std::chrono::steady_clock::now();
  std::printf("[ timing   ] p %lld n %lld rank %lld: exact %.2f s, randomized %.2f s\n", (long long)p, (long long)n,
              (long long)rank, std::chrono::duration<double>(t1 - t0).count(),
              std::chrono::duration<double>(t2 - t1).count());

  EXPECT_EQ(n_passes, 2 + opt.power_iterations);
  EXPECT_EQ(rnd->rank, rank);
  EXPECT_EQ(rnd->n_samples, n);
  expect_orthonormal(*rnd, 1e-4);
  EXPECT_NEAR(rnd->total_variance, exact->total_variance, 1e-4 * exact->total_variance);
  for (int64_t f = 0; f < p; ++f) EXPECT_NEAR(rnd->mean[size_t(f)], exact->mean[size_t(f)], 1e-4);
  for (int64_t j = 0; j < rank; ++j) {
    EXPECT_NEAR(rnd->variance[size_t(j)], exact->variance[size_t(j)], 1e-3 * exact->variance[size_t(j)]) << j;
    const double c = dot(&rnd->components[size_t(j * p)], &exact->components[size_t(j * p)], p);
    EXPECT_GT(std::fabs(c), j < 48 ? 0.9999 : 0.99) << j;
  }
}

TEST(Pca, LargeMeanDoesNotLoseTheSpread) {
  // Features sitting at 1000 with unit-scale spread: a naive float sum of x x^T would lose it.
  const int64_t p = 256, n = 4000;
  const Synthetic s0 = make_data(n, p, {2.0, 1.0, 0.5, 0.25}, 0.01, 0.0, 33);
  Synthetic s = s0;
  for (auto& v : s.rows) v += 1000.0f;
  CovarianceAccumulator acc(p);
  acc.add(s.rows.data(), n);
  auto exact = acc.solve(8);
  RandomizedPcaOptions opt;
  opt.rank = 8;
  auto rnd = randomized_pca(p, source_of(s, 100), opt);
  ASSERT_TRUE(exact.is_ok() && rnd.is_ok());
  for (size_t j = 0; j < 4; ++j) {
    EXPECT_NEAR(exact->variance[j], s.variances[j] + s.noise_var, 0.08 * s.variances[j]) << j;
    EXPECT_NEAR(rnd->variance[j], exact->variance[j], 2e-3 * exact->variance[j]) << j;
  }
  EXPECT_NEAR(rnd->total_variance, exact->total_variance, 1e-3 * exact->total_variance);
}

TEST(Pca, Deterministic) {
  const Synthetic s = make_data(800, 300, {9.0, 4.0, 2.0, 1.0, 0.5, 0.3}, 0.02, 1.0, 44);
  RandomizedPcaOptions opt;
  opt.rank = 10;
  auto a = randomized_pca(300, source_of(s, 64), opt);
  auto b = randomized_pca(300, source_of(s, 64), opt);
  ASSERT_TRUE(a.is_ok() && b.is_ok());
  EXPECT_EQ(a->components, b->components);
  EXPECT_EQ(a->variance, b->variance);
  CovarianceAccumulator x(300), y(300);
  x.add(s.rows.data(), s.n);
  y.add(s.rows.data(), s.n);
  auto ea = x.solve(10), eb = y.solve(10);
  ASSERT_TRUE(ea.is_ok() && eb.is_ok());
  EXPECT_EQ(ea->components, eb->components);
  EXPECT_EQ(ea->variance, eb->variance);
}

TEST(Pca, Errors) {
  CovarianceAccumulator acc(8);
  EXPECT_EQ(acc.solve(4).status().code(), StatusCode::kInvalidArgument);
  std::vector<float> row(8, 1.0f);
  acc.add(row.data(), 1);
  EXPECT_EQ(acc.solve(4).status().code(), StatusCode::kInvalidArgument);

  const Synthetic s = make_data(50, 8, {1.0}, 0.1, 0.0, 1);
  RandomizedPcaOptions opt;
  opt.rank = 9;
  EXPECT_EQ(randomized_pca(8, source_of(s, 10), opt).status().code(), StatusCode::kInvalidArgument);
  opt.rank = 2;
  const MultiPassSource failing = [](const BatchSink&) { return io_error("disk gone"); };
  EXPECT_EQ(randomized_pca(8, failing, opt).status().code(), StatusCode::kIo);
  // A source that changes between passes is refused rather than silently mixed.
  int calls = 0;
  const MultiPassSource shrinking = [&](const BatchSink& sink) {
    sink(s.rows.data(), calls++ == 0 ? 50 : 40);
    return Status::ok();
  };
  EXPECT_EQ(randomized_pca(8, shrinking, opt).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvtc
