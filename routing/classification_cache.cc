#include "routing/classification_cache.h"

#include <algorithm>
#include <utility>

namespace pgrelay::routing {
namespace {

// An evicted text keeps its buffer for the next insert unless the buffer is this large.
constexpr size_t kKeptTextCapacity = 512;

}  // namespace

ClassificationCache::ClassificationCache(size_t capacity, size_t max_bytes, size_t max_text_bytes)
    : capacity_(std::min<size_t>(capacity, kNone - 1)),
      max_bytes_(max_bytes),
      max_text_bytes_(max_text_bytes) {
  index_.reserve(std::min<size_t>(capacity_, 1024));
}

const Classification* ClassificationCache::Find(std::string_view sql) {
  if (index_.empty()) return nullptr;
  const auto it = index_.find(sql);
  if (it == index_.end()) return nullptr;
  const uint32_t i = it->second;
  if (head_ != i) {
    Unlink(i);
    PushFront(i);
  }
  return &entries_[i].classification;
}

void ClassificationCache::Insert(std::string_view sql, const Classification& classification) {
  if (!Cacheable(sql)) return;
  while (tail_ != kNone && (index_.size() >= capacity_ || bytes_ + sql.size() > max_bytes_)) {
    EvictLast();
  }
  uint32_t i;
  if (free_ != kNone) {
    i = free_;
    free_ = entries_[i].next;
  } else {
    entries_.emplace_back();
    i = static_cast<uint32_t>(entries_.size() - 1);
  }
  Entry& entry = entries_[i];
  entry.text.assign(sql);
  entry.classification = classification;
  bytes_ += sql.size();
  PushFront(i);
  if (!spare_nodes_.empty()) {
    // Reuse an evicted hash node: no allocation once the cache is full.
    auto node = std::move(spare_nodes_.back());
    spare_nodes_.pop_back();
    node.key() = entry.text;
    node.mapped() = i;
    index_.insert(std::move(node));
  } else {
    index_.emplace(entry.text, i);
  }
}

void ClassificationCache::Reset(size_t capacity, size_t max_bytes, size_t max_text_bytes) {
  Clear();
  capacity_ = std::min<size_t>(capacity, kNone - 1);
  max_bytes_ = max_bytes;
  max_text_bytes_ = max_text_bytes;
}

void ClassificationCache::Clear() {
  entries_.clear();
  index_.clear();
  spare_nodes_.clear();
  head_ = tail_ = free_ = kNone;
  bytes_ = 0;
}

void ClassificationCache::Unlink(uint32_t i) {
  Entry& e = entries_[i];
  if (e.prev != kNone) {
    entries_[e.prev].next = e.next;
  } else {
    head_ = e.next;
  }
  if (e.next != kNone) {
    entries_[e.next].prev = e.prev;
  } else {
    tail_ = e.prev;
  }
  e.prev = e.next = kNone;
}

void ClassificationCache::PushFront(uint32_t i) {
  Entry& e = entries_[i];
  e.prev = kNone;
  e.next = head_;
  if (head_ != kNone) entries_[head_].prev = i;
  head_ = i;
  if (tail_ == kNone) tail_ = i;
}

void ClassificationCache::EvictLast() {
  const uint32_t i = tail_;
  Unlink(i);
  Entry& e = entries_[i];
  spare_nodes_.push_back(index_.extract(std::string_view(e.text)));
  bytes_ -= e.text.size();
  if (e.text.capacity() > kKeptTextCapacity) {
    std::string().swap(e.text);
  } else {
    e.text.clear();
  }
  e.classification = Classification{};
  e.next = free_;
  free_ = i;
  ++evictions_;
}

}  // namespace pgrelay::routing
