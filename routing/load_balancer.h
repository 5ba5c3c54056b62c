// Picks one node among eligible candidates by policy (round robin, least connections, random),
// honouring per-node weights. One per worker; not thread-safe.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <string_view>
#include <vector>

#include "config/config.h"

namespace pgrelay::routing {

using LoadBalancePolicy = config::LoadBalance;

struct Candidate {
  int node = -1;           // index into the topology's nodes
  int weight = 1;          // > 0 (nodes with weight 0 are never candidates)
  uint32_t in_flight = 0;  // statements this worker has outstanding on the node
};

class LoadBalancer {
 public:
  explicit LoadBalancer(LoadBalancePolicy policy, uint64_t seed = std::random_device{}());

  // Returns the chosen candidate's node, or -1 if there is none.
  int Pick(std::span<const Candidate> candidates);

 private:
  LoadBalancePolicy policy_;
  std::mt19937_64 rng_;
  // Smooth weighted round robin (as nginx): per-node running score, indexed by node.
  std::vector<int64_t> current_;
};

}  // namespace pgrelay::routing
