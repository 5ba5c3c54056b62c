#include "routing/load_balancer.h"

namespace pgrelay::routing {

LoadBalancer::LoadBalancer(LoadBalancePolicy policy, uint64_t seed) : policy_(policy), rng_(seed) {}

int LoadBalancer::Pick(std::span<const Candidate> candidates) {
  if (candidates.empty()) return -1;
  if (candidates.size() == 1) return candidates[0].node;
  switch (policy_) {
    case LoadBalancePolicy::kRoundRobin: {
      // Smooth weighted round robin: every candidate gains its weight, the best is picked and
      // pays the total. Spreads picks evenly in proportion to the weights.
      int64_t total = 0;
      int best = -1;
      int64_t best_score = 0;
      for (const Candidate& c : candidates) {
        if (static_cast<size_t>(c.node) >= current_.size()) current_.resize(c.node + 1, 0);
        current_[c.node] += c.weight;
        total += c.weight;
        if (best < 0 || current_[c.node] > best_score) {
          best = c.node;
          best_score = current_[c.node];
        }
      }
      current_[best] -= total;
      return best;
    }
    case LoadBalancePolicy::kLeastConnections: {
      // Fewest in-flight statements relative to weight; ties broken at random.
      int best = -1;
      double best_load = 0;
      int ties = 0;
      for (const Candidate& c : candidates) {
        double load = static_cast<double>(c.in_flight) / c.weight;
        if (best < 0 || load < best_load) {
          best = c.node;
          best_load = load;
          ties = 1;
        } else if (load == best_load && std::uniform_int_distribution<int>(0, ties++)(rng_) == 0) {
          best = c.node;
        }
      }
      return best;
    }
    case LoadBalancePolicy::kRandom: {
      int64_t total = 0;
      for (const Candidate& c : candidates) total += c.weight;
      int64_t r = std::uniform_int_distribution<int64_t>(0, total - 1)(rng_);
      for (const Candidate& c : candidates) {
        if (r < c.weight) return c.node;
        r -= c.weight;
      }
      return candidates.back().node;
    }
  }
  return -1;
}

}  // namespace pgrelay::routing
