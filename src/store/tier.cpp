// The default batch operations of a Tier.
#include "kvtc/store.hpp"

namespace kvtc::store {

// Batches by default: the single operations in turn.
std::vector<Status> Tier::put_many(std::span<const Entry> entries) {
  std::vector<Status> out;
  out.reserve(entries.size());
  for (const Entry& e : entries) out.push_back(put(e.key, std::span<const uint8_t>(e.value)));
  return out;
}

std::vector<GetResult> Tier::get_many(std::span<const std::string> keys) {
  std::vector<GetResult> out;
  out.reserve(keys.size());
  for (const std::string& k : keys) out.push_back(get(k));
  return out;
}

std::vector<bool> Tier::contains_many(std::span<const std::string> keys) {
  std::vector<bool> out;
  out.reserve(keys.size());
  for (const std::string& k : keys) out.push_back(contains(k));
  return out;
}

}  // namespace kvtc::store
