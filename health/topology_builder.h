// BuildTopology: turns the per-node statuses of one monitor round into a Topology (which node is
// primary, conflicts, lag in bytes, usable replicas). Pure function; thread-safe.
#pragma once

#include <cstdint>
#include <vector>

#include "health/topology.h"

namespace pgrelay::health {

// `nodes` come from NodeState::Fill, in config order. The primary is the one node that reports
// itself primary and is not down or fenced. If several do, a claim confirmed by this round's
// probe beats the stale claims of suspect nodes; with no confirmed claim the previous primary
// stays if it still claims; otherwise (several confirmed claims) there is no primary
// (primary = -1, primary_conflict). Lag bytes are measured against the primary's current LSN,
// or with no primary against the most advanced replica that is not down.
Topology BuildTopology(std::vector<NodeStatus> nodes, uint64_t version, uint64_t epoch,
                       int previous_primary = -1);

}  // namespace pgrelay::health
