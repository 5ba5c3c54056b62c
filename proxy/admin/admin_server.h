// The admin HTTP server (Boost.Beast, kept out of this header): GET /metrics, /healthz,
// /readyz, /cluster and the token-protected POST endpoints, on its own io_context and thread.
// Start/Stop from one thread; the callbacks run on the admin thread and must be thread-safe
// with respect to the rest of the process.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.h"
#include "health/coordinator.h"
#include "health/topology.h"

namespace pgrelay::admin {

class Registry;

// The answer of a mutating endpoint.
struct ActionResult {
  int status = 501;  // HTTP status
  std::string body;  // text/plain
};

struct AdminOptions {
  config::Endpoint listen{"127.0.0.1", 9187};  // port 0: any free port (see AdminServer::port)
  // Bearer token for the mutating endpoints; empty = none (then only a loopback listen address
  // is accepted).
  std::string token;
  std::chrono::milliseconds request_timeout{10000};  // per request, and for an idle keep-alive
  size_t max_header_bytes = 8 << 10;
  size_t max_body_bytes = 64 << 10;
  size_t max_connections = 32;  // more are closed right after accept
};

// What the server shows, as small callbacks instead of the proxy's classes. Every member may be
// empty; the endpoint then says what it lacks.
struct AdminSources {
  std::function<std::shared_ptr<const health::Topology>()> topology;
  const Registry* metrics = nullptr;
  // For /cluster: client connections now, and backend connections in use and parked in the
  // pool per node (topology order).
  std::function<int64_t()> client_connections;
  std::function<std::vector<int64_t>()> backend_connections;
  std::function<std::vector<int64_t>()> pool_idle_connections;
  // POST /pause, /resume, /reload, /switchover (after the token check). `action` is the path
  // without the slash, `query` the raw query string ("to=pg2"). Empty: 501 Not Implemented.
  std::function<ActionResult(std::string_view action, std::string_view query)> on_action;
  // For /cluster with coordination.etcd: this instance's membership and the coordinator.
  std::function<std::optional<health::Coordinator::Status>()> coordination;
};

class AdminServer {
 public:
  AdminServer(AdminOptions options, AdminSources sources);
  ~AdminServer();  // Stop()s
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;

  // Binds options.listen and starts the admin thread. Throws std::runtime_error with a message
  // for the operator if the address is invalid, cannot be bound, or is not a loopback address
  // while no token is set.
  void Start();
  // Closes the listener and every connection and joins the thread. Idempotent.
  void Stop();
  uint16_t port() const;  // the bound port (after Start)
  // Config reload: the bearer token from now on (empty: none; the caller has checked that the
  // listen address is loopback then). Thread-safe.
  void SetToken(const std::string& token);

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pgrelay::admin
