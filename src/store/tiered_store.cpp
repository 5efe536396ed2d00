// TieredStore: host memory over local disk over a shared Redis server, with promotion of hits below host,
// demotion of host evictions, and write-through to Redis.
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
  std::unique_ptr<RedisTier> redis;
  TieredStoreOptions options;
  detail::TierCounters counters;
  std::atomic<uint64_t> promotions{0}, demotions{0}, demotion_errors{0};
  std::unique_ptr<detail::ThreadPool> pool;  // last: destroyed first, so tasks end before the tiers

  void demote(const std::string& key, const Bytes& value) {
    if (!disk) {
      // Redis without write-through takes host's evictions when there is no disk; with write-through it
      // has them already; host only: an evicted entry is gone.
      if (redis && !options.redis_write_through) {
        bump(redis->put(key, value).is_ok() ? demotions : demotion_errors);
      }
      return;
    }
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
    if (d.is_ok() && d->has_value()) promote(key, **d);
    return d;
  }

  void promote(std::string_view key, const Bytes& value) {
    if (host->put(key, std::span<const uint8_t>(value)).is_ok()) bump(promotions);
  }

  // The local tiers missed (or failed): ask Redis. Its errors are misses here (counted in its metrics).
  GetResult from_redis(std::string_view key, GetResult local) {
    if (!redis || (local.is_ok() && local->has_value())) return local;
    GetResult r = redis->get(key);
    if (r.is_ok() && r->has_value()) {
      promote(key, **r);
      return r;
    }
    return local.is_ok() ? GetResult(std::optional<Bytes>()) : local;
  }

  // Writes through to Redis after the local put; returns the status the caller gets.
  Status to_redis(std::string_view key, std::span<const uint8_t> value, uint64_t raw_bytes, const Status& local) {
    if (!redis || !options.redis_write_through) return local;
    // Too large for host memory and no disk: Redis is the one tier that can take it.
    const bool only_redis = local.code() == StatusCode::kOutOfSpace && disk == nullptr;
    if (!local.is_ok() && !only_redis) return local;
    if (options.redis_write_async) {
      RedisTier* r = redis.get();
      (void)pool->submit([r, k = std::string(key), v = Bytes(value.begin(), value.end()), raw_bytes] {
        return r->put(k, std::span<const uint8_t>(v), raw_bytes);
      });
      return local;
    }
    Status s = redis->put(key, value, raw_bytes);
    if (only_redis || s.is_ok()) return s;
    return {s.code(), "stored locally; not shared: " + s.message()};
  }

  void count(const GetResult& r) {
    if (r.is_ok()) bump(r->has_value() ? counters.hits : counters.misses);
  }

  void count_put(bool stored, uint64_t value_bytes, uint64_t raw_bytes) {
    if (stored) {
      counters.stored(value_bytes, raw_bytes);
    } else {
      bump(counters.put_errors);
    }
  }
};

Result<std::unique_ptr<TieredStore>> TieredStore::create(std::unique_ptr<HostTier> host,
                                                         std::unique_ptr<DiskTier> disk,
                                                         const TieredStoreOptions& options) {
  return create(std::move(host), std::move(disk), nullptr, options);
}

