// HostTier: entries in one hash map under one mutex, ordered for eviction by an Evictor.
#include <mutex>
#include <unordered_map>

#include "kvtc/store.hpp"
#include "store/counters.hpp"
#include "store/eviction.hpp"
#include "store/key_hash.hpp"

namespace kvtc::store {

using detail::bump;

struct HostTier::Impl {
  struct Slot {
    Bytes value;
    detail::PolicyNode node;
  };
  using Evicted = std::vector<std::pair<std::string, Bytes>>;

  HostTierOptions options;
  mutable std::mutex mu;
  std::unordered_map<std::string, Slot, detail::TransparentHash, std::equal_to<>> map;  // guarded by mu
  std::unique_ptr<detail::Evictor> evictor;                                            // guarded by mu
  uint64_t bytes = 0;                                                                  // guarded by mu
  EvictionCallback callback;                                                           // guarded by mu
  detail::TierCounters counters;

  // Stores under mu; entries pushed out go to `evicted`.
  Status put_locked(std::string_view key, std::span<const uint8_t> value, uint64_t raw_bytes, Evicted& evicted) {
    const uint64_t size = key.size() + value.size();
    if (size > options.capacity_bytes) {
      bump(counters.put_errors);
      return {StatusCode::kOutOfSpace, "host tier: an entry of " + std::to_string(size) +
                                           " bytes exceeds the capacity of " +
                                           std::to_string(options.capacity_bytes) + " bytes"};
    }
    auto it = map.find(key);
    if (it != map.end()) {
      Slot& s = it->second;
      bytes -= s.node.size_bytes;
      s.value.assign(value.begin(), value.end());
      evictor->resized(&s.node, size);
      evictor->accessed(&s.node);
    } else {
      it = map.emplace(std::string(key), Slot{}).first;
      Slot& s = it->second;
      s.value.assign(value.begin(), value.end());
      s.node.key = &it->first;
      s.node.size_bytes = size;
      evictor->inserted(&s.node);
    }
    bytes += size;
    while (bytes > options.capacity_bytes) {
      detail::PolicyNode* victim = evictor->pop_victim();
      if (victim == nullptr) break;  // cannot happen: the sizes add up to bytes
      auto vit = map.find(*victim->key);
      bytes -= victim->size_bytes;
      auto handle = map.extract(vit);
      evicted.emplace_back(std::move(handle.key()), std::move(handle.mapped().value));
      bump(counters.evictions);
    }
    counters.stored(value.size(), raw_bytes);
    return Status::ok();
  }

  GetResult get_locked(std::string_view key) {
    auto it = map.find(key);
    if (it == map.end()) {
      bump(counters.misses);
      return std::optional<Bytes>();
    }
    evictor->accessed(&it->second.node);
    bump(counters.hits);
    return std::optional<Bytes>(it->second.value);
  }

  void hand_over(Evicted& evicted, const EvictionCallback& cb) {
    if (!cb) return;
    for (auto& [k, v] : evicted) cb(std::move(k), std::move(v));
  }
};

Result<std::unique_ptr<HostTier>> HostTier::create(const HostTierOptions& options) {
  if (options.capacity_bytes == 0) return invalid_argument("host tier: capacity_bytes must be positive");
  if (!(options.small_queue_fraction > 0 && options.small_queue_fraction < 1)) {
    return invalid_argument("host tier: small_queue_fraction must be in (0, 1)");
  }
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->evictor = detail::make_evictor(options.policy, options.capacity_bytes, options.small_queue_fraction);
  return std::unique_ptr<HostTier>(new HostTier(std::move(impl)));
}

HostTier::HostTier(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HostTier::~HostTier() = default;

void HostTier::set_eviction_callback(EvictionCallback callback) {
  std::lock_guard lock(impl_->mu);
  impl_->callback = std::move(callback);
}

EvictionPolicy HostTier::policy() const { return impl_->options.policy; }

Status HostTier::put(std::string_view key, std::span<const uint8_t> value, uint64_t raw_bytes) {
  detail::ScopedLatency latency(impl_->counters.put_latency);
  Impl::Evicted evicted;
  EvictionCallback cb;
  Status s;
  {
    std::lock_guard lock(impl_->mu);
    s = impl_->put_locked(key, value, raw_bytes, evicted);
    if (!evicted.empty()) cb = impl_->callback;
  }
  impl_->hand_over(evicted, cb);
  return s;
}

std::vector<Status> HostTier::put_many(std::span<const Entry> entries) {
  std::vector<Status> out;
  out.reserve(entries.size());
  Impl::Evicted evicted;
  EvictionCallback cb;
  {
    std::lock_guard lock(impl_->mu);
    for (const Entry& e : entries) {
      detail::ScopedLatency latency(impl_->counters.put_latency);
      out.push_back(impl_->put_locked(e.key, e.value, e.raw_bytes, evicted));
    }
    if (!evicted.empty()) cb = impl_->callback;
  }
  impl_->hand_over(evicted, cb);
  return out;
}

GetResult HostTier::get(std::string_view key) {
  detail::ScopedLatency latency(impl_->counters.get_latency);
  std::lock_guard lock(impl_->mu);
  return impl_->get_locked(key);
}

std::vector<GetResult> HostTier::get_many(std::span<const std::string> keys) {
  std::vector<GetResult> out;
  out.reserve(keys.size());
  std::lock_guard lock(impl_->mu);
  for (const std::string& k : keys) {
    detail::ScopedLatency latency(impl_->counters.get_latency);
    out.push_back(impl_->get_locked(k));
  }
  return out;
}

bool HostTier::contains(std::string_view key) {
  std::lock_guard lock(impl_->mu);
  return impl_->map.find(key) != impl_->map.end();
}

Result<bool> HostTier::erase(std::string_view key) {
  std::lock_guard lock(impl_->mu);
  auto it = impl_->map.find(key);
  if (it == impl_->map.end()) return false;
  impl_->evictor->removed(&it->second.node);
  impl_->bytes -= it->second.node.size_bytes;
  impl_->map.erase(it);
  return true;
}

uint64_t HostTier::bytes_used() const {
  std::lock_guard lock(impl_->mu);
  return impl_->bytes;
}

uint64_t HostTier::capacity_bytes() const { return impl_->options.capacity_bytes; }

uint64_t HostTier::entry_count() const {
  std::lock_guard lock(impl_->mu);
  return impl_->map.size();
}

TierMetrics HostTier::metrics() const {
  TierMetrics m = impl_->counters.snapshot();
  m.tier = name();
  std::lock_guard lock(impl_->mu);
  m.entries = impl_->map.size();
  m.bytes_stored = impl_->bytes;
  m.capacity_bytes = impl_->options.capacity_bytes;
  return m;
}

std::vector<std::string> HostTier::keys() const {
  std::lock_guard lock(impl_->mu);
  std::vector<std::string> out;
  out.reserve(impl_->map.size());
  for (const auto& [k, s] : impl_->map) out.push_back(k);
  return out;
}

}  // namespace kvtc::store
