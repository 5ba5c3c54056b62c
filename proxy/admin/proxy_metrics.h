// pgrelay's metrics: every family the proxy exposes, with the label values known at start-up
// (nodes in config order, strategies, statement classes, reasons) pre-registered into fixed
// indexes. Built on the main thread before any writer starts. Then each shard has one writer:
// WorkerShard(i) worker i, MonitorShard() the health monitor's thread, ControlShard() the main
// thread (listener, reload, switchover). The admin thread renders registry().
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include "config/config.h"
#include "health/coordinator.h"
#include "health/topology.h"
#include "proxy/admin/metrics.h"

namespace pgrelay::admin {

// The `class` label of pgrelay_statements_total.
enum class StatementClass : uint8_t {
  kRead,         // may run on a replica (whether or not it went to one)
  kWrite,        // must run on the primary
  kTransaction,  // transaction control: BEGIN, COMMIT, ROLLBACK, SAVEPOINT, ...
  kOther,        // empty queries, session-only statements (SET, SHOW, DISCARD, LISTEN, ...)
};
std::string_view ToString(StatementClass c);  // "read" | "write" | "transaction" | "other"

// The `reason` label of pgrelay_client_connections_rejected_total.
enum class RejectReason : uint8_t {
  kMaxConnections,      // limits.max_client_connections reached
  kStartupTimeout,      // start-up + authentication took longer than limits.startup_timeout
  kProtocolError,       // malformed start-up packet or message, unsupported protocol version
  kAuthFailed,          // unknown user or wrong password
  kBackendUnavailable,  // no node could be reached for the session's first connection
  kShuttingDown,        // arrived while pgrelay was stopping
};
std::string_view ToString(RejectReason r);

// The `reason` label of pgrelay_sessions_pinned_total (SessionState::Pin reasons).
enum class PinReason : uint8_t {
  kListen,
  kTemporaryObjects,
  kAdvisoryLock,
  kWithHoldCursor,
  kLoad,
};
std::string_view ToString(PinReason r);

// The `result` label of pgrelay_config_reloads_total.
enum class ReloadResult : uint8_t { kSuccess, kFailure };

// The `strategy` label of the consistency counters: the strategies that wait.
enum class ConsistencyStrategy : uint8_t { kReadYourWrites, kQuorum };

// Returns the current topology (or nullptr before the first one). Called on the scrape thread.
using TopologySource = std::function<std::shared_ptr<const health::Topology>()>;
// coordination.etcd: this instance's membership and election status (Coordinator::Snapshot).
using CoordinationSource = std::function<std::optional<health::Coordinator::Status>()>;

// Who writes what (each through its own shard: Shard& m = metrics.WorkerShard(worker)):
//   session start/end       client_connections +1/-1, client_connections_total +1
//   refused before Relay()  client_connections_rejected.At(RejectReason)
//   client read / write     client_bytes_received / client_bytes_sent += bytes
//   backend login ok / lost backend_connections.At(node) +1 / -1; failed login:
//                           backend_connect_failures.At(node)
//   pool park / take / close pool_idle_connections.At(node) +1 / -1 / -1; a take that reuses
//                           a parked connection: pool_reused.At(node)
//   unit forwarded          statements.At(node, StatementClass, config::Strategy);
//                           statement_duration.At(node) observed at its ReadyForQuery
//   read sent to primary    reads_fallback_primary (no eligible replica)
//   session pinned          sessions_pinned.At(PinReason), once per pin
//   after Classify()        Set(classifier_cache_hits / _misses, classifier.stats().hits/misses)
//   config reload           config_reloads (the thread doing it)

class ProxyMetrics {
 public:
  // `workers`: the number of worker threads (one shard each, plus MonitorShard and
  // ControlShard). Node indexes are positions in config.nodes (the topology's order too).
  // `coordination` (set with coordination.etcd) adds the pgrelay_coordination_* families.
  ProxyMetrics(const config::Config& config, size_t workers, TopologySource topology,
               CoordinationSource coordination = nullptr);
  ProxyMetrics(const ProxyMetrics&) = delete;
  ProxyMetrics& operator=(const ProxyMetrics&) = delete;

