#include "routing/router.h"

#include <algorithm>

namespace pgrelay::routing {

UnitTraits TraitsOf(const Classification& c) {
  UnitTraits t;
  constexpr uint64_t kSessionBound = Flag::kListen | Flag::kCreateTemp | Flag::kTempReference |
                                     Flag::kSessionAdvisoryLock | Flag::kDeclareCursorWithHold |
                                     Flag::kLoad | Flag::kNotify | Flag::kDiscardTemp |
                                     Flag::kDiscardAll;
  t.write = c.is_write() || c.HasAny(kSessionBound);
  t.hint = c.hint;
  switch (c.txn) {
    case TxnKind::kBegin:
      t.begin = true;
      t.begin_read_only = c.txn_access == TxnAccess::kReadOnly;
      t.tx_after = TxAfter::kInTransaction;
      break;
    case TxnKind::kCommit:
    case TxnKind::kPrepareTransaction:
      t.commits = true;
      t.tx_after = c.Has(Flag::kTxnChain) ? TxAfter::kInTransaction : TxAfter::kIdle;
      break;
    case TxnKind::kRollback:
      t.tx_after = c.Has(Flag::kTxnChain) ? TxAfter::kInTransaction : TxAfter::kIdle;
      break;
    default:
      break;
  }
  // A string that opens and closes a transaction ("BEGIN; ...; COMMIT") leaves none open; its
  // first transaction statement says BEGIN, so look at the count of statements too.
  if (c.Has(Flag::kMultiStatement) && t.begin) t.tx_after = TxAfter::kUnchanged;
  return t;
}

Router::Router(const config::Config& config)
    : config_(&config), balancer_(config.routing.load_balance) {
  candidates_.reserve(config::kMaxNodes);
}

void Router::Reconfigure(const config::Config& config) {
  if (config.routing.load_balance != config_->routing.load_balance) {
    balancer_ = LoadBalancer(config.routing.load_balance);
  }
  config_ = &config;
}

bool Router::NeedsPrimary(const UnitTraits& unit, const SessionRouting& session) const {
  if (unit.hint == Hint::kReplica && !unit.write) return false;
  if (unit.write || unit.hint == Hint::kPrimary || session.pinned) return true;
  if (session.strategy == config::Strategy::kLeader) return true;
  if (unit.begin) return !(unit.begin_read_only || session.default_read_only);
  return false;
}

bool Router::EligibleReplica(const health::Topology& topology, int i) const {
  if (i == topology.primary) return false;
  if (topology.nodes[i].weight <= 0 || topology.nodes[i].removed) return false;
  return topology.IsUsableReplica(static_cast<size_t>(i), config_->routing.max_lag_bytes,
                                  config_->routing.max_lag);
}

bool Router::Replayed(const health::Topology& topology, int i, const LsnBound* bound) {
  if (bound == nullptr || bound->min_lsn == 0) return true;
  uint64_t replay = topology.nodes[i].replay_lsn;
  if (static_cast<size_t>(i) < bound->replay_lsn.size()) {
    replay = std::max(replay, bound->replay_lsn[i]);
  }
  return replay >= bound->min_lsn;
}

RouteResult Router::Route(const UnitTraits& unit, const SessionRouting& session,
                          const health::Topology& topology, std::span<const uint32_t> in_flight,
                          const LsnBound* bound) {
  RouteResult r;
  if (!NeedsPrimary(unit, session)) {
    candidates_.clear();
    for (int i : topology.replicas) {
      if (!EligibleReplica(topology, i)) continue;
      if (!Replayed(topology, i, bound)) {
        r.behind = true;
        continue;
      }
      candidates_.push_back(
          Candidate{i, topology.nodes[i].weight,
                    static_cast<size_t>(i) < in_flight.size() ? in_flight[i] : 0});
    }
    if (session.preferred_replica >= 0 &&
        config_->routing.replica_affinity == config::ReplicaAffinity::kSession) {
      for (const Candidate& c : candidates_) {
        if (c.node == session.preferred_replica) {
          r.node = c.node;
          return r;
        }
      }
    }
    r.node = balancer_.Pick(candidates_);
    if (r.node >= 0) return r;
    if (!config_->routing.fallback_to_primary) {
      r.error = "no replica is available for reads and routing.fallback_to_primary is off";
      return r;
    }
    r.fell_back = true;
  }
  r.to_primary = true;
  r.node = topology.primary;
  if (r.node < 0) {
    r.error = topology.primary_conflict
                  ? "pgrelay refuses writes: more than one node reports itself primary"
                  : "no primary node is available";
  }
  return r;
}

}  // namespace pgrelay::routing
