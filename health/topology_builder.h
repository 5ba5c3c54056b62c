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
//
// With a failover record (failover.mode auto/manual), the record decides instead: the recorded
// primary is the primary while it claims to be; a node that claims to be primary on a newer
// timeline than the record's (a promotion made outside pgrelay) takes over (the caller then
// records it under a new epoch; more than one such claim is a conflict); every other node that
// claims to be primary is fenced (state kFenced: no traffic) -- the old primary coming back.
struct RecordedPrimary {
  int node = -1;          // index of the recorded primary
  uint32_t timeline = 0;  // its timeline when recorded
};
Topology BuildTopology(std::vector<NodeStatus> nodes, uint64_t version, uint64_t epoch,
                       int previous_primary = -1, const RecordedPrimary* recorded = nullptr);

}  // namespace pgrelay::health
