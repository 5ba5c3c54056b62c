// A FIFO queue over one array that only grows: push_back and pop_front reuse its slots, so a
// steady stream of pushes and pops allocates nothing once it has reached its largest size
// (std::deque allocates and frees a block every few hundred elements). Not thread-safe.
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

namespace pgrelay::proxy {

template <typename T>
class Ring {
 public:
  bool empty() const { return size_ == 0; }
  size_t size() const { return size_; }
  T& front() { return slots_[head_]; }
  T& operator[](size_t i) { return slots_[(head_ + i) & (slots_.size() - 1)]; }
  const T& operator[](size_t i) const { return slots_[(head_ + i) & (slots_.size() - 1)]; }

  void push_back(const T& value) {
    if (size_ == slots_.size()) Grow();
    slots_[(head_ + size_) & (slots_.size() - 1)] = value;
    ++size_;
  }
  void pop_front() {
    head_ = (head_ + 1) & (slots_.size() - 1);
    --size_;
  }
  void clear() { head_ = size_ = 0; }

 private:
  void Grow() {  // to the next power of two, oldest first at index 0
    std::vector<T> next(std::max<size_t>(8, slots_.size() * 2));
    for (size_t i = 0; i < size_; ++i) next[i] = (*this)[i];
    slots_.swap(next);
    head_ = 0;
  }

  std::vector<T> slots_;  // capacity a power of two (or zero)
  size_t head_ = 0;
  size_t size_ = 0;
};

}  // namespace pgrelay::proxy
