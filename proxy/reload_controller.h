// Config hot reload (SIGHUP, POST /reload): load the file, validate it, plan the change against
// the running config (config/reload.h), then hand the new config to every part that uses it.
// An invalid file changes nothing and every error is reported. Reloads are serialized; Reload()
// is callable from any thread.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "config/config.h"
#include "health/catalog_refresher.h"
#include "health/lsn_tracker.h"
#include "health/monitor.h"
#include "proxy/admin/admin_server.h"
#include "proxy/admin/proxy_metrics.h"
#include "proxy/server_tls.h"

namespace pgrelay::proxy {

class Server;

class ReloadController {
 public:
  struct Parts {
    health::Monitor* monitor = nullptr;
    health::CatalogRefresher* catalog = nullptr;
    health::LsnTracker* lsn = nullptr;
    admin::ProxyMetrics* metrics = nullptr;
    admin::AdminServer* admin = nullptr;
  };
  struct Outcome {
    bool ok = false;
    std::string report;  // for the operator: the errors, or what changed (no secrets)
  };

  ReloadController(std::string path, std::shared_ptr<const config::Config> running,
                   std::shared_ptr<const ServerTls> tls,
                   std::shared_ptr<const BackendTls> backend_tls, Parts parts);

  // The server that takes reloads (nullptr once it is gone); `built_with` is the config it was
  // constructed with: if a reload came meanwhile, the server gets the newer one now.
  void SetServer(Server* server, const std::shared_ptr<const config::Config>& built_with = nullptr);
  Outcome Reload();
  std::shared_ptr<const config::Config> Current() const;

 private:
  const std::string path_;
  const Parts parts_;
  mutable std::mutex mu_;  // one reload at a time; guards running_ and server_
  std::shared_ptr<const config::Config> running_;
  std::shared_ptr<const ServerTls> tls_;  // built from running_ (certificates re-read on reload)
  std::shared_ptr<const BackendTls> backend_tls_;
  Server* server_ = nullptr;
};

}  // namespace pgrelay::proxy
