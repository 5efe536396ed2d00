// Eviction order for a tier: which entry leaves next. The tier owns its entries; each embeds a
// PolicyNode that the policy links into its queues. Not thread-safe: the tier's lock guards it.
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <string>

#include "kvtc/store.hpp"

namespace kvtc::store::detail {

struct PolicyNode {
  const std::string* key = nullptr;  // the tier's copy of the key (stable while the entry lives)
  uint64_t size_bytes = 0;           // what the entry counts against the capacity
  uint8_t freq = 0;                  // S3-FIFO: reads since insertion or the last pass, capped at 3
  uint8_t queue = 0;                 // S3-FIFO: 0 small, 1 main
  std::list<PolicyNode*>::iterator pos;
};

class Evictor {
 public:
  virtual ~Evictor() = default;
  virtual void inserted(PolicyNode* n) = 0;                   // a new entry (n->size_bytes set)
  virtual void accessed(PolicyNode* n) = 0;                   // a hit, or a put over an existing entry
  virtual void resized(PolicyNode* n, uint64_t new_size) = 0; // sets n->size_bytes
  virtual void removed(PolicyNode* n) = 0;                    // erased by the user (not a victim)
  // Unlinks and returns the next entry to evict, or null when nothing is left.
  virtual PolicyNode* pop_victim() = 0;
};

// small_fraction: S3-FIFO's small queue as a share of capacity_bytes (ignored by LRU).
std::unique_ptr<Evictor> make_evictor(EvictionPolicy policy, uint64_t capacity_bytes, double small_fraction);

}  // namespace kvtc::store::detail
