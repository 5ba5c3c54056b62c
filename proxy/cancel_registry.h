// Maps the BackendKeyData pgrelay handed to a client to the backend process that is running its
// statements, so a CancelRequest reaches the right PostgreSQL backend. Thread-safe (a mutex:
// touched once per session start/end and per cancel, never per message).
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

namespace pgrelay::proxy {

struct CancelTarget {
  std::string host;
  uint16_t port = 0;
  int32_t backend_pid = 0;
  int32_t backend_key = 0;
};

class CancelRegistry {
 public:
  // Reserves a fresh (pid, key) pair for a new client session.
  std::pair<int32_t, int32_t> Register();
  void Update(int32_t pid, const CancelTarget& target);
  void Unregister(int32_t pid);
  // The target for a client's CancelRequest, if pid and key match a live session.
  std::optional<CancelTarget> Find(int32_t pid, int32_t key) const;

 private:
  struct Entry {
    int32_t key = 0;
    std::optional<CancelTarget> target;
  };
  mutable std::mutex mu_;
  std::unordered_map<int32_t, Entry> entries_;
  int32_t next_pid_ = 0;
};

}  // namespace pgrelay::proxy
