// LRU and S3-FIFO (Yang, Zhang, Qiu, Yue, Vinayak: "FIFO queues are all you need for cache eviction",
// SOSP 2023, Algorithm 1).
#include "store/eviction.hpp"

#include <algorithm>
#include <unordered_map>

#include "store/key_hash.hpp"

namespace kvtc::store::detail {

namespace {

// Front = most recently used.
class Lru final : public Evictor {
 public:
  void inserted(PolicyNode* n) override {
    order_.push_front(n);
    n->pos = order_.begin();
  }
  void accessed(PolicyNode* n) override { order_.splice(order_.begin(), order_, n->pos); }
  void resized(PolicyNode* n, uint64_t new_size) override { n->size_bytes = new_size; }
  void removed(PolicyNode* n) override { order_.erase(n->pos); }
  PolicyNode* pop_victim() override {
    if (order_.empty()) return nullptr;
    PolicyNode* n = order_.back();
    order_.pop_back();
    return n;
  }

 private:
  std::list<PolicyNode*> order_;
};

constexpr uint8_t kSmall = 0;
constexpr uint8_t kMain = 1;
constexpr uint8_t kMaxFreq = 3;
// Reads while in the small queue that earn a move to main (the paper's "accessed again").
constexpr uint8_t kMoveToMainFreq = 1;

// Queues: front = head (newest), back = tail (next to leave). The ghost queue keeps the key hashes of
// entries that left through the small queue, as many as the cache holds entries.
class S3Fifo final : public Evictor {
 public:
  explicit S3Fifo(uint64_t small_target_bytes) : small_target_bytes_(small_target_bytes) {}

  void inserted(PolicyNode* n) override {
    n->freq = 0;
    ++resident_;
    auto g = ghost_index_.find(hash_key(*n->key));
    if (g != ghost_index_.end()) {  // seen recently and evicted too early: straight to main
      ghost_.erase(g->second);
      ghost_index_.erase(g);
      push(n, kMain);
    } else {
      push(n, kSmall);
    }
  }
  void accessed(PolicyNode* n) override { n->freq = uint8_t(std::min<int>(n->freq + 1, kMaxFreq)); }
  void resized(PolicyNode* n, uint64_t new_size) override {
    bytes(n->queue) -= n->size_bytes;
    bytes(n->queue) += new_size;
    n->size_bytes = new_size;
  }
  void removed(PolicyNode* n) override {
    unlink(n);
    --resident_;
  }

  PolicyNode* pop_victim() override {
    for (;;) {
      if (!small_.empty() && (small_bytes_ >= small_target_bytes_ || main_.empty())) {
        PolicyNode* t = small_.back();
        unlink(t);
        if (t->freq >= kMoveToMainFreq) {  // read again while in small: keep it, in main
          t->freq = 0;
          push(t, kMain);
          continue;
        }
        --resident_;  // a one-hit wonder leaves; remember its key
        add_ghost(hash_key(*t->key));
        return t;
      }
      if (main_.empty()) return nullptr;
      PolicyNode* t = main_.back();
      if (t->freq > 0) {  // read since its last pass: another round
        --t->freq;
        main_.splice(main_.begin(), main_, t->pos);
        continue;
      }
      unlink(t);
      --resident_;
      return t;
    }
  }

 private:
  uint64_t& bytes(uint8_t q) { return q == kSmall ? small_bytes_ : main_bytes_; }
  std::list<PolicyNode*>& queue(uint8_t q) { return q == kSmall ? small_ : main_; }
  void push(PolicyNode* n, uint8_t q) {
    n->queue = q;
    queue(q).push_front(n);
    n->pos = queue(q).begin();
    bytes(q) += n->size_bytes;
  }
  void unlink(PolicyNode* n) {
    queue(n->queue).erase(n->pos);
    bytes(n->queue) -= n->size_bytes;
  }
  void add_ghost(uint64_t h) {
    if (ghost_index_.count(h)) return;
    ghost_.push_front(h);
    ghost_index_[h] = ghost_.begin();
    const size_t limit = std::max<size_t>(resident_, 1);
    while (ghost_.size() > limit) {
      ghost_index_.erase(ghost_.back());
      ghost_.pop_back();
    }
  }

  uint64_t small_target_bytes_;
  std::list<PolicyNode*> small_, main_;
  uint64_t small_bytes_ = 0, main_bytes_ = 0;
  size_t resident_ = 0;
  std::list<uint64_t> ghost_;
  std::unordered_map<uint64_t, std::list<uint64_t>::iterator> ghost_index_;
};

}  // namespace

std::unique_ptr<Evictor> make_evictor(EvictionPolicy policy, uint64_t capacity_bytes, double small_fraction) {
  if (policy == EvictionPolicy::kLru) return std::make_unique<Lru>();
  return std::make_unique<S3Fifo>(std::max<uint64_t>(1, uint64_t(double(capacity_bytes) * small_fraction)));
}

}  // namespace kvtc::store::detail
