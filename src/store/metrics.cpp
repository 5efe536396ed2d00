// Latency histograms, metric snapshots, and their JSON and Prometheus renderings.
#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <limits>
#include <nlohmann/json.hpp>

#include "store/counters.hpp"

namespace kvtc::store {

const std::vector<double>& LatencyHistogram::upper_bounds_us() {
  static const std::vector<double> bounds = [] {
    std::vector<double> b;
    for (double decade = 1; decade <= 1e6; decade *= 10) {
      for (double m : {1.0, 2.0, 5.0}) {
        if (m * decade <= 1e6) b.push_back(m * decade);
      }
    }
    return b;  // 1, 2, 5, ..., 500000, 1000000: 19 bounds
  }();
  return bounds;
}

double LatencyHistogram::quantile_upper_bound_us(double q) const {
  if (count == 0) return 0;
  const double target = std::max(1.0, std::ceil(q * double(count)));
  uint64_t seen = 0;
  const auto& bounds = upper_bounds_us();
  for (size_t i = 0; i < bucket_counts.size(); ++i) {
    seen += bucket_counts[i];
    if (double(seen) >= target) return i < bounds.size() ? bounds[i] : std::numeric_limits<double>::infinity();
  }
  return std::numeric_limits<double>::infinity();
}

namespace detail {

void AtomicHistogram::observe_us(double us) {
  const auto& bounds = LatencyHistogram::upper_bounds_us();
  const size_t i = size_t(std::lower_bound(bounds.begin(), bounds.end(), us) - bounds.begin());
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  sum_ns_.fetch_add(uint64_t(std::max(0.0, us) * 1000.0), std::memory_order_relaxed);
}

LatencyHistogram AtomicHistogram::snapshot() const {
  LatencyHistogram h;
  h.bucket_counts.resize(buckets_.size());
  uint64_t total = 0;
  for (size_t i = 0; i < buckets_.size(); ++i) {
    h.bucket_counts[i] = buckets_[i].load(std::memory_order_relaxed);
    total += h.bucket_counts[i];
  }
  h.count = total;  // consistent with the buckets even while others observe
  h.sum_us = double(sum_ns_.load(std::memory_order_relaxed)) / 1000.0;
  return h;
}

TierMetrics TierCounters::snapshot() const {
  TierMetrics m;
  m.hits = hits.load(std::memory_order_relaxed);
  m.misses = misses.load(std::memory_order_relaxed);
  m.puts = puts.load(std::memory_order_relaxed);
  m.put_errors = put_errors.load(std::memory_order_relaxed);
  m.evictions = evictions.load(std::memory_order_relaxed);
  m.corruptions = corruptions.load(std::memory_order_relaxed);
  m.errors = errors.load(std::memory_order_relaxed);
  m.reconnects = reconnects.load(std::memory_order_relaxed);
  m.bytes_put = bytes_put.load(std::memory_order_relaxed);
  m.bytes_raw_put = bytes_raw_put.load(std::memory_order_relaxed);
  m.get_latency = get_latency.snapshot();
  m.put_latency = put_latency.snapshot();
  return m;
}

}  // namespace detail

namespace {

nlohmann::json histogram_json(const LatencyHistogram& h) {
  nlohmann::json buckets = nlohmann::json::array();
  const auto& bounds = LatencyHistogram::upper_bounds_us();
  for (size_t i = 0; i < h.bucket_counts.size(); ++i) {
    nlohmann::json b;
    if (i < bounds.size()) {
      b["le"] = bounds[i];
    } else {
      b["le"] = "+Inf";
    }
    b["count"] = h.bucket_counts[i];
    buckets.push_back(b);
  }
  auto q = [&](double p) -> nlohmann::json {
    const double v = h.quantile_upper_bound_us(p);
    if (std::isinf(v)) return "+Inf";
    return v;
  };
  return {{"buckets", buckets}, {"sum", h.sum_us}, {"count", h.count}, {"p50", q(0.5)}, {"p99", q(0.99)}};
}

std::string fmt_double(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

}  // namespace

std::string metrics_json(const StoreMetrics& metrics) {
  nlohmann::json tiers = nlohmann::json::object();
  for (const TierMetrics& t : metrics.tiers) {
    tiers[t.tier] = {{"hits", t.hits},
                     {"misses", t.misses},
                     {"puts", t.puts},
                     {"put_errors", t.put_errors},
                     {"evictions", t.evictions},
                     {"corruptions", t.corruptions},
                     {"errors", t.errors},
                     {"reconnects", t.reconnects},
                     {"bytes_put", t.bytes_put},
                     {"bytes_raw_put", t.bytes_raw_put},
                     {"compression_ratio",
                      t.bytes_put && t.bytes_raw_put ? double(t.bytes_raw_put) / double(t.bytes_put) : 0.0},
                     {"entries", t.entries},
                     {"bytes_stored", t.bytes_stored},
                     {"capacity_bytes", t.capacity_bytes},
                     {"hit_ratio", t.hits + t.misses ? double(t.hits) / double(t.hits + t.misses) : 0.0},
                     {"get_latency_us", histogram_json(t.get_latency)},
                     {"put_latency_us", histogram_json(t.put_latency)}};
  }
  nlohmann::json j = {{"tiers", tiers},
                      {"promotions", metrics.promotions},
                      {"demotions", metrics.demotions},
                      {"demotion_errors", metrics.demotion_errors}};
  return j.dump(2);
}

std::string metrics_prometheus(const StoreMetrics& metrics) {
  std::string out;
  auto family = [&](const char* name, const char* type, const char* help) {
    out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
  };
  auto tier_values = [&](const char* name, const char* type, const char* help, uint64_t TierMetrics::*field) {
    family(name, type, help);
    for (const TierMetrics& t : metrics.tiers) {
      out += std::string(name) + "{tier=\"" + t.tier + "\"} " + std::to_string(t.*field) + "\n";
    }
  };
  tier_values("kvtc_store_hits_total", "counter", "Gets that returned a value.", &TierMetrics::hits);
  tier_values("kvtc_store_misses_total", "counter", "Gets that returned nothing.", &TierMetrics::misses);
  tier_values("kvtc_store_puts_total", "counter", "Puts that stored their entry.", &TierMetrics::puts);
  tier_values("kvtc_store_put_errors_total", "counter", "Puts refused or failed.", &TierMetrics::put_errors);
  tier_values("kvtc_store_evictions_total", "counter", "Entries evicted to make room.", &TierMetrics::evictions);
  tier_values("kvtc_store_corruptions_total", "counter", "Corrupt entries found and removed.",
              &TierMetrics::corruptions);
  tier_values("kvtc_store_errors_total", "counter", "Operations that failed (I/O, server unreachable).",
              &TierMetrics::errors);
  tier_values("kvtc_store_reconnects_total", "counter", "Connections made again after the server was lost.",
              &TierMetrics::reconnects);
  tier_values("kvtc_store_put_bytes_total", "counter", "Value bytes of the puts that stored their entry.",
              &TierMetrics::bytes_put);
  tier_values("kvtc_store_put_raw_bytes_total", "counter", "Uncompressed bytes the callers declared with those puts.",
              &TierMetrics::bytes_raw_put);
  tier_values("kvtc_store_entries", "gauge", "Entries held.", &TierMetrics::entries);
  tier_values("kvtc_store_bytes", "gauge", "Bytes counted against the capacity.", &TierMetrics::bytes_stored);
  tier_values("kvtc_store_capacity_bytes", "gauge", "Capacity in bytes.", &TierMetrics::capacity_bytes);

  auto histogram = [&](const char* name, const char* help, LatencyHistogram TierMetrics::*field) {
    family(name, "histogram", help);
    const auto& bounds = LatencyHistogram::upper_bounds_us();
    for (const TierMetrics& t : metrics.tiers) {
      const LatencyHistogram& h = t.*field;
      const std::string label = "tier=\"" + t.tier + "\"";
      uint64_t cumulative = 0;
      for (size_t i = 0; i < h.bucket_counts.size(); ++i) {
        cumulative += h.bucket_counts[i];
        const std::string le = i < bounds.size() ? fmt_double(bounds[i]) : "+Inf";
        out += std::string(name) + "_bucket{" + label + ",le=\"" + le + "\"} " + std::to_string(cumulative) + "\n";
      }
      out += std::string(name) + "_sum{" + label + "} " + fmt_double(h.sum_us) + "\n";
      out += std::string(name) + "_count{" + label + "} " + std::to_string(h.count) + "\n";
    }
  };
  histogram("kvtc_store_get_latency_microseconds", "Latency of gets in microseconds.", &TierMetrics::get_latency);
  histogram("kvtc_store_put_latency_microseconds", "Latency of puts in microseconds.", &TierMetrics::put_latency);

  auto single = [&](const char* name, const char* help, uint64_t v) {
    family(name, "counter", help);
    out += std::string(name) + " " + std::to_string(v) + "\n";
  };
  single("kvtc_store_promotions_total", "Disk hits copied into host memory.", metrics.promotions);
  single("kvtc_store_demotions_total", "Host evictions kept on disk.", metrics.demotions);
  single("kvtc_store_demotion_errors_total", "Host evictions that could not be written to disk.",
         metrics.demotion_errors);
  return out;
}

const char* eviction_policy_name(EvictionPolicy policy) {
  switch (policy) {
    case EvictionPolicy::kS3Fifo:
      return "s3fifo";
    case EvictionPolicy::kLru:
      return "lru";
  }
  return "unknown";
}

}  // namespace kvtc::store
