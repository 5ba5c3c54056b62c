// What every session needs from the process: topology, users, cancel keys, counters (the
// config comes from the worker: WorkerContext::config).
// Shared by all workers: the pointers are set once at start-up; the counters are atomics
// touched once per connection, never per message.
#pragma once

#include <atomic>
#include <memory>

#include "config/config.h"
#include "health/catalog_refresher.h"
#include "health/lsn_tracker.h"
#include "health/monitor.h"
#include "proxy/admin/proxy_metrics.h"
#include "proxy/auth_directory.h"
#include "proxy/auth_throttle.h"
#include "proxy/cancel_registry.h"
#include "proxy/pause_gate.h"
#include "proxy/server_tls.h"

namespace pgrelay::proxy {

struct ServerContext {
  const health::Monitor* monitor = nullptr;
  health::CatalogRefresher* catalog = nullptr;  // function volatility for the classifiers
  health::LsnTracker* lsn = nullptr;            // fresh WAL positions for read-your-writes / quorum
  const PauseGate* pause = nullptr;             // admin PAUSE / RESUME
  admin::ProxyMetrics* metrics = nullptr;
  // Replaced by a config reload that changes the users; a session keeps the one it logged in
  // with. Loaded once per login.
  std::atomic<std::shared_ptr<const AuthDirectory>> auth;
  // TLS toward clients (nullptr: tls.mode disable); replaced by a reload (certificates are read
  // again). A session keeps the one its handshake used.
  std::atomic<std::shared_ptr<const ServerTls>> tls;
  // TLS toward the nodes (nullptr: backend.tls disable); replaced by a reload.
  std::atomic<std::shared_ptr<const BackendTls>> backend_tls;
  CancelRegistry* cancels = nullptr;
  AuthThrottle* auth_throttle = nullptr;
  std::atomic<int> client_connections{0};
};

}  // namespace pgrelay::proxy
