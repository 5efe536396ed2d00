// Replays a synthetic prefix-reuse trace through HostTier with LRU and with S3-FIFO at several
// capacities and prints the hit ratios side by side (bench/STORE_RESULTS.md).
//
// The trace: each request is a chain of block keys, as a serving engine's chained prefix hashes are:
// a system prompt (one of a few, Zipf-popular), often a document (one of many, Zipf-popular), then a
// suffix of blocks no other request shares (the user's question). A block's key hashes its parent's key
// with its own content id, so a document's blocks after two different system prompts are different keys.
// The store is used as an engine uses it: look up the chain block by block until the first miss (the
// matched prefix), then put every block from there on (the prefill computed them).
//
// kvtc_bench_store [--requests N] [--seed S]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kvtc/store.hpp"

namespace {

using kvtc::store::EvictionPolicy;

struct TraceParams {
  int n_requests = 40000;
  int n_system_prompts = 8;
  int system_blocks_min = 16, system_blocks_max = 96;
  double system_zipf = 1.0;
  int n_documents = 1000;
  int document_blocks_min = 8, document_blocks_max = 64;
  double document_zipf = 0.9;
  double p_document = 0.7;
  int suffix_blocks_min = 2, suffix_blocks_max = 24;
  uint32_t seed = 1;
};

// Zipf(s) over [0, n) by inverse CDF.
class Zipf {
 public:
  Zipf(int n, double s) : cdf_(size_t(n)) {
    double sum = 0;
    for (int i = 0; i < n; ++i) cdf_[size_t(i)] = sum += 1.0 / std::pow(double(i + 1), s);
    for (double& c : cdf_) c /= sum;
  }
  int operator()(std::mt19937_64& rng) const {
    const double u = std::uniform_real_distribution<double>(0, 1)(rng);
    return int(std::lower_bound(cdf_.begin(), cdf_.end(), u) - cdf_.begin());
  }

 private:
  std::vector<double> cdf_;
};

uint64_t mix(uint64_t parent, uint64_t content) {
  uint64_t h = parent ^ (content + 0x9e3779b97f4a7c15ull + (parent << 6) + (parent >> 2));
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  return h;
}

std::vector<std::vector<uint64_t>> make_trace(const TraceParams& p, uint64_t* unique_blocks, uint64_t* total_blocks) {
  std::mt19937_64 rng(p.seed);
  auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  std::vector<int> system_len(size_t(p.n_system_prompts)), doc_len(size_t(p.n_documents));
  for (int& n : system_len) n = uniform(p.system_blocks_min, p.system_blocks_max);
  for (int& n : doc_len) n = uniform(p.document_blocks_min, p.document_blocks_max);
  Zipf system_pick(p.n_system_prompts, p.system_zipf), doc_pick(p.n_documents, p.document_zipf);
  uint64_t next_unique = uint64_t(1) << 40;
  std::vector<std::vector<uint64_t>> trace;
  std::vector<uint64_t> seen;
  for (int r = 0; r < p.n_requests; ++r) {
    std::vector<uint64_t> keys;
    uint64_t h = 0;
    const int sp = system_pick(rng);
    for (int b = 0; b < system_len[size_t(sp)]; ++b) keys.push_back(h = mix(h, uint64_t(sp) << 20 | uint64_t(b)));
    if (std::bernoulli_distribution(p.p_document)(rng)) {
      const int d = doc_pick(rng);
      for (int b = 0; b < doc_len[size_t(d)]; ++b) keys.push_back(h = mix(h, uint64_t(1000 + d) << 20 | uint64_t(b)));
    }
    const int n_suffix = uniform(p.suffix_blocks_min, p.suffix_blocks_max);
    for (int b = 0; b < n_suffix; ++b) keys.push_back(h = mix(h, next_unique++));
    *total_blocks += keys.size();
    seen.insert(seen.end(), keys.begin(), keys.end());
    trace.push_back(std::move(keys));
  }
  std::sort(seen.begin(), seen.end());
  *unique_blocks = uint64_t(std::unique(seen.begin(), seen.end()) - seen.begin());
  return trace;
}

struct Outcome {
  double prefix_reuse = 0;  // blocks served from the store / blocks requested
  double lookup_hit_ratio = 0;  // hits / gets (gets stop at the first miss of a request)
  double ns_per_op = 0;
};

constexpr size_t kValueBytes = 56;  // + an 8-byte key: 64 bytes an entry; the ratios do not depend on it

Outcome replay(const std::vector<std::vector<uint64_t>>& trace, EvictionPolicy policy, uint64_t capacity_blocks) {
  kvtc::store::HostTierOptions o;
  o.capacity_bytes = capacity_blocks * (8 + kValueBytes);
  o.policy = policy;
  auto tier = std::move(kvtc::store::HostTier::create(o)).value();
  const std::vector<uint8_t> value(kValueBytes, 7);
  uint64_t served = 0, requested = 0, gets = 0, hits = 0, ops = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (const auto& keys : trace) {
    size_t i = 0;
    for (; i < keys.size(); ++i) {
      const std::string key(reinterpret_cast<const char*>(&keys[i]), 8);
      ++gets;
      if (!tier->get(key)->has_value()) break;
      ++hits;
    }
    served += i;
    for (; i < keys.size(); ++i) {
      (void)tier->put(std::string(reinterpret_cast<const char*>(&keys[i]), 8), value);
      ++ops;
    }
    requested += keys.size();
  }
  const double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
  ops += gets;
  return {double(served) / double(requested), double(hits) / double(gets), ns / double(ops)};
}

}  // namespace

