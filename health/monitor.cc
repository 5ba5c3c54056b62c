#include "health/monitor.h"

#include <libpq-fe.h>

#include <string>

#include "config/log.h"

namespace pgrelay::health {

std::string_view ToString(NodeRole role) {
  switch (role) {
    case NodeRole::kPrimary:
      return "primary";
    case NodeRole::kReplica:
      return "replica";
    case NodeRole::kUnknown:
      break;
  }
  return "unknown";
}

struct Monitor::Probe {
  const config::NodeConfig* node = nullptr;
  PGconn* conn = nullptr;
  NodeStatus last;

  ~Probe() { Close(); }
  void Close() {
    if (conn != nullptr) PQfinish(conn);
    conn = nullptr;
  }
};

namespace {

std::string FirstLine(const char* text) {
  std::string s = text ? text : "";
  auto nl = s.find('\n');
  if (nl != std::string::npos) s.resize(nl);
  return s;
}

}  // namespace

Monitor::Monitor(std::shared_ptr<const config::Config> config) : config_(std::move(config)) {
  for (const auto& node : config_->nodes) {
    auto p = std::make_unique<Probe>();
    p->node = &node;
    p->last.name = node.name;
    p->last.host = node.host;
    p->last.port = node.port;
    probes_.push_back(std::move(p));
  }
  auto empty = std::make_shared<Topology>();
  for (const auto& p : probes_) empty->nodes.push_back(p->last);
  snapshot_.store(std::move(empty));
}

Monitor::~Monitor() { Stop(); }

void Monitor::Start() {
  ProbeRound();
  thread_ = std::thread([this] { Loop(); });
}

void Monitor::Stop() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  probes_.clear();
}

void Monitor::Loop() {
  std::unique_lock lock(mu_);
  while (!stop_) {
    if (cv_.wait_for(lock, config_->health.interval, [this] { return stop_; })) break;
    lock.unlock();
    ProbeRound();
    lock.lock();
  }
}

void Monitor::ProbeRound() {
  const auto creds = config_->MonitorCredentials();
  const int timeout_s =
      std::max<int>(2, static_cast<int>((config_->health.timeout.count() + 999) / 1000));
  const std::string timeout_str = std::to_string(timeout_s);
  auto topo = std::make_shared<Topology>();
  int primaries = 0;
  for (auto& p : probes_) {
    NodeStatus st = p->last;
    if (p->conn != nullptr && PQstatus(p->conn) != CONNECTION_OK) p->Close();
    if (p->conn == nullptr) {
      const std::string port = std::to_string(p->node->port);
      const char* keys[] = {
          "host", "port", "user", "password", "dbname", "connect_timeout", "application_name",
          nullptr};
      const char* vals[] = {p->node->host.c_str(),
                            port.c_str(),
                            creds.user.c_str(),
                            creds.password.c_str(),
                            config_->health.database.c_str(),
                            timeout_str.c_str(),
                            "pgrelay-health",
                            nullptr};
      p->conn = PQconnectdbParams(keys, vals, 0);
      if (PQstatus(p->conn) != CONNECTION_OK) {
        st.up = false;
        st.last_error = FirstLine(PQerrorMessage(p->conn));
        p->Close();
      }
    }
    if (p->conn != nullptr) {
      PGresult* res = PQexec(p->conn, "SELECT pg_is_in_recovery()");
      if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
        st.up = true;
        st.last_error.clear();
        st.role = PQgetvalue(res, 0, 0)[0] == 't' ? NodeRole::kReplica : NodeRole::kPrimary;
      } else {
        st.up = false;
        st.last_error = FirstLine(PQerrorMessage(p->conn));
        p->Close();
      }
      PQclear(res);
    }
    if (!st.up) st.role = NodeRole::kUnknown;
    if (st.up != p->last.up || st.role != p->last.role) {
      if (st.up) {
        PGRELAY_LOG(kInfo, "health",
                    "node " << st.name << " (" << st.host << ":" << st.port
                            << ") is up, role=" << ToString(st.role));
      } else {
        PGRELAY_LOG(kWarning, "health",
                    "node " << st.name << " (" << st.host << ":" << st.port
                            << ") is down: " << st.last_error);
      }
    }
    p->last = st;
    if (st.role == NodeRole::kPrimary) ++primaries;
    topo->nodes.push_back(st);
  }
  if (primaries == 1) {
    for (size_t i = 0; i < topo->nodes.size(); ++i) {
      if (topo->nodes[i].role == NodeRole::kPrimary) topo->primary = static_cast<int>(i);
    }
  } else if (primaries > 1) {
    PGRELAY_LOG(kError, "health",
                primaries << " nodes report themselves primary; refusing to pick one for writes");
  }
  topo->version = ++version_;
  snapshot_.store(std::move(topo), std::memory_order_release);
}

}  // namespace pgrelay::health
