// HostTier: entries in one hash map under one mutex, ordered for eviction by an Evictor.
#include <cstring>
#include <mutex>
#include <new>
#include <unordered_map>

#include "kvtc/store.hpp"
#include "store/counters.hpp"
#include "store/eviction.hpp"
#include "store/key_hash.hpp"

namespace kvtc::store {

using detail::bump;

namespace {

// One value's bytes in the tier's memory, freed when the tier and every reader (get_shared) let go.
struct Block {
  std::shared_ptr<const HostMemory> memory;  // null: the C++ heap
  uint8_t* data = nullptr;
  std::span<const uint8_t> view;
  Block() = default;
  Block(const Block&) = delete;
  Block& operator=(const Block&) = delete;
  ~Block() {
    if (data == nullptr) return;
    if (memory) {
      memory->deallocate(data, view.size());
    } else {
      delete[] data;
    }
  }
};
using BlockPtr = std::shared_ptr<const Block>;

}  // namespace

struct HostTier::Impl {
  struct Slot {
    BlockPtr value;
    detail::PolicyNode node;
  };
  using Evicted = std::vector<std::pair<std::string, BlockPtr>>;

  HostTierOptions options;
  std::shared_ptr<const HostMemory> memory;  // null when options.memory is the heap
  mutable std::mutex mu;
  std::unordered_map<std::string, Slot, detail::TransparentHash, std::equal_to<>> map;  // guarded by mu
  std::unique_ptr<detail::Evictor> evictor;                                            // guarded by mu
  uint64_t bytes = 0;                                                                  // guarded by mu
  EvictionCallback callback;                                                           // guarded by mu
  detail::TierCounters counters;

  // A copy of `value` in the tier's memory; done before taking the lock (allocation may be slow, e.g.
  // page-locking). Null with `error` set when the memory cannot be had.
  BlockPtr copy_in(std::span<const uint8_t> value, Status& error) {
    auto b = std::make_shared<Block>();
    b->memory = memory;
    if (!value.empty()) {
      void* p = memory ? memory->allocate(value.size()) : new (std::nothrow) uint8_t[value.size()];
      if (p == nullptr) {
        bump(counters.put_errors);
        error = {StatusCode::kOutOfSpace,
                 "host tier: could not allocate " + std::to_string(value.size()) + " bytes of host memory"};
        return nullptr;
      }
      b->data = static_cast<uint8_t*>(p);
      std::memcpy(b->data, value.data(), value.size());
      b->view = {b->data, value.size()};
    }
    return b;
  }

  // Stores under mu; entries pushed out go to `evicted`.
  Status put_locked(std::string_view key, BlockPtr value, uint64_t raw_bytes, Evicted& evicted) {
    const size_t value_bytes = value->view.size();
    const uint64_t size = key.size() + value_bytes;
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
      s.value = std::move(value);
      evictor->resized(&s.node, size);
      evictor->accessed(&s.node);
    } else {
      it = map.emplace(std::string(key), Slot{}).first;
      Slot& s = it->second;
      s.value = std::move(value);
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
    counters.stored(value_bytes, raw_bytes);
    return Status::ok();
  }

  // The entry's block (null on a miss), counted as a hit or a miss.
  BlockPtr find_locked(std::string_view key) {
    auto it = map.find(key);
    if (it == map.end()) {
      bump(counters.misses);
      return nullptr;
    }
    evictor->accessed(&it->second.node);
    bump(counters.hits);
    return it->second.value;
  }

  // Outside the lock: the callback gets its own copy (the block may be shared with readers, and may
  // live in page-locked memory that a lower tier should not hold on to).
  void hand_over(Evicted& evicted, const EvictionCallback& cb) {
    if (!cb) return;
    for (auto& [k, v] : evicted) cb(std::move(k), Bytes(v->view.begin(), v->view.end()));
  }
};

Result<std::unique_ptr<HostTier>> HostTier::create(const HostTierOptions& options) {
  if (options.capacity_bytes == 0) return invalid_argument("host tier: capacity_bytes must be positive");
  if (!(options.small_queue_fraction > 0 && options.small_queue_fraction < 1)) {
    return invalid_argument("host tier: small_queue_fraction must be in (0, 1)");
  }
  if (bool(options.memory.allocate) != bool(options.memory.deallocate)) {
    return invalid_argument("host tier: memory needs both allocate and deallocate, or neither");
  }
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  if (options.memory.allocate) impl->memory = std::make_shared<const HostMemory>(options.memory);
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
  Status s;
  BlockPtr block = impl_->copy_in(value, s);
  if (!block) return s;
  Impl::Evicted evicted;
  EvictionCallback cb;
  {
    std::lock_guard lock(impl_->mu);
    s = impl_->put_locked(key, std::move(block), raw_bytes, evicted);
    if (!evicted.empty()) cb = impl_->callback;
  }
  impl_->hand_over(evicted, cb);
  return s;
}

std::vector<Status> HostTier::put_many(std::span<const Entry> entries) {
  std::vector<Status> out(entries.size());
  std::vector<BlockPtr> blocks(entries.size());
  for (size_t i = 0; i < entries.size(); ++i) blocks[i] = impl_->copy_in(entries[i].value, out[i]);
  Impl::Evicted evicted;
  EvictionCallback cb;
  {
    std::lock_guard lock(impl_->mu);
    for (size_t i = 0; i < entries.size(); ++i) {
      if (!blocks[i]) continue;
      detail::ScopedLatency latency(impl_->counters.put_latency);
      out[i] = impl_->put_locked(entries[i].key, std::move(blocks[i]), entries[i].raw_bytes, evicted);
    }
    if (!evicted.empty()) cb = impl_->callback;
  }
  impl_->hand_over(evicted, cb);
  return out;
}

GetResult HostTier::get(std::string_view key) {
  detail::ScopedLatency latency(impl_->counters.get_latency);
  BlockPtr b;
  {
    std::lock_guard lock(impl_->mu);
    b = impl_->find_locked(key);
  }
  if (!b) return std::optional<Bytes>();
  return std::optional<Bytes>(Bytes(b->view.begin(), b->view.end()));  // copied outside the lock
}

SharedBytes HostTier::get_shared(std::string_view key) {
  detail::ScopedLatency latency(impl_->counters.get_latency);
  BlockPtr b;
  {
    std::lock_guard lock(impl_->mu);
    b = impl_->find_locked(key);
  }
  if (!b) return nullptr;
  return SharedBytes(b, &b->view);  // shares the block's ownership, points at its bytes
}

std::vector<GetResult> HostTier::get_many(std::span<const std::string> keys) {
  std::vector<BlockPtr> blocks;
  blocks.reserve(keys.size());
  {
    std::lock_guard lock(impl_->mu);
    for (const std::string& k : keys) {
      detail::ScopedLatency latency(impl_->counters.get_latency);
      blocks.push_back(impl_->find_locked(k));
    }
  }
  std::vector<GetResult> out;
  out.reserve(keys.size());
  for (const BlockPtr& b : blocks) {
    out.push_back(b ? std::optional<Bytes>(Bytes(b->view.begin(), b->view.end())) : std::optional<Bytes>());
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