Result<std::unique_ptr<TieredStore>> TieredStore::create(std::unique_ptr<HostTier> host,
                                                         std::unique_ptr<DiskTier> disk,
                                                         std::unique_ptr<RedisTier> redis,
                                                         const TieredStoreOptions& options) {
  if (!host) return invalid_argument("tiered store: a host tier is required");
  auto impl = std::make_unique<Impl>();
  impl->host = std::move(host);
  impl->disk = std::move(disk);
  impl->redis = std::move(redis);
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
RedisTier* TieredStore::redis() { return impl_->redis.get(); }

Status TieredStore::put(std::string_view key, std::span<const uint8_t> value, uint64_t raw_bytes) {
  detail::ScopedLatency latency(impl_->counters.put_latency);
  Status s = impl_->drop_stale(key);
  if (s.is_ok()) s = impl_->after_host_put(key, value, impl_->host->put(key, value, raw_bytes));
  const bool stored = s.is_ok();
  s = impl_->to_redis(key, value, raw_bytes, s);
  impl_->count_put(stored || s.is_ok(), value.size(), raw_bytes);
  return s;
}

GetResult TieredStore::get(std::string_view key) {
  detail::ScopedLatency latency(impl_->counters.get_latency);
  GetResult r = impl_->host->get(key);
  if (!(r.is_ok() && r->has_value())) r = impl_->from_disk(key);
  r = impl_->from_redis(key, std::move(r));
  impl_->count(r);
  return r;
}

Result<SharedBytes> TieredStore::get_shared(std::string_view key) {
  detail::ScopedLatency latency(impl_->counters.get_latency);
  if (SharedBytes b = impl_->host->get_shared(key)) {
    bump(impl_->counters.hits);
    return b;
  }
  GetResult r = impl_->from_redis(key, impl_->from_disk(key));  // a hit is promoted into host
  impl_->count(r);
  if (!r.is_ok()) return r.status();
  if (!r->has_value()) return SharedBytes();
  // The bytes read from below (already a copy in memory), handed over as they are.
  struct Held {
    Bytes bytes;
    std::span<const uint8_t> view;
  };
  auto held = std::make_shared<Held>();
  held->bytes = std::move(**r);
  held->view = held->bytes;
  return SharedBytes(held, &held->view);
}

std::vector<Status> TieredStore::put_many(std::span<const Entry> entries) {
  detail::ScopedLatency latency(impl_->counters.put_latency);
  std::vector<Status> stale(entries.size());
  for (size_t i = 0; i < entries.size(); ++i) stale[i] = impl_->drop_stale(entries[i].key);
  std::vector<Status> out = impl_->host->put_many(entries);
  for (size_t i = 0; i < entries.size(); ++i) {
    out[i] = stale[i].is_ok() ? impl_->after_host_put(entries[i].key, entries[i].value, out[i]) : stale[i];
  }
  std::vector<bool> stored(entries.size());
  for (size_t i = 0; i < entries.size(); ++i) stored[i] = out[i].is_ok();
  Impl& d = *impl_;
  if (d.redis && d.options.redis_write_through) {
    // One pipeline for the entries that landed locally (or that only Redis can take).
    std::vector<size_t> idx;
    std::vector<Entry> shared;
    for (size_t i = 0; i < entries.size(); ++i) {
      const bool only_redis = out[i].code() == StatusCode::kOutOfSpace && !d.disk;
      if (out[i].is_ok() || only_redis) idx.push_back(i);
    }
    if (d.options.redis_write_async) {
      for (size_t i : idx) shared.push_back(entries[i]);
      RedisTier* r = d.redis.get();
      if (!shared.empty()) (void)d.pool->submit([r, batch = std::move(shared)] { return r->put_many(batch); });
    } else if (!idx.empty()) {
      std::vector<Status> rs;
      if (idx.size() == entries.size()) {
        rs = d.redis->put_many(entries);
      } else {
        for (size_t i : idx) shared.push_back(entries[i]);
        rs = d.redis->put_many(shared);
      }
      for (size_t j = 0; j < idx.size(); ++j) {
        Status& o = out[idx[j]];
        if (!o.is_ok()) {
          o = rs[j];
        } else if (!rs[j].is_ok()) {
          o = {rs[j].code(), "stored locally; not shared: " + rs[j].message()};
        }
      }
    }
  }
  for (size_t i = 0; i < entries.size(); ++i) {
    d.count_put(stored[i] || out[i].is_ok(), entries[i].value.size(), entries[i].raw_bytes);
  }
  return out;
}

std::vector<GetResult> TieredStore::get_many(std::span<const std::string> keys) {
  detail::ScopedLatency latency(impl_->counters.get_latency);
  std::vector<GetResult> out = impl_->host->get_many(keys);
  std::vector<size_t> missed;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (!(out[i].is_ok() && out[i]->has_value())) out[i] = impl_->from_disk(keys[i]);
    if (!(out[i].is_ok() && out[i]->has_value())) missed.push_back(i);
  }
  if (impl_->redis && !missed.empty()) {  // one pipeline for what the local tiers lack
    std::vector<std::string> ks;
    ks.reserve(missed.size());
    for (size_t i : missed) ks.push_back(keys[i]);
    std::vector<GetResult> rs = impl_->redis->get_many(ks);
    for (size_t j = 0; j < missed.size(); ++j) {
      if (rs[j].is_ok() && rs[j]->has_value()) {
        impl_->promote(ks[j], **rs[j]);
        out[missed[j]] = std::move(rs[j]);
      } else if (out[missed[j]].is_ok()) {
        out[missed[j]] = std::optional<Bytes>();
      }
    }
  }
  for (const GetResult& r : out) impl_->count(r);
  return out;
}

bool TieredStore::contains(std::string_view key) {
  return impl_->host->contains(key) || (impl_->disk && impl_->disk->contains(key)) ||
         (impl_->redis && impl_->redis->contains(key));
}

std::vector<bool> TieredStore::contains_many(std::span<const std::string> keys) {
  std::vector<bool> out(keys.size());
  std::vector<std::string> rest;
  std::vector<size_t> idx;
  for (size_t i = 0; i < keys.size(); ++i) {
    out[i] = impl_->host->contains(keys[i]) || (impl_->disk && impl_->disk->contains(keys[i]));
    if (!out[i] && impl_->redis) {
      idx.push_back(i);
      rest.push_back(keys[i]);
    }
  }
  if (!rest.empty()) {
    std::vector<bool> r = impl_->redis->contains_many(rest);
    for (size_t j = 0; j < idx.size(); ++j) out[idx[j]] = r[j];
  }
  return out;
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
  if (impl_->redis) {
    auto r = impl_->redis->erase(key);
    if (!r.is_ok()) return r;
    erased = erased || r.value();
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

std::future<Status> TieredStore::put_async(std::string key, Bytes value, uint64_t raw_bytes) {
  return impl_->pool->submit(
      [this, key = std::move(key), value = std::move(value), raw_bytes] { return put(key, value, raw_bytes); });
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
  if (impl_->redis) m.tiers.push_back(impl_->redis->metrics());
  m.promotions = impl_->promotions.load();
  m.demotions = impl_->demotions.load();
  m.demotion_errors = impl_->demotion_errors.load();
  return m;
}

std::string TieredStore::metrics_json() const { return store::metrics_json(store_metrics()); }
std::string TieredStore::metrics_prometheus() const { return store::metrics_prometheus(store_metrics()); }

}  // namespace kvtc::store
