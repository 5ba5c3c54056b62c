// I/O buffers for relaying. BufferPool is per worker (not thread-safe); an IoBuffer is owned by
// one relay direction and returns its block to the pool when destroyed.
#pragma once

#include <cstddef>
#include <cstring>
#include <memory>
#include <string_view>
#include <vector>

namespace pgrelay::proxy {

class BufferPool {
 public:
  static constexpr size_t kBlockSize = 16 * 1024;
  explicit BufferPool(size_t max_free = 4096) : max_free_(max_free) {}

  std::unique_ptr<char[]> Acquire() {
    if (free_.empty()) return std::make_unique_for_overwrite<char[]>(kBlockSize);
    auto block = std::move(free_.back());
    free_.pop_back();
    return block;
  }
  void Release(std::unique_ptr<char[]> block) {
    if (block && free_.size() < max_free_) free_.push_back(std::move(block));
  }

 private:
  size_t max_free_;
  std::vector<std::unique_ptr<char[]>> free_;
};

// A read buffer: bytes [begin, end) are received but not yet consumed.
class IoBuffer {
 public:
  explicit IoBuffer(BufferPool* pool)
      : pool_(pool), data_(pool->Acquire()), capacity_(BufferPool::kBlockSize) {}
  ~IoBuffer() {
    if (capacity_ == BufferPool::kBlockSize) pool_->Release(std::move(data_));
  }
  IoBuffer(const IoBuffer&) = delete;
  IoBuffer& operator=(const IoBuffer&) = delete;

  std::string_view Unconsumed() const { return {data_.get() + begin_, end_ - begin_}; }
  void Consume(size_t n) {
    begin_ += n;
    if (begin_ == end_) begin_ = end_ = 0;
  }
  // Free space to read into, after making room for at least `total` unconsumed bytes.
  char* WritePtr() { return data_.get() + end_; }
  size_t WritableSize() const { return capacity_ - end_; }
  void Commit(size_t n) { end_ += n; }
  // Moves unconsumed bytes to the front, growing the block if `total` bytes must fit.
  void MakeRoom(size_t total) {
    if (total > capacity_) {
      size_t cap = capacity_;
      while (cap < total) cap *= 2;
      auto bigger = std::make_unique_for_overwrite<char[]>(cap);
      std::memcpy(bigger.get(), data_.get() + begin_, end_ - begin_);
      if (capacity_ == BufferPool::kBlockSize) pool_->Release(std::move(data_));
      data_ = std::move(bigger);
      capacity_ = cap;
    } else if (begin_ > 0) {
      std::memmove(data_.get(), data_.get() + begin_, end_ - begin_);
    }
    end_ -= begin_;
    begin_ = 0;
  }
  // Returns to a pool-sized block once a large message has gone through.
  void ShrinkIfIdle() {
    if (capacity_ != BufferPool::kBlockSize && begin_ == end_) {
      data_ = pool_->Acquire();
      capacity_ = BufferPool::kBlockSize;
      begin_ = end_ = 0;
    }
  }

 private:
  BufferPool* pool_;
  std::unique_ptr<char[]> data_;
  size_t capacity_;
  size_t begin_ = 0;
  size_t end_ = 0;
};

}  // namespace pgrelay::proxy
