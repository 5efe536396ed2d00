// TieredStore: host memory over local disk, with promotion on disk hits and demotion on host evictions.
#include <algorithm>
#include <atomic>

#include "kvtc/store.hpp"
#include "store/counters.hpp"
#include "store/thread_pool.hpp"

namespace kvtc::store {

using detail::bump;

struct TieredStore::Impl {
  std::unique_ptr<HostTier> host;
  std::unique_ptr<DiskTier> disk;
  TieredStoreOptions options;
  detail::TierCounters counters;
  std::atomic<uint64_t> promotions{0}, demotions{0}, demotion_errors{0};
  std::unique_ptr<detail::ThreadPool> pool;  // last: destroyed first, so tasks end before the tiers

  void demote(const std::string& key, const Bytes& value) {
    if (!disk) return;  // host only: an evicted entry is gone
    if (disk->contains(key)) {  // the same bytes are there already (write-through, or promoted from there)
      bump(demotions);
      return;
    }
    if (disk->put(key, std::span<const uint8_t>(value)).is_ok()) {
      bump(demotions);
    } else {
      bump(demotion_errors);
    }
  }

  // Before a put into host without write-through: a disk copy of the key may hold other bytes.
  Status drop_stale(std::string_view key) {
    if (!disk || options.write_through || !disk->contains(key)) return Status::ok();
    auto erased = disk->erase(key);
    return erased.is_ok() ? Status::ok() : erased.status();
  }

  // After a put into host: write through to disk, or put there what host memory cannot take.
  Status after_host_put(std::string_view key, std::span<const uint8_t> value, const Status& host_status) {
    if (!disk) return host_status;
    if (options.write_through || host_status.code() == StatusCode::kOutOfSpace) {
      Status s = disk->put(key, value);
      return host_status.is_ok() || host_status.code() == StatusCode::kOutOfSpace ? s : host_status;
    }
    return host_status;
  }

  GetResult from_disk(std::string_view key) {
    if (!disk) return std::optional<Bytes>();
    GetResult d = disk->get(key);
    if (d.is_ok() && d->has_value()) {
      if (host->put(key, std::span<const uint8_t>(**d)).is_ok()) bump(promotions);
    }
    return d;
  }

