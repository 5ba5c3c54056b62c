// Maps the BackendKeyData pgrelay handed to a client to the backend process that is running its
// statements, so a CancelRequest reaches the right PostgreSQL backend. Thread-safe.
//
// The registry's mutex is taken once per session start and end and per cancel. While relaying,
// a session touches only its own CancelSlot: when it opens a connection to a node it records
// that connection's key data (rare, under the slot's mutex), and when it moves to another
// backend it stores that node's index (one atomic store on memory no other worker writes), so
// the relay shares no lock between workers.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace pgrelay::proxy {

struct CancelTarget {
  std::string host;
  uint16_t port = 0;
  int32_t backend_pid = 0;
  int32_t backend_key = 0;
};

// One session's cancel targets, one per node it has a connection to, and which one is current.
class CancelSlot {
 public:
  void SetTarget(int node, CancelTarget target);
  // The session's statements now run on `node` (a target set before).
  void SetCurrent(int node) { current_.store(node, std::memory_order_release); }
  std::optional<CancelTarget> Current() const;

 private:
  mutable std::mutex mu_;
  std::vector<std::optional<CancelTarget>> targets_;  // by node slot
  std::atomic<int> current_{-1};
};

class CancelRegistry {
 public:
  struct Registration {
    int32_t pid = 0;
    int32_t key = 0;
    std::shared_ptr<CancelSlot> slot;  // the session keeps it current
  };
  // Reserves a fresh (pid, key) pair for a new client session.
  Registration Register();
  void Unregister(int32_t pid);
  // The target for a client's CancelRequest, if pid and key match a live session.
  std::optional<CancelTarget> Find(int32_t pid, int32_t key) const;

 private:
  struct Entry {
    int32_t key = 0;
    std::shared_ptr<CancelSlot> slot;
  };
  mutable std::mutex mu_;
  std::unordered_map<int32_t, Entry> entries_;
  int32_t next_pid_ = 0;
};

}  // namespace pgrelay::proxy
