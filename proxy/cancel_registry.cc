#include "proxy/cancel_registry.h"

#include <cstring>

#include "proxy/protocol/crypto_util.h"

namespace pgrelay::proxy {

std::pair<int32_t, int32_t> CancelRegistry::Register() {
  int32_t key;
  std::string random = protocol::RandomBytes(sizeof key);
  std::memcpy(&key, random.data(), sizeof key);
  std::lock_guard lock(mu_);
  int32_t pid;
  do {
    // Positive pids in a range unlike PostgreSQL's, so logs tell them apart.
    next_pid_ = next_pid_ >= 0x3fffffff ? 1 : next_pid_ + 1;
    pid = 0x40000000 + next_pid_;
  } while (entries_.contains(pid));
  entries_[pid] = Entry{key, std::nullopt};
  return {pid, key};
}

void CancelRegistry::Update(int32_t pid, const CancelTarget& target) {
  std::lock_guard lock(mu_);
  auto it = entries_.find(pid);
  if (it != entries_.end()) it->second.target = target;
}

void CancelRegistry::Unregister(int32_t pid) {
  std::lock_guard lock(mu_);
  entries_.erase(pid);
}

std::optional<CancelTarget> CancelRegistry::Find(int32_t pid, int32_t key) const {
  std::lock_guard lock(mu_);
  auto it = entries_.find(pid);
  if (it == entries_.end() || it->second.key != key) return std::nullopt;
  return it->second.target;
}

}  // namespace pgrelay::proxy
