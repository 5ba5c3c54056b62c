// The proxy process: N worker threads (one io_context each), the listener that hands accepted
// connections to workers round-robin, and shutdown on SIGINT/SIGTERM. Run() from main only.
#pragma once

#include <functional>
#include <memory>

#include "config/config.h"
#include "health/catalog_refresher.h"
#include "health/lsn_tracker.h"
#include "health/monitor.h"
#include "proxy/admin/proxy_metrics.h"
#include "proxy/pause_gate.h"
#include "proxy/server_tls.h"

namespace pgrelay::proxy {

class Server {
 public:
  Server(std::shared_ptr<const config::Config> config, health::Monitor* monitor,
         health::CatalogRefresher* catalog, health::LsnTracker* lsn, admin::ProxyMetrics* metrics,
         const PauseGate* pause);
  // The number of worker threads the config asks for. 0 = one per core, or half the cores (at
  // least one) when every node is on this machine (a loopback address or "localhost"). *rule,
  // if given, says which of these chose the count (for the log).
  static int WorkerCount(const config::Config& config, const char** rule = nullptr);
  static bool EveryNodeOnThisMachine(const config::Config& config);
  ~Server();
  // Listens and serves until SIGINT or SIGTERM. Returns the process exit code.
  int Run();
  // Called on the listener's thread when SIGHUP arrives (set before Run()).
  void OnSighup(std::function<void()> handler);
  // Config reload (any thread): new logins use the new users (if `users_changed`); each worker
  // takes `config` for its router and classifier at once and its sessions at their next
  // transaction boundary.
  void Reconfigure(std::shared_ptr<const config::Config> config, bool users_changed,
                   std::shared_ptr<const ServerTls> tls,
                   std::shared_ptr<const BackendTls> backend_tls);
  // TLS toward clients and toward the nodes from now on (nullptr: none). Thread-safe.
  void SetTls(std::shared_ptr<const ServerTls> tls, std::shared_ptr<const BackendTls> backend_tls);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pgrelay::proxy
