// A snapshot of the cluster as the health monitor last saw it: every node's state, role, LSNs and
// lag, which node is the primary, and the failover epoch. Immutable once published; share freely
// as std::shared_ptr<const Topology> (Monitor::Snapshot()).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pgrelay::health {

enum class NodeRole { kUnknown, kPrimary, kReplica };
std::string_view ToString(NodeRole role);  // "unknown" | "primary" | "replica"

// Health of a node, with hysteresis (see HealthConfig): up -> suspect after 1 failed probe ->
// down after failure_threshold consecutive failures; down -> up after recovery_threshold
// consecutive good probes (suspect -> up after 1). A node never reached yet is down.
enum class NodeHealth {
  kUp,
  kSuspect,  // failing, not yet down: no reads; a suspect primary keeps the writes
  kDown,
  kFenced,  // reserved for failover: claims to be primary but is not the primary of the epoch
};
std::string_view ToString(NodeHealth health);  // "up" | "suspect" | "down" | "fenced"

struct NodeStatus {
  std::string name;
  std::string host;
  uint16_t port = 0;
  int weight = 1;  // read load-balancing weight (config)
  // A slot a config reload removed (config::NodeConfig::removed): down, never probed, never
  // routed to, left out of /cluster and the node metrics.
  bool removed = false;
  NodeHealth state = NodeHealth::kDown;
  // The role the last successful probe reported (kept while suspect/down); kUnknown until the
  // node has answered once.
  NodeRole role = NodeRole::kUnknown;
  bool up = false;         // the last probe succeeded (fresh reachability, no hysteresis)
  std::string last_error;  // why the last failed probe failed (no secrets); empty when up

  // From the last successful probe. LSNs are byte positions (PostgreSQL's X/Y hex); 0 = unknown.
  uint64_t current_lsn = 0;  // pg_current_wal_lsn(); primary only
  uint64_t receive_lsn = 0;  // pg_last_wal_receive_lsn(); replicas
  uint64_t replay_lsn = 0;   // pg_last_wal_replay_lsn(); replicas
  uint32_t timeline = 0;     // primary: from its current WAL file; replica: the WAL receiver's
  bool replay_paused = false;
  // Primary: its commit settings as of the last successful probe (quorum reads without it).
  std::string synchronous_standby_names;
  std::string synchronous_commit;
  std::string standby_name;  // replica: its name in synchronous_standby_names terms
  // Replica: is its WAL receiver streaming? nullopt when not visible (the probe role lacks
  // pg_monitor) or not a replica.
  std::optional<bool> wal_receiver_streaming;

  // Lag, computed per snapshot. Bytes: the primary's current LSN minus this replica's replay
  // LSN (with no primary: the most advanced replica's LSN instead), 0 for the primary.
  // Seconds: 0 when caught up (receive == replay), else now - the last replayed commit's time.
  // nullopt = unknown (no primary and no reference, LSN not known yet, ...).
  std::optional<uint64_t> replay_lag_bytes;
  std::optional<double> replay_lag_seconds;

  int consecutive_failures = 0;
  uint64_t probe_failures_total = 0;  // failed (or late) probes since pgrelay started
  int consecutive_successes = 0;
  std::chrono::steady_clock::time_point last_probe{};  // when the last probe ended; {} = never

  // Down (removed slots included) or fenced: pgrelay's connections to it should close.
  bool Lost() const { return state == NodeHealth::kDown || state == NodeHealth::kFenced; }
};

struct Topology {
  uint64_t version = 0;           // increases with every published snapshot
  uint64_t epoch = 0;             // failover epoch (fencing token); bumped by every promotion
  std::vector<NodeStatus> nodes;  // in config order
  // Index into nodes of the one node that is primary and not down; -1 if there is none or
  // several claim it (primary_conflict).
  int primary = -1;
  bool primary_conflict = false;  // more than one reachable node reports itself primary
  std::vector<int> replicas;      // indexes of replicas that are up, in config order
  // Failover (failover.mode auto/manual): promotions pgrelay carried out, how long the last
  // took (failure detected -> new primary recorded), and a promotion running now.
  uint64_t failovers = 0;
  double last_failover_seconds = 0;
  bool failover_running = false;

  const NodeStatus* Primary() const { return primary >= 0 ? &nodes[primary] : nullptr; }
  // A replica that is up and within both lag bounds; 0 means no bound. A replica whose lag is
  // unknown fails a bound that is set.
  bool IsUsableReplica(size_t i, uint64_t max_lag_bytes,
                       std::chrono::milliseconds max_lag = std::chrono::milliseconds(0)) const;
  const NodeStatus* Find(std::string_view name) const;  // nullptr if no such node (or removed)
};

}  // namespace pgrelay::health
