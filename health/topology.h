// A snapshot of the cluster as the health monitor last saw it: every node's role and state.
// Immutable once published; share freely as std::shared_ptr<const Topology>.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace pgrelay::health {

enum class NodeRole { kUnknown, kPrimary, kReplica };
std::string_view ToString(NodeRole role);

struct NodeStatus {
  std::string name;
  std::string host;
  uint16_t port = 0;
  NodeRole role = NodeRole::kUnknown;
  bool up = false;
  std::string last_error;  // why the last probe failed (no secrets)
};

struct Topology {
  uint64_t version = 0;           // increases with every published snapshot
  std::vector<NodeStatus> nodes;  // in config order
  int primary = -1;               // index into nodes, -1 if no single primary is known

  const NodeStatus* Primary() const { return primary >= 0 ? &nodes[primary] : nullptr; }
};

}  // namespace pgrelay::health
