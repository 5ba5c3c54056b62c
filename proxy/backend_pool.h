// Server connections parked between client sessions (pool.mode: session, docs/pool.md): when a
// client leaves, its session resets each idle server connection with DISCARD ALL and parks it
// here; the next session that would log in to the same node with the same start-up parameters
// takes it instead, skipping the node's fork and authentication (and starting with a backend
// whose caches are warm). One pool per worker, used only from that worker's thread.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/admin/proxy_metrics.h"
#include "proxy/backend_connection.h"

namespace pgrelay::proxy {

class BackendPool {
 public:
  using Clock = std::chrono::steady_clock;

  BackendPool();
  ~BackendPool();
  BackendPool(const BackendPool&) = delete;
  BackendPool& operator=(const BackendPool&) = delete;

  // What makes two logins interchangeable: the node's address, the user, the database, every
  // other start-up parameter in order, and the backend TLS settings in force. (ClientSession
  // adds the node's role: see FromPool.)
  static std::string KeyOf(const BackendLoginParams& params);

  // pgrelay_pool_idle_connections{node} and pgrelay_pool_reused_total{node}; optional.
  void SetMetrics(admin::Shard* shard, const admin::ProxyMetrics* families) {
    shard_ = shard;
    families_ = families;
  }

  // The most recently parked connection to `node` under `key` that is still open and has sent
  // nothing since it was parked; nullptr if there is none. Connections found closed, or with
  // bytes waiting (the server ended them, e.g. pg_terminate_backend), are closed on the way.
  std::unique_ptr<BackendConnection> Take(int node, std::string_view key);
  // Takes `conn` (reset, idle, nothing pending or buffered, no read under way). Returns false
  // if it was closed instead: the node already has `max_idle` parked, or the pool is shut.
  bool Park(int node, std::string key, std::unique_ptr<BackendConnection> conn, size_t max_idle);
  // Closes connections parked before now - idle_timeout, every one to a node in `lost`
  // (indexed by node slot; shorter vectors mean "not lost"), and the oldest beyond `max_idle`
  // per node (after a reload lowered it).
  void Sweep(Clock::time_point now, std::chrono::milliseconds idle_timeout,
             const std::vector<bool>& lost, size_t max_idle = SIZE_MAX);
  // Closes everything; later Park calls close what they are given (worker shutdown).
  void Shut();
  size_t Idle(int node) const;
  size_t Idle() const;

 private:
  struct Entry {
    std::string key;
    std::unique_ptr<BackendConnection> conn;
    Clock::time_point parked;
  };
  // Sends Terminate and closes, without waiting (a detached step on the connection's executor).
  static void Close(std::unique_ptr<BackendConnection> conn);
  void CountIdle(int node, int delta);

  std::vector<std::vector<Entry>> nodes_;  // by node slot; oldest first
  bool shut_ = false;
  admin::Shard* shard_ = nullptr;
  const admin::ProxyMetrics* families_ = nullptr;
};

}  // namespace pgrelay::proxy
