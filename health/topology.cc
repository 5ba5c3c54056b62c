#include "health/topology.h"

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

std::string_view ToString(NodeHealth health) {
  switch (health) {
    case NodeHealth::kUp:
      return "up";
    case NodeHealth::kSuspect:
      return "suspect";
    case NodeHealth::kDown:
      return "down";
    case NodeHealth::kFenced:
      return "fenced";
  }
  return "unknown";
}

bool Topology::IsUsableReplica(size_t i, uint64_t max_lag_bytes,
                               std::chrono::milliseconds max_lag) const {
  if (i >= nodes.size()) return false;
  const NodeStatus& n = nodes[i];
  if (n.role != NodeRole::kReplica || n.state != NodeHealth::kUp) return false;
  if (max_lag_bytes > 0 && (!n.replay_lag_bytes || *n.replay_lag_bytes > max_lag_bytes)) {
    return false;
  }
  if (max_lag.count() > 0 && (!n.replay_lag_seconds || *n.replay_lag_seconds * 1000.0 >
                                                           static_cast<double>(max_lag.count()))) {
    return false;
  }
  return true;
}

const NodeStatus* Topology::Find(std::string_view name) const {
  for (const NodeStatus& n : nodes) {
    if (!n.removed && n.name == name) return &n;
  }
  return nullptr;
}

}  // namespace pgrelay::health
