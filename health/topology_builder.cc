#include "health/topology_builder.h"

#include <algorithm>

namespace pgrelay::health {
namespace {

bool Reachable(const NodeStatus& n) {
  return n.state == NodeHealth::kUp || n.state == NodeHealth::kSuspect;
}

}  // namespace

Topology BuildTopology(std::vector<NodeStatus> nodes, uint64_t version, uint64_t epoch,
                       int previous_primary, const RecordedPrimary* recorded) {
  Topology t;
  t.version = version;
  t.epoch = epoch;
  t.nodes = std::move(nodes);

  std::vector<int> claims;
  std::vector<int> fresh_claims;
  for (size_t i = 0; i < t.nodes.size(); ++i) {
    const NodeStatus& n = t.nodes[i];
    if (n.role != NodeRole::kPrimary || !Reachable(n)) continue;
    claims.push_back(static_cast<int>(i));
    if (n.up) fresh_claims.push_back(static_cast<int>(i));
  }
  if (recorded != nullptr && recorded->node >= 0) {
    const bool holds = std::find(claims.begin(), claims.end(), recorded->node) != claims.end();
    std::vector<int> newer;  // promoted outside pgrelay after the record
    for (int i : claims) {
      if (i != recorded->node && t.nodes[i].timeline > recorded->timeline) newer.push_back(i);
    }
    if (holds) {
      t.primary = recorded->node;
    } else if (newer.size() == 1) {
      t.primary = newer[0];
    } else if (newer.size() > 1) {
      t.primary_conflict = true;
    }
    for (int i : claims) {
      if (i != t.primary) t.nodes[i].state = NodeHealth::kFenced;
    }
  } else if (claims.size() == 1) {
    t.primary = claims[0];
  } else if (claims.size() > 1) {
    if (fresh_claims.size() == 1) {
      t.primary = fresh_claims[0];
    } else if (fresh_claims.empty() &&
               std::find(claims.begin(), claims.end(), previous_primary) != claims.end()) {
      t.primary = previous_primary;
    } else {
      t.primary_conflict = true;
    }
  }

  uint64_t reference = 0;
  if (t.primary >= 0) {
    reference = t.nodes[t.primary].current_lsn;
  } else {
    for (const NodeStatus& n : t.nodes) {
      if (n.role == NodeRole::kReplica && Reachable(n)) {
        reference = std::max({reference, n.receive_lsn, n.replay_lsn});
      }
    }
  }
  for (size_t i = 0; i < t.nodes.size(); ++i) {
    NodeStatus& n = t.nodes[i];
    n.replay_lag_bytes.reset();
    if (static_cast<int>(i) == t.primary) {
      n.replay_lag_bytes = 0;
      n.replay_lag_seconds = 0.0;
    } else if (n.role == NodeRole::kReplica) {
      // A replica may have replayed past the primary's LSN read a moment earlier: clamp at 0.
      if (reference > 0 && n.replay_lsn > 0) {
        n.replay_lag_bytes = reference > n.replay_lsn ? reference - n.replay_lsn : 0;
      }
      if (n.state == NodeHealth::kUp) t.replicas.push_back(static_cast<int>(i));
    } else {
      n.replay_lag_seconds.reset();
    }
  }
  return t;
}

}  // namespace pgrelay::health