  Registry& registry() { return registry_; }
  const Registry& registry() const { return registry_; }
  Shard& WorkerShard(size_t worker) { return registry_.shard(worker); }
  Shard& MonitorShard() { return registry_.shard(workers_); }
  Shard& ControlShard() { return registry_.shard(workers_ + 1); }
  // Config reload: the node label values of the new node slots (removed ones drop out).
  void Reconfigure(const config::Config& config);

  // Sums over every shard, for /cluster.
  int64_t ClientConnections() const;
  std::vector<int64_t> BackendConnections() const;   // per node slot (config::kMaxNodes)
  std::vector<int64_t> PoolIdleConnections() const;  // per node slot (config::kMaxNodes)

  // --- Sharded families. Indexes: node = position in config.nodes, strategy =
  // config::Strategy, class = StatementClass, reason = RejectReason / PinReason. ---

  // Clients connected now (+1 when a session starts, -1 when it ends, same worker).
  GaugeFamily client_connections;             // pgrelay_client_connections
  CounterFamily client_connections_total;     // pgrelay_client_connections_total
  CounterFamily client_connections_rejected;  // ..._rejected_total{reason}
  CounterFamily client_bytes_received;        // pgrelay_client_bytes_received_total
  CounterFamily client_bytes_sent;            // pgrelay_client_bytes_sent_total
  GaugeFamily backend_connections;            // pgrelay_backend_connections{node}
  CounterFamily backend_connect_failures;     // pgrelay_backend_connect_failures_total{node}
  GaugeFamily pool_idle_connections;          // pgrelay_pool_idle_connections{node}
  CounterFamily pool_reused;                  // pgrelay_pool_reused_total{node}
  // One per routed unit (simple Query, or extended-protocol batch up to Sync).
  CounterFamily statements;                   // pgrelay_statements_total{node,class,strategy}
  HistogramFamily statement_duration;         // pgrelay_statement_duration_seconds{node}
  CounterFamily reads_fallback_primary;       // pgrelay_reads_fallback_primary_total
  CounterFamily sessions_pinned;              // pgrelay_sessions_pinned_total{reason}
  CounterFamily classifier_cache_hits;        // pgrelay_classifier_cache_hits_total
  CounterFamily classifier_cache_misses;      // pgrelay_classifier_cache_misses_total
  CounterFamily consistency_waits;            // pgrelay_consistency_waits_total{strategy}
  CounterFamily consistency_fallbacks;        // pgrelay_consistency_fallbacks_total{strategy}
  HistogramFamily consistency_wait_duration;  // pgrelay_consistency_wait_seconds{strategy}
  CounterFamily config_reloads;               // pgrelay_config_reloads_total{result}

  // Computed at scrape time from the topology: pgrelay_node_up{node},
  // pgrelay_node_state{node,state}, pgrelay_node_role{node,role},
  // pgrelay_node_replay_lag_bytes{node}, pgrelay_node_replay_lag_seconds{node},
  // pgrelay_node_timeline{node}, pgrelay_topology_epoch, pgrelay_topology_primary_conflict,
  // pgrelay_failovers_total, pgrelay_last_failover_duration_seconds, pgrelay_fenced_nodes,
  // pgrelay_health_probe_failures_total{node},
  // and pgrelay_start_time_seconds. With coordination.etcd: pgrelay_coordination_degraded,
  // pgrelay_coordination_is_coordinator, pgrelay_coordination_members.

 private:
  // A node-labelled gauge summed over every shard, per node slot.
  std::vector<int64_t> PerNode(const GaugeFamily& family) const;

  const size_t workers_;
  std::shared_ptr<LiveLabelValues> node_names_;
  Registry registry_;
};

}  // namespace pgrelay::admin
