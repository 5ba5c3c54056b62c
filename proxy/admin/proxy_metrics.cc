#include "proxy/admin/proxy_metrics.h"

#include <chrono>
#include <cmath>
#include <string>
#include <utility>

namespace pgrelay::admin {

std::string_view ToString(StatementClass c) {
  switch (c) {
    case StatementClass::kRead:
      return "read";
    case StatementClass::kWrite:
      return "write";
    case StatementClass::kTransaction:
      return "transaction";
    case StatementClass::kOther:
      return "other";
  }
  return "unknown";
}

std::string_view ToString(RejectReason r) {
  switch (r) {
    case RejectReason::kMaxConnections:
      return "max_connections";
    case RejectReason::kStartupTimeout:
      return "startup_timeout";
    case RejectReason::kProtocolError:
      return "protocol_error";
    case RejectReason::kAuthFailed:
      return "auth_failed";
    case RejectReason::kBackendUnavailable:
      return "backend_unavailable";
    case RejectReason::kShuttingDown:
      return "shutting_down";
  }
  return "unknown";
}

std::string_view ToString(PinReason r) {
  switch (r) {
    case PinReason::kListen:
      return "listen";
    case PinReason::kTemporaryObjects:
      return "temporary_objects";
    case PinReason::kAdvisoryLock:
      return "advisory_lock";
    case PinReason::kWithHoldCursor:
      return "with_hold_cursor";
    case PinReason::kLoad:
      return "load";
  }
  return "unknown";
}

namespace {

template <typename E>
std::vector<std::string> EnumValues(E last) {
  std::vector<std::string> out;
  for (int i = 0; i <= static_cast<int>(last); ++i) {
    out.emplace_back(ToString(static_cast<E>(i)));
  }
  return out;
}

// Node names of the config's slots; a removed slot has none (no series).
std::vector<std::string> NodeNames(const config::Config& config) {
  std::vector<std::string> names;
  for (const config::NodeConfig& node : config.nodes) {
    names.push_back(node.removed ? std::string() : node.name);
  }
  return names;
}

LabelDim StrategyDim() {
  return {"strategy",
          {std::string(config::ToString(config::Strategy::kLeader)),
           std::string(config::ToString(config::Strategy::kFollower)),
           std::string(config::ToString(config::Strategy::kReadYourWrites)),
           std::string(config::ToString(config::Strategy::kQuorum))}};
}

// Registers the families computed from the topology at scrape time.
void AddTopologyMetrics(Registry& r, TopologySource source) {
  auto each_node = [source](auto per_node) {
    return [source, per_node](SampleSink& sink) {
      const std::shared_ptr<const health::Topology> topology = source ? source() : nullptr;
      if (topology == nullptr) return;
      for (const health::NodeStatus& node : topology->nodes) {
        if (!node.removed) per_node(node, sink);
      }
    };
  };
  r.AddCallback(MetricType::kGauge, "pgrelay_node_up",
                "1 if pgrelay considers the node up (health state up), else 0.", {"node"},
                each_node([](const health::NodeStatus& n, SampleSink& sink) {
                  sink.Add({n.name}, n.state == health::NodeHealth::kUp ? 1 : 0);
                }));
  r.AddCallback(MetricType::kGauge, "pgrelay_node_state",
                "The node's health state: 1 for the current state, 0 for the others.",
                {"node", "state"}, each_node([](const health::NodeStatus& n, SampleSink& sink) {
                  for (auto s : {health::NodeHealth::kUp, health::NodeHealth::kSuspect,
                                 health::NodeHealth::kDown, health::NodeHealth::kFenced}) {
                    sink.Add({n.name, health::ToString(s)}, n.state == s ? 1 : 0);
                  }
                }));
  r.AddCallback(MetricType::kGauge, "pgrelay_node_role",
                "The role the node last reported: 1 for the current role, 0 for the others.",
                {"node", "role"}, each_node([](const health::NodeStatus& n, SampleSink& sink) {
                  for (auto role : {health::NodeRole::kPrimary, health::NodeRole::kReplica,
                                    health::NodeRole::kUnknown}) {
                    sink.Add({n.name, health::ToString(role)}, n.role == role ? 1 : 0);
                  }
                }));
  r.AddCallback(MetricType::kGauge, "pgrelay_node_replay_lag_bytes",
                "WAL bytes the node's replay is behind the primary (0 for the primary); absent "
                "while unknown.",
                {"node"}, each_node([](const health::NodeStatus& n, SampleSink& sink) {
                  if (n.replay_lag_bytes) {
                    sink.Add({n.name}, static_cast<double>(*n.replay_lag_bytes));
                  }
                }));
  r.AddCallback(MetricType::kGauge, "pgrelay_node_replay_lag_seconds",
                "Seconds since the last transaction the node replayed, 0 when caught up; absent "
                "while unknown.",
                {"node"}, each_node([](const health::NodeStatus& n, SampleSink& sink) {
                  if (n.replay_lag_seconds) sink.Add({n.name}, *n.replay_lag_seconds);
                }));
  r.AddCallback(MetricType::kGauge, "pgrelay_node_timeline",
                "The node's WAL timeline; absent until known.", {"node"},
                each_node([](const health::NodeStatus& n, SampleSink& sink) {
                  if (n.timeline > 0) sink.Add({n.name}, n.timeline);
                }));
  r.AddCallback(MetricType::kGauge, "pgrelay_topology_epoch",
                "The failover epoch (fencing token); increases with every promotion.", {},
                [source](SampleSink& sink) {
                  const auto topology = source ? source() : nullptr;
                  if (topology) sink.Add({}, static_cast<double>(topology->epoch));
                });
  r.AddCallback(MetricType::kCounter, "pgrelay_health_probe_failures_total",
                "Failed (or overdue) health probes, by node.", {"node"},
                each_node([](const health::NodeStatus& n, SampleSink& sink) {
                  sink.Add({n.name}, static_cast<double>(n.probe_failures_total));
                }));
  r.AddCallback(MetricType::kCounter, "pgrelay_failovers_total", "Promotions pgrelay carried out.",
                {}, [source](SampleSink& sink) {
                  const auto topology = source ? source() : nullptr;
                  if (topology) sink.Add({}, static_cast<double>(topology->failovers));
                });
  r.AddCallback(MetricType::kGauge, "pgrelay_last_failover_duration_seconds",
                "How long the last failover took, from declaring the primary failed to the new "
                "primary recorded; 0 if none yet.",
                {}, [source](SampleSink& sink) {
                  const auto topology = source ? source() : nullptr;
                  if (topology) sink.Add({}, topology->last_failover_seconds);
                });
  r.AddCallback(MetricType::kGauge, "pgrelay_fenced_nodes",
                "Nodes that claim to be primary but are not the primary of the current epoch: "
                "they get no traffic until rejoined as replicas (alert on > 0).",
                {}, [source](SampleSink& sink) {
                  const auto topology = source ? source() : nullptr;
                  if (!topology) return;
                  int fenced = 0;
                  for (const auto& n : topology->nodes)
                    fenced += n.state == health::NodeHealth::kFenced;
                  sink.Add({}, fenced);
                });
  r.AddCallback(MetricType::kGauge, "pgrelay_topology_primary_conflict",
                "1 while more than one reachable node reports itself primary.", {},
                [source](SampleSink& sink) {
                  const auto topology = source ? source() : nullptr;
                  if (topology) sink.Add({}, topology->primary_conflict ? 1 : 0);
                });
}

// Registers the families computed from the coordinator's status at scrape time.
void AddCoordinationMetrics(Registry& r, CoordinationSource source) {
  auto each = [source](auto sample) {
    return [source, sample](SampleSink& sink) {
      if (const std::optional<health::Coordinator::Status> s = source()) sample(*s, sink);
    };
  };
  r.AddCallback(MetricType::kGauge, "pgrelay_coordination_degraded",
                "1 while etcd cannot be reached: this pgrelay serves with the last failover record "
                "it saw and takes part in no failover.",
                {}, each([](const health::Coordinator::Status& s, SampleSink& sink) {
                  sink.Add({}, s.etcd_reachable ? 0 : 1);
                }));
  r.AddCallback(MetricType::kGauge, "pgrelay_coordination_is_coordinator",
                "1 while this pgrelay is the coordinator (the only instance that may promote).", {},
                each([](const health::Coordinator::Status& s, SampleSink& sink) {
                  sink.Add({}, s.coordinator ? 1 : 0);
                }));
  r.AddCallback(MetricType::kGauge, "pgrelay_coordination_members",
                "Live pgrelay members in etcd, as last read (this one included).", {},
                each([](const health::Coordinator::Status& s, SampleSink& sink) {
                  sink.Add({}, static_cast<double>(s.members.size()));
                }));
}

}  // namespace

ProxyMetrics::ProxyMetrics(const config::Config& config, size_t workers, TopologySource topology,
                           CoordinationSource coordination)
    : workers_(workers), node_names_(std::make_shared<LiveLabelValues>()) {
  Registry& r = registry_;
  node_names_->Set(NodeNames(config));
  const LabelDim node{"node", std::vector<std::string>(config::kMaxNodes), node_names_};
  client_connections = r.AddGauge("pgrelay_client_connections", "Client connections open now.");
  client_connections_total =
      r.AddCounter("pgrelay_client_connections_total", "Client connections accepted since start.");
  client_connections_rejected =
      r.AddCounter("pgrelay_client_connections_rejected_total",
                   "Client connections refused or closed before the session started, by reason.",
                   {{"reason", EnumValues(RejectReason::kShuttingDown)}});
  client_bytes_received =
      r.AddCounter("pgrelay_client_bytes_received_total", "Bytes read from clients.");
  client_bytes_sent = r.AddCounter("pgrelay_client_bytes_sent_total", "Bytes written to clients.");
  backend_connections = r.AddGauge("pgrelay_backend_connections",
                                   "Connections from pgrelay to the node open now.", {node});
  backend_connect_failures = r.AddCounter(
      "pgrelay_backend_connect_failures_total",
      "Failed attempts to open a session's connection to the node (connect or login).", {node});
  pool_idle_connections = r.AddGauge(
      "pgrelay_pool_idle_connections",
      "Connections to the node parked in the pool (pool.mode: session), waiting for a session.",
      {node});
  pool_reused = r.AddCounter("pgrelay_pool_reused_total",
                             "Sessions' connections to the node taken from the pool instead of "
                             "a new login (pool.mode: session).",
                             {node});
  statements = r.AddCounter(
      "pgrelay_statements_total",
      "Statements routed (a simple Query, or an extended-protocol batch up to Sync), by target "
      "node, statement class and routing strategy.",
      {node, {"class", EnumValues(StatementClass::kOther)}, StrategyDim()});
  statement_duration =
      r.AddHistogram("pgrelay_statement_duration_seconds",
                     "Time from sending a statement to the node until its ReadyForQuery, by node.",
                     kLatencyBuckets, {node});
  reads_fallback_primary = r.AddCounter(
      "pgrelay_reads_fallback_primary_total",
      "Reads sent to the primary because no replica was eligible (routing.fallback_to_primary).");
  sessions_pinned =
      r.AddCounter("pgrelay_sessions_pinned_total",
                   "Sessions pinned to the primary by session-bound state, by the first reason.",
                   {{"reason", EnumValues(PinReason::kLoad)}});
  classifier_cache_hits = r.AddCounter("pgrelay_classifier_cache_hits_total",
                                       "Statement classifications answered from the cache.");
  classifier_cache_misses = r.AddCounter("pgrelay_classifier_cache_misses_total",
                                         "Statement classifications not found in the cache.");
  const LabelDim consistency{"strategy",
                             {std::string(config::ToString(config::Strategy::kReadYourWrites)),
                              std::string(config::ToString(config::Strategy::kQuorum))}};
  consistency_waits =
      r.AddCounter("pgrelay_consistency_waits_total",
                   "Reads that waited for a replica to catch up before running there, by strategy.",
                   {consistency});
  consistency_fallbacks = r.AddCounter(
      "pgrelay_consistency_fallbacks_total",
      "Reads sent to the primary because no replica was known to be consistent, by strategy.",
      {consistency});
  consistency_wait_duration = r.AddHistogram(
      "pgrelay_consistency_wait_seconds",
      "How long reads that waited for a consistent replica waited (wherever they ran then), by "
      "strategy.",
      kLatencyBuckets, {consistency});
  config_reloads = r.AddCounter("pgrelay_config_reloads_total", "Config reloads, by result.",
                                {{"result", {"success", "failure"}}});

  AddTopologyMetrics(r, topology);
  const double start =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  r.AddCallback(MetricType::kGauge, "pgrelay_start_time_seconds",
                "When pgrelay started, in seconds since the Unix epoch.", {},
                [start](SampleSink& sink) { sink.Add({}, start); });

  if (coordination) AddCoordinationMetrics(r, std::move(coordination));
  r.Freeze(workers + 2);
}

int64_t ProxyMetrics::ClientConnections() const {
  return std::llround(registry_.Value(client_connections.At()));
}

void ProxyMetrics::Reconfigure(const config::Config& config) {
  node_names_->Set(NodeNames(config));
}

std::vector<int64_t> ProxyMetrics::PerNode(const GaugeFamily& family) const {
  std::vector<int64_t> out;
  for (size_t i = 0; i < config::kMaxNodes; ++i) {
    out.push_back(std::llround(registry_.Value(family.At(i))));
  }
  return out;
}

std::vector<int64_t> ProxyMetrics::BackendConnections() const {
  return PerNode(backend_connections);
}

std::vector<int64_t> ProxyMetrics::PoolIdleConnections() const {
  return PerNode(pool_idle_connections);
}

}  // namespace pgrelay::admin
