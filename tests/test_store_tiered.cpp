// TieredStore: demotion of host evictions to disk, promotion of disk hits, write-through, stale copies,
// batches and async operations, and the metrics in JSON and Prometheus text.
#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "kvtc/store.hpp"
#include "temp_dir.hpp"

namespace kvtc::store {
namespace {

// Host holds 5 entries of 10 bytes (2-byte key + 8-byte value), disk plenty.
std::unique_ptr<TieredStore> make_store(bool write_through, EvictionPolicy policy = EvictionPolicy::kLru,
                                        bool with_disk = true) {
  HostTierOptions ho;
  ho.capacity_bytes = 50;
  ho.policy = policy;
  auto host = HostTier::create(ho);
  EXPECT_TRUE(host.is_ok());
  std::unique_ptr<DiskTier> disk;
  if (with_disk) {
    DiskTierOptions d;
    d.directory = testing::temp_dir();
    d.capacity_bytes = 1 << 20;
    d.sync = false;
    auto opened = DiskTier::open(d);
    EXPECT_TRUE(opened.is_ok()) << opened.status().to_string();
    disk = std::move(opened).value();
  }
  TieredStoreOptions o;
  o.write_through = write_through;
  auto s = TieredStore::create(std::move(host).value(), std::move(disk), o);
  EXPECT_TRUE(s.is_ok());
  return std::move(s).value();
}

Bytes v8(int i) { return Bytes(8, uint8_t(i)); }
std::string key(int i) {
  std::string k = "k";  // not "k" + to_string(i): GCC 12's -Wrestrict false positive
  k += std::to_string(i);
  return k;
}

TEST(StoreTiered, HostEvictionsAreDemotedAndDiskHitsPromoted) {
  auto s = make_store(false);
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(s->put(key(i), v8(i)).is_ok());
  // LRU host of 5: k0..k2 went to disk.
  for (int i = 0; i < 3; ++i) {
    EXPECT_FALSE(s->host().contains(key(i)));
    EXPECT_TRUE(s->disk()->contains(key(i)));
  }
  for (int i = 3; i < 8; ++i) EXPECT_TRUE(s->host().contains(key(i)));
  StoreMetrics m = s->store_metrics();
  EXPECT_EQ(m.demotions, 3u);
  // A disk hit comes back and is copied into host (evicting the LRU entry, k3, to disk).
  auto r = s->get(key(1));
  ASSERT_TRUE(r.is_ok() && r->has_value());
  EXPECT_EQ(**r, v8(1));
  EXPECT_TRUE(s->host().contains(key(1)));
  EXPECT_TRUE(s->disk()->contains(key(1)));  // stays on disk too
  EXPECT_FALSE(s->host().contains(key(3)));
  EXPECT_TRUE(s->disk()->contains(key(3)));
  m = s->store_metrics();
  EXPECT_EQ(m.promotions, 1u);
  EXPECT_EQ(m.demotions, 4u);
  // k1 evicted again from host: disk has the same bytes already, nothing is rewritten.
  for (int i = 10; i < 15; ++i) ASSERT_TRUE(s->put(key(i), v8(i)).is_ok());
  EXPECT_FALSE(s->host().contains(key(1)));
  EXPECT_EQ(s->get(key(1))->value(), v8(1));
  EXPECT_FALSE(s->get("absent")->has_value());
  const TierMetrics all = s->metrics();
  EXPECT_EQ(all.hits, 2u);
  EXPECT_EQ(all.misses, 1u);
}

// get_shared: a host hit is the host tier's own bytes (no copy); a disk hit is promoted as get does.
TEST(StoreTiered, SharedReadsFromHostAndBelow) {
  auto s = make_store(false);
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(s->put(key(i), v8(i)).is_ok());
  auto h = s->get_shared(key(7));
  ASSERT_TRUE(h.is_ok() && *h);
  EXPECT_EQ(Bytes((*h)->begin(), (*h)->end()), v8(7));
  EXPECT_EQ((*h)->data(), s->host().get_shared(key(7))->data()) << "a host hit must not be copied";
  ASSERT_FALSE(s->host().contains(key(0)));
  auto d = s->get_shared(key(0));
  ASSERT_TRUE(d.is_ok() && *d);
  EXPECT_EQ(Bytes((*d)->begin(), (*d)->end()), v8(0));
  EXPECT_TRUE(s->host().contains(key(0)));
  EXPECT_EQ(s->store_metrics().promotions, 1u);
  auto miss = s->get_shared("absent");
  ASSERT_TRUE(miss.is_ok());
  EXPECT_EQ(*miss, nullptr);
  const TierMetrics all = s->metrics();
  EXPECT_EQ(all.hits, 2u);
  EXPECT_EQ(all.misses, 1u);
}

TEST(StoreTiered, WriteThroughAndStaleDiskCopies) {
  auto wt = make_store(true);
  ASSERT_TRUE(wt->put("a", v8(1)).is_ok());
  EXPECT_TRUE(wt->host().contains("a"));
  EXPECT_TRUE(wt->disk()->contains("a"));

  auto s = make_store(false);
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(s->put(key(i), v8(i)).is_ok());
  ASSERT_TRUE(s->disk()->contains(key(0)));
  ASSERT_TRUE(s->put(key(0), v8(99)).is_ok());  // new bytes in host: the disk copy is stale, removed
  EXPECT_FALSE(s->disk()->contains(key(0)) && s->host().contains(key(0)));
  for (int i = 20; i < 26; ++i) ASSERT_TRUE(s->put(key(i), v8(i)).is_ok());  // push k0 out again
  EXPECT_EQ(s->get(key(0))->value(), v8(99));
  EXPECT_TRUE(s->erase(key(0)).value());
  EXPECT_FALSE(s->contains(key(0)));
}

TEST(StoreTiered, TooLargeForHostGoesToDisk) {
  auto s = make_store(false);
  ASSERT_TRUE(s->put("big", Bytes(100, 7)).is_ok());
  EXPECT_FALSE(s->host().contains("big"));
  EXPECT_EQ(s->get("big")->value(), Bytes(100, 7));
  auto host_only = make_store(false, EvictionPolicy::kS3Fifo, false);
  EXPECT_EQ(host_only->put("big", Bytes(100, 7)).code(), StatusCode::kOutOfSpace);
}

TEST(StoreTiered, BatchesAndAsync) {
  auto s = make_store(false, EvictionPolicy::kS3Fifo);
  std::vector<Entry> entries;
  for (int i = 0; i < 9; ++i) entries.push_back({key(i), v8(i)});
  auto put_statuses = s->put_many_async(entries).get();
  for (const Status& st : put_statuses) EXPECT_TRUE(st.is_ok()) << st.to_string();
  std::vector<std::string> keys;
  for (int i = 0; i < 9; ++i) keys.push_back(key(i));
  keys.push_back("missing");
  auto got = s->get_many_async(keys).get();
  ASSERT_EQ(got.size(), 10u);
  for (int i = 0; i < 9; ++i) {
    ASSERT_TRUE(got[size_t(i)].is_ok() && got[size_t(i)]->has_value()) << i;
    EXPECT_EQ(**got[size_t(i)], v8(i));
  }
  EXPECT_FALSE(got[9]->has_value());
  auto has = s->contains_many_async(keys).get();
  EXPECT_EQ(std::count(has.begin(), has.end(), true), 9);
  std::vector<std::future<Status>> puts;
  for (int i = 30; i < 40; ++i) puts.push_back(s->put_async(key(i), v8(i)));
  for (auto& f : puts) EXPECT_TRUE(f.get().is_ok());
  EXPECT_EQ(s->get_async(key(35)).get()->value(), v8(35));
  EXPECT_LE(s->host().bytes_used(), s->host().capacity_bytes());
}

TEST(StoreTiered, MetricsJson) {
  auto s = make_store(false);
  for (int i = 0; i < 7; ++i) ASSERT_TRUE(s->put(key(i), v8(i)).is_ok());
  (void)s->get(key(6));     // host hit
  (void)s->get(key(0));     // host miss, disk hit, promoted
  (void)s->get("missing");  // miss everywhere
  auto j = nlohmann::json::parse(s->metrics_json());
  EXPECT_EQ(j["tiers"]["all"]["hits"], 2);
  EXPECT_EQ(j["tiers"]["all"]["misses"], 1);
  EXPECT_EQ(j["tiers"]["all"]["puts"], 7);
  EXPECT_EQ(j["tiers"]["host"]["hits"], 1);
  EXPECT_EQ(j["tiers"]["host"]["misses"], 2);
  EXPECT_EQ(j["tiers"]["host"]["entries"], 5);
  EXPECT_EQ(j["tiers"]["host"]["bytes_stored"], 50);
  EXPECT_EQ(j["tiers"]["host"]["capacity_bytes"], 50);
  EXPECT_EQ(j["tiers"]["disk"]["hits"], 1);
  EXPECT_EQ(j["tiers"]["disk"]["misses"], 1);
  EXPECT_EQ(j["tiers"]["disk"]["corruptions"], 0);
  EXPECT_EQ(j["promotions"], 1);
  EXPECT_EQ(j["demotions"], 3);  // 2 by the puts, 1 by the promotion
  EXPECT_EQ(j["tiers"]["host"]["evictions"], 3);
  const auto& h = j["tiers"]["all"]["get_latency_us"];
  EXPECT_EQ(h["count"], 3);
  EXPECT_EQ(h["buckets"].size(), LatencyHistogram::upper_bounds_us().size() + 1);
  uint64_t sum = 0;
  for (const auto& b : h["buckets"]) sum += b["count"].get<uint64_t>();
  EXPECT_EQ(sum, 3u);
  EXPECT_EQ(j["tiers"]["host"]["put_latency_us"]["count"], 7 + 1);  // 7 puts and 1 promotion
}

TEST(StoreTiered, MetricsPrometheusText) {
  auto s = make_store(false);
  for (int i = 0; i < 7; ++i) ASSERT_TRUE(s->put(key(i), v8(i)).is_ok());
  (void)s->get(key(6));
  (void)s->get(key(0));
  (void)s->get("missing");
  const std::string text = s->metrics_prometheus();
  // Every line: a comment (# HELP / # TYPE) or `name{labels} value`.
  const std::regex sample(R"(^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="[^"]*"(,[a-zA-Z_][a-zA-Z0-9_]*="[^"]*")*)\})? ([-+0-9.eE]+|\+Inf)$)");
  const std::regex type_line(R"(^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram)$)");
  std::map<std::string, std::string> samples;  // "name{labels}" -> value
  std::map<std::string, std::string> types;
  std::istringstream in(text);
  std::string line;
  int n_lines = 0;
  while (std::getline(in, line)) {
    ++n_lines;
    std::smatch m;
    if (line.rfind("# HELP ", 0) == 0) continue;
    if (std::regex_match(line, m, type_line)) {
      EXPECT_FALSE(types.count(m[1])) << "TYPE twice: " << line;
      types[m[1]] = m[2];
      continue;
    }
    ASSERT_TRUE(std::regex_match(line, m, sample)) << "not a sample line: " << line;
    std::string family = m[1];
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      const std::string sfx = suffix;
      if (family.size() > sfx.size() && family.compare(family.size() - sfx.size(), sfx.size(), sfx) == 0 &&
          types.count(family.substr(0, family.size() - sfx.size())))
        family = family.substr(0, family.size() - sfx.size());
    }
    EXPECT_TRUE(types.count(family)) << "sample before its TYPE: " << line;
    samples[std::string(m[1]) + "{" + std::string(m[3]) + "}"] = m[5];
  }
  EXPECT_GT(n_lines, 50);
  EXPECT_EQ(text.back(), '\n');
  EXPECT_EQ(types["kvtc_store_hits_total"], "counter");
  EXPECT_EQ(types["kvtc_store_bytes"], "gauge");
  EXPECT_EQ(types["kvtc_store_get_latency_microseconds"], "histogram");
  EXPECT_EQ(samples["kvtc_store_hits_total{tier=\"all\"}"], "2");
  EXPECT_EQ(samples["kvtc_store_hits_total{tier=\"host\"}"], "1");
  EXPECT_EQ(samples["kvtc_store_misses_total{tier=\"disk\"}"], "1");
  EXPECT_EQ(samples["kvtc_store_bytes{tier=\"host\"}"], "50");
  EXPECT_EQ(samples["kvtc_store_promotions_total{}"], "1");
  EXPECT_EQ(samples["kvtc_store_get_latency_microseconds_count{tier=\"all\"}"], "3");
  EXPECT_EQ(samples["kvtc_store_get_latency_microseconds_bucket{tier=\"all\",le=\"+Inf\"}"], "3");
  // Buckets are cumulative: never decreasing with le, and +Inf equals _count.
  for (const char* tier : {"all", "host", "disk"}) {
    uint64_t prev = 0;
    for (double le : LatencyHistogram::upper_bounds_us()) {
      std::ostringstream name;
      name << "kvtc_store_put_latency_microseconds_bucket{tier=\"" << tier << "\",le=\"" << uint64_t(le) << "\"}";
      ASSERT_TRUE(samples.count(name.str())) << name.str();
      const uint64_t v = std::stoull(samples[name.str()]);
      EXPECT_GE(v, prev);
      prev = v;
    }
    const std::string t = std::string("{tier=\"") + tier + "\"";
    EXPECT_EQ(samples["kvtc_store_put_latency_microseconds_bucket" + t + ",le=\"+Inf\"}"],
              samples["kvtc_store_put_latency_microseconds_count" + t + "}"]);
  }
}

}  // namespace
}  // namespace kvtc::store