int main(int argc, char** argv) {
  TraceParams p;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--requests") == 0) p.n_requests = std::atoi(argv[i + 1]);
    else if (std::strcmp(argv[i], "--seed") == 0) p.seed = uint32_t(std::atoi(argv[i + 1]));
    else {
      std::fprintf(stderr, "usage: kvtc_bench_store [--requests N] [--seed S]\n");
      return 1;
    }
  }
  uint64_t unique_blocks = 0, total_blocks = 0;
  const auto trace = make_trace(p, &unique_blocks, &total_blocks);
  std::printf("trace: %d requests, %llu block lookups, %llu distinct blocks; %d system prompts of %d-%d blocks "
              "(Zipf %.2f), %d documents of %d-%d blocks (Zipf %.2f, in %.0f%% of requests), unique suffixes of "
              "%d-%d blocks; seed %u\n",
              p.n_requests, static_cast<unsigned long long>(total_blocks),
              static_cast<unsigned long long>(unique_blocks), p.n_system_prompts, p.system_blocks_min,
              p.system_blocks_max, p.system_zipf, p.n_documents, p.document_blocks_min, p.document_blocks_max,
              p.document_zipf, 100 * p.p_document, p.suffix_blocks_min, p.suffix_blocks_max, p.seed);
  std::printf("prefix reuse = blocks served from the store / blocks requested (lookups stop at a request's first "
              "miss)\n\n");
  std::printf("| capacity (blocks) | %% of distinct | LRU reuse | S3-FIFO reuse | S3-FIFO - LRU | LRU ns/op | S3-FIFO ns/op |\n");
  std::printf("|---:|---:|---:|---:|---:|---:|---:|\n");
  for (double frac : {0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4}) {
    const uint64_t cap = std::max<uint64_t>(16, uint64_t(frac * double(unique_blocks)));
    const Outcome lru = replay(trace, EvictionPolicy::kLru, cap);
    const Outcome s3 = replay(trace, EvictionPolicy::kS3Fifo, cap);
    std::printf("| %llu | %.1f%% | %.4f | %.4f | %+.4f | %.0f | %.0f |\n", static_cast<unsigned long long>(cap),
                100 * frac, lru.prefix_reuse, s3.prefix_reuse, s3.prefix_reuse - lru.prefix_reuse, lru.ns_per_op,
                s3.ns_per_op);
  }
  const Outcome all = replay(trace, EvictionPolicy::kLru, unique_blocks);
  std::printf("| %llu (everything) | 100%% | %.4f | %.4f | (the trace's reuse ceiling) | %.0f | |\n",
              static_cast<unsigned long long>(unique_blocks), all.prefix_reuse, all.prefix_reuse, all.ns_per_op);
  return 0;
}
