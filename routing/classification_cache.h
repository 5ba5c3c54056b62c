// ClassificationCache: a bounded LRU map from statement text to its Classification, bounded by
// entry count and by the bytes of the texts it keeps. A hit allocates nothing; once full, an
// insert reuses the evicted entry's storage. Owned by one worker; not thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "routing/classification.h"

namespace pgrelay::routing {

class ClassificationCache {
 public:
  // capacity 0 disables the cache. Texts longer than max_text_bytes are never cached.
  ClassificationCache(size_t capacity, size_t max_bytes, size_t max_text_bytes);
  ClassificationCache(const ClassificationCache&) = delete;
  ClassificationCache& operator=(const ClassificationCache&) = delete;

  // The cached classification of `sql`, now the most recently used; nullptr if absent. The
  // pointer is valid until the next Insert or Clear.
  const Classification* Find(std::string_view sql);
  // Adds `sql` (absent) as the most recently used entry, evicting the least recently used ones
  // while over capacity or max_bytes.
  void Insert(std::string_view sql, const Classification& classification);
  void Clear();
  // Clear(), then new limits (a config reload changed routing.classifier_cache_size).
  void Reset(size_t capacity, size_t max_bytes, size_t max_text_bytes);

  size_t size() const { return index_.size(); }
  size_t capacity() const { return capacity_; }
  size_t bytes() const { return bytes_; }  // sum of the cached texts' sizes
  uint64_t evictions() const { return evictions_; }
  bool Cacheable(std::string_view sql) const {
    return capacity_ > 0 && sql.size() <= max_text_bytes_ && sql.size() <= max_bytes_;
  }

 private:
  static constexpr uint32_t kNone = UINT32_MAX;
  struct Entry {
    std::string text;
    Classification classification;
    uint32_t prev = kNone;  // towards the most recently used
    uint32_t next = kNone;  // towards the least recently used
  };

  void Unlink(uint32_t i);
  void PushFront(uint32_t i);
  void EvictLast();

  size_t capacity_;
  size_t max_bytes_;
  size_t max_text_bytes_;
  std::deque<Entry> entries_;  // stable addresses: index_ keys point into Entry::text
  using Index = std::unordered_map<std::string_view, uint32_t>;
  Index index_;
  std::vector<Index::node_type> spare_nodes_;  // hash nodes of evicted entries, for reuse
  uint32_t head_ = kNone;                      // most recently used
  uint32_t tail_ = kNone;                      // least recently used
  uint32_t free_ = kNone;                      // evicted entries, linked through `next`
  size_t bytes_ = 0;
  uint64_t evictions_ = 0;
};

}  // namespace pgrelay::routing
