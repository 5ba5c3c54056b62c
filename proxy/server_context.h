// What every session needs from the process: config, topology, users, cancel keys, counters.
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
#include "proxy/cancel_registry.h"
#include "proxy/pause_gate.h"

namespace pgrelay::proxy {

struct ServerContext {
  std::shared_ptr<const config::Config> config;
  const health::Monitor* monitor = nullptr;
  health::CatalogRefresher* catalog = nullptr;  // function volatility for the classifiers
  health::LsnTracker* lsn = nullptr;  // fresh WAL positions for read-your-writes / quorum
  const PauseGate* pause = nullptr;   // admin PAUSE / RESUME
  admin::ProxyMetrics* metrics = nullptr;
  const AuthDirectory* auth = nullptr;
  CancelRegistry* cancels = nullptr;
  std::atomic<int> client_connections{0};
};

}  // namespace pgrelay::proxy