  void count(const GetResult& r) {
    if (r.is_ok()) bump(r->has_value() ? counters.hits : counters.misses);
  }
};

Result<std::unique_ptr<TieredStore>> TieredStore::create(std::unique_ptr<HostTier> host,
                                                         std::unique_ptr<DiskTier> disk,
                                                         const TieredStoreOptions& options) {
  if (!host) return invalid_argument("tiered store: a host tier is required");
  auto impl = std::make_unique<Impl>();
  impl->host = std::move(host);
  impl->disk = std::move(disk);
  impl->options = options;
  Impl* raw = impl.get();
  impl->host->set_eviction_callback([raw](std::string key, Bytes value) { raw->demote(key, value); });
  impl->pool = std::make_unique<detail::ThreadPool>(std::max(1, options.n_threads));
  return std::unique_ptr<TieredStore>(new TieredStore(std::move(impl)));
}

TieredStore::TieredStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
TieredStore::~TieredStore() = default;

HostTier& TieredStore::host() { return *impl_->host; }
DiskTier* TieredStore::disk() { return impl_->disk.get(); }

Status TieredStore::put(std::string_view key, std::span<const uint8_t> value) {
  detail::ScopedLatency latency(impl_->counters.put_latency);
  Status s = impl_->drop_stale(key);
  if (s.is_ok()) s = impl_->after_host_put(key, value, impl_->host->put(key, value));
  bump(s.is_ok() ? impl_->counters.puts : impl_->counters.put_errors);
  return s;
}

GetResult TieredStore::get(std::string_view key) {
  detail::ScopedLatency latency(impl_->counters.get_latency);
  GetResult r = impl_->host->get(key);
  if (!(r.is_ok() && r->has_value())) r = impl_->from_disk(key);
  impl_->count(r);
  return r;
}

std::vector<Status> TieredStore::put_many(std::span<const Entry> entries) {
  detail::ScopedLatency latency(impl_->counters.put_latency);
  std::vector<Status> stale(entries.size());
  for (size_t i = 0; i < entries.size(); ++i) stale[i] = impl_->drop_stale(entries[i].key);
  std::vector<Status> out = impl_->host->put_many(entries);
  for (size_t i = 0; i < entries.size(); ++i) {
    out[i] = stale[i].is_ok() ? impl_->after_host_put(entries[i].key, entries[i].value, out[i]) : stale[i];
    bump(out[i].is_ok() ? impl_->counters.puts : impl_->counters.put_errors);
  }
  return out;
}

std::vector<GetResult> TieredStore::get_many(std::span<const std::string> keys) {
  detail::ScopedLatency latency(impl_->counters.get_latency);
  std::vector<GetResult> out = impl_->host->get_many(keys);
  for (size_t i = 0; i < keys.size(); ++i) {
    if (!(out[i].is_ok() && out[i]->has_value())) out[i] = impl_->from_disk(keys[i]);
    impl_->count(out[i]);
  }
  return out;
}

bool TieredStore::contains(std::string_view key) {
  return impl_->host->contains(key) || (impl_->disk && impl_->disk->contains(key));
}

Result<bool> TieredStore::erase(std::string_view key) {
  auto h = impl_->host->erase(key);
  if (!h.is_ok()) return h;
  bool erased = h.value();
  if (impl_->disk) {
    auto d = impl_->disk->erase(key);
    if (!d.is_ok()) return d;
    erased = erased || d.value();
  }
  return erased;
}

uint64_t TieredStore::bytes_used() const {
  return impl_->host->bytes_used() + (impl_->disk ? impl_->disk->bytes_used() : 0);
}
uint64_t TieredStore::capacity_bytes() const {
  return impl_->host->capacity_bytes() + (impl_->disk ? impl_->disk->capacity_bytes() : 0);
}
uint64_t TieredStore::entry_count() const {
  return impl_->host->entry_count() + (impl_->disk ? impl_->disk->entry_count() : 0);
}

TierMetrics TieredStore::metrics() const {
  TierMetrics m = impl_->counters.snapshot();
  m.tier = name();
  m.entries = entry_count();
  m.bytes_stored = bytes_used();
  m.capacity_bytes = capacity_bytes();
  return m;
}

std::future<Status> TieredStore::put_async(std::string key, Bytes value) {
  return impl_->pool->submit([this, key = std::move(key), value = std::move(value)] { return put(key, value); });
}
std::future<GetResult> TieredStore::get_async(std::string key) {
  return impl_->pool->submit([this, key = std::move(key)] { return get(key); });
}
std::future<std::vector<Status>> TieredStore::put_many_async(std::vector<Entry> entries) {
  return impl_->pool->submit([this, entries = std::move(entries)] { return put_many(entries); });
}
std::future<std::vector<GetResult>> TieredStore::get_many_async(std::vector<std::string> keys) {
  return impl_->pool->submit([this, keys = std::move(keys)] { return get_many(keys); });
}
std::future<std::vector<bool>> TieredStore::contains_many_async(std::vector<std::string> keys) {
  return impl_->pool->submit([this, keys = std::move(keys)] { return contains_many(keys); });
}

StoreMetrics TieredStore::store_metrics() const {
  StoreMetrics m;
  m.tiers.push_back(metrics());
  m.tiers.push_back(impl_->host->metrics());
  if (impl_->disk) m.tiers.push_back(impl_->disk->metrics());
  m.promotions = impl_->promotions.load();
  m.demotions = impl_->demotions.load();
  m.demotion_errors = impl_->demotion_errors.load();
  return m;
}

std::string TieredStore::metrics_json() const { return store::metrics_json(store_metrics()); }
std::string TieredStore::metrics_prometheus() const { return store::metrics_prometheus(store_metrics()); }

}  // namespace kvtc::store
