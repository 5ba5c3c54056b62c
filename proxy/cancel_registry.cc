#include "proxy/cancel_registry.h"

#include <cstring>

#include "proxy/protocol/crypto_util.h"

namespace pgrelay::proxy {

void CancelSlot::SetTarget(int node, CancelTarget target) {
  if (node < 0) return;
  std::lock_guard lock(mu_);
  if (targets_.size() <= static_cast<size_t>(node)) targets_.resize(node + 1);
  targets_[node] = std::move(target);
}

std::optional<CancelTarget> CancelSlot::Current() const {
  const int node = current_.load(std::memory_order_acquire);
  std::lock_guard lock(mu_);
  if (node < 0 || static_cast<size_t>(node) >= targets_.size()) return std::nullopt;
  return targets_[node];
}

CancelRegistry::Registration CancelRegistry::Register() {
  int32_t key;
  std::string random = protocol::RandomBytes(sizeof key);
  std::memcpy(&key, random.data(), sizeof key);
  auto slot = std::make_shared<CancelSlot>();
  std::lock_guard lock(mu_);
  int32_t pid;
  do {
    // Positive pids in a range unlike PostgreSQL's, so logs tell them apart.
    next_pid_ = next_pid_ >= 0x3fffffff ? 1 : next_pid_ + 1;
    pid = 0x40000000 + next_pid_;
  } while (entries_.contains(pid));
  entries_[pid] = Entry{key, slot};
  return {pid, key, std::move(slot)};
}

void CancelRegistry::Unregister(int32_t pid) {
  std::lock_guard lock(mu_);
  entries_.erase(pid);
}

std::optional<CancelTarget> CancelRegistry::Find(int32_t pid, int32_t key) const {
  std::shared_ptr<CancelSlot> slot;
  {
    std::lock_guard lock(mu_);
    auto it = entries_.find(pid);
    if (it == entries_.end() || it->second.key != key) return std::nullopt;
    slot = it->second.slot;
  }
  return slot->Current();
}

}  // namespace pgrelay::proxy
